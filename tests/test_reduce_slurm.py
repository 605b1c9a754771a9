import os
import shutil

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.paths import ReducePaths
from capsfus_hpc.reduce_slurm import ReduceJob, wait_for_reduce


def _squeue_that_fails(tmp_path, failures: int, then: str):
    """An squeue that times out `failures` times (a busy controller), then runs `then`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "squeue"
    script.write_text(f"""#!/bin/bash
count=$(cat {tmp_path}/calls 2>/dev/null || echo 0); echo $((count + 1)) > {tmp_path}/calls
if [ "$count" -lt {failures} ]; then echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1; fi
{then}
""")
    script.chmod(0o755)
    return folder


def test_waiting_for_a_reduce_outlasts_a_controller_that_does_not_answer_for_a_while(tmp_path, monkeypatch):
    final = ReducePaths(tmp_path / "final")
    final.root.mkdir()
    published = f"echo '{{\"rows_out\": 7}}' > {final.stats}; exec {shutil.which('squeue')} \"$@\""
    monkeypatch.setenv("PATH", f"{_squeue_that_fails(tmp_path, 2, published)}{os.pathsep}{os.environ['PATH']}")
    assert wait_for_reduce(final.root, [ReduceJob("assemble", "987654321", 1)], poll_s=0.1) == {"rows_out": 7}
    assert (tmp_path / "calls").read_text().strip() == "3"


def test_a_controller_that_never_answers_ends_the_wait_naming_it(tmp_path, monkeypatch):
    final = ReducePaths(tmp_path / "final")
    final.root.mkdir()
    monkeypatch.setenv("PATH", f"{_squeue_that_fails(tmp_path, 1000, 'exit 1')}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(CapsfusError, match=r"'squeue -h -r -o %i\|%T\|%r' failed: slurm_load_jobs error: Socket timed "
                                           r"out .* \(for 1 s, asked every 0.1 s\); the reduce jobs may still run"):
        wait_for_reduce(final.root, [ReduceJob("assemble", "987654321", 1)], poll_s=0.1, patience_s=1)


def test_a_cluster_without_accounting_ends_the_wait_once_the_jobs_left_the_queue(tmp_path, monkeypatch):
    final = ReducePaths(tmp_path / "final")
    final.root.mkdir()
    folder = _squeue_that_fails(tmp_path, 0, "exit 0")  # answers, with nothing queued
    (folder / "sacct").write_text("#!/bin/bash\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (folder / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(CapsfusError, match=r"'sacct .*' failed: sacct: error: Slurm accounting storage is disabled "
                                           r"\(for 1 s, asked every 0.1 s\)"):
        wait_for_reduce(final.root, [ReduceJob("assemble", "987654321", 1)], poll_s=0.1, patience_s=1)
