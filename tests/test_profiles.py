import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.profiles import load_profile, profile_names
from capsfus_hpc.settings import DEFAULT_WINDOW_ROWS
from capsfus_hpc.slurm import time_minutes


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
    with pytest.raises(CapsfusError, match="unknown keys nodes"):
        load_profile(str(path))
