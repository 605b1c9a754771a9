import os
import stat
import subprocess
import sys

import pytest

from capsfus_hpc.atomic import atomic_write_bytes
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.permissions import REFUSED_EXIT, check_folders, guard_command

from .conftest import make_run, with_urls, write_parquet
from .test_cli import assert_one_line_error, capsfus


@pytest.mark.parametrize("mode, refused", [(0o755, False), (0o775, True), (0o757, True), (0o700, False)])
def test_the_sbatch_guard_refuses_a_folder_others_can_write(tmp_path, mode, refused):
    folder = tmp_path / "run it's; $x" / "logs"
    folder.mkdir(parents=True)
    folder.chmod(mode)
    result = subprocess.run(["bash", "-c", guard_command(str(folder)) + "\necho started"], capture_output=True, text=True)
    if refused:
        assert result.returncode == REFUSED_EXIT and "started" not in result.stdout
        assert f"refusing to start: {folder} is writable by group or others" in result.stderr
    else:
        assert result.returncode == 0 and result.stdout == "started\n"


def test_the_guard_also_looks_at_the_folder_holding_the_job_folder(tmp_path):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    (tmp_path / "run").chmod(0o777)
    result = subprocess.run(["bash", "-c", guard_command(str(tmp_path / "run" / "logs"))], capture_output=True, text=True)
    assert result.returncode == REFUSED_EXIT and f"{tmp_path / 'run'} is writable" in result.stderr


def test_check_folders_names_the_folder_and_the_fix(tmp_path):
    tmp_path.chmod(0o770)
    with pytest.raises(CapsfusError, match=r"is writable by group or others \(mode 0o770\).*chmod go-w"):
        check_folders(tmp_path / "absent", tmp_path)


def test_nothing_a_run_creates_is_writable_by_others_even_under_a_lax_umask(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "in.parquet", with_urls(real_records[:6]))
    manifest, run = tmp_path / "m.json", tmp_path / "run"
    lax = {"preexec_fn": lambda: os.umask(0o002)}
    for args in (["manifest", "build", source, "-o", manifest],
                 ["submit", manifest, "-o", run, "--model", smoke_model, "--local", "--greedy", "--max-new-tokens", 4]):
        result = subprocess.run([sys.executable, "-m", "capsfus_hpc", *map(str, args)], capture_output=True, text=True, **lax)
        assert result.returncode == 0, result.stderr
    created = [run, *run.rglob("*")]
    assert len(created) > 5
    assert [p for p in created if p.stat().st_mode & 0o022] == []
    assert stat.S_IMODE(run.stat().st_mode) == 0o755


def test_finished_files_are_as_readable_as_the_umask_allows(tmp_path):
    # A final dataset is read by the rest of the group (not the 0o600 of a temporary file),
    # and written by nobody else, whatever the umask.
    for umask, mode in ((0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o644), (0, 0o644)):
        old = os.umask(umask)
        try:
            atomic_write_bytes(tmp_path / f"{umask:o}.json", b"{}")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"{umask:o}.json").stat().st_mode) == mode


def test_a_task_refuses_a_run_folder_others_can_write(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "in.parquet", with_urls(real_records[:4]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=4)
    paths.root.chmod(0o777)
    result = capsfus("work", paths.root, "--shard", 0, check=False)
    assert_one_line_error(result, "refusing to start", "is writable by group or others", "chmod go-w")
