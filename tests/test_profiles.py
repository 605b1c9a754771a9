import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.profiles import load_profile, profile_names
from capsfus_hpc.settings import DEFAULT_WINDOW_ROWS
from capsfus_hpc.slurm import time_minutes

from .conftest import REPO


def test_the_four_gpu_profiles_load_with_sensible_settings():
    assert profile_names() == ["A100-40G", "A100-80G", "A800-80G", "H100-80G"]
    for name in profile_names():
        profile = load_profile(name)
        assert profile.slurm["gpus"] == 1 and time_minutes(profile.slurm["time"]) >= 60
        assert profile.generation["dtype"] == "bf16" and profile.generation["batch_size"] >= 8
        assert profile.generation.get("window_rows", DEFAULT_WINDOW_ROWS) >= profile.generation["batch_size"]
    assert load_profile("A100-40G").generation["batch_size"] < load_profile("A100-80G").generation["batch_size"]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(CapsfusError, match="H100-80G"):
        load_profile("TPU-v5")


def test_a_profile_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[slurm]\ngpus = 2\nnodes = 4\n')
    with pytest.raises(CapsfusError, match="unknown keys slurm.nodes "):
        load_profile(str(path))


@pytest.mark.parametrize("text, named", [('gpus = 2\n[slurm]\ncpus = 4\n', "unknown keys gpus "),
                                         ('[generaton]\nbatch_size = 8\n', "unknown keys generaton "),
                                         ('slurm = 2\n', "'slurm' must be a [slurm] table")])
def test_a_key_outside_the_known_sections_is_refused_not_dropped(tmp_path, text, named):
    """A misspelt section or a key above the first one would give a task other resources without a word."""
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(CapsfusError, match=re.escape(named)) as raised:
        load_profile(str(path))
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("text, named", [
    ('[slurm]\ntime = 240\n', '[slurm] time = 240: must be text, in quotes (e.g. time = "04:00:00")'),
    ('[slurm]\ngpus = "1"\n', "[slurm] gpus = '1': must be a whole number"),
    ('[slurm]\ncpus = 0\n', "[slurm] cpus = 0: must be at least 1"),
    ('[generation]\nbatch_size = 1.5\n', "[generation] batch_size = 1.5: must be a whole number"),
    ('[slurm]\nmem = 64\n', "[slurm] mem = 64: must be text, in quotes")])
def test_a_profile_value_of_the_wrong_kind_is_refused_naming_the_file(tmp_path, text, named):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(CapsfusError, match=re.escape(f"{path}: {named}")):
        load_profile(str(path))


def test_an_installed_wheel_carries_the_profiles_and_the_prompt(tmp_path):
    """Users pip-install on a login node: the profiles must not depend on a checkout beside the code."""
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "capsfus_hpc", source / "capsfus_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("capsfus_hpc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    probe = ("import json, pathlib; from capsfus_hpc import profiles, prompt; "
             "print(json.dumps([str(pathlib.Path(profiles.__file__).parent), profiles.profile_names(), "
             "profiles.load_profile('H100-80G').slurm['gpus'], prompt.template()]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("CAPSFUS_PROFILE_DIR", None)
    shown = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    where, names, gpus, template = json.loads(shown.stdout)
    assert where == str(tmp_path / "site" / "capsfus_hpc")
    assert names == profile_names() and gpus == 1
    assert template == (REPO / "capsfus_hpc" / "capsfusion_prompt.txt").read_text(encoding="utf-8")
