"""What the scheduler view says of reduce jobs when SLURM's controller does not answer."""

import re
import socket
import subprocess
import time

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.ledger import REDUCE, Submission
from capsfus_hpc.reduce_lock import refuse_active_reduce
from capsfus_hpc.scheduler import UNANSWERED, query


def run(*command):
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_reduce_jobs_slurm_cannot_vouch_for_stay_active_when_squeue_fails(tmp_path, monkeypatch):
    done = run("sbatch", "--parsable", "--wait", f"--output={tmp_path}/%j.out", "--wrap", "true").strip().split(";")[0]
    deadline = time.time() + 30
    while "COMPLETED" not in run("sacct", "-j", done, "-X", "-n", "-P", "--format=State") and time.time() < deadline:
        time.sleep(0.5)
    # The same cluster with its controller unreachable: squeue fails for real, slurmdbd still answers sacct.
    conf = re.search(r"^SLURM_CONF\s*=\s*(\S+)", run("scontrol", "show", "config"), re.MULTILINE).group(1)
    text = re.sub(r"^SlurmctldPort=.*$", "", open(conf).read(), flags=re.MULTILINE)
    (tmp_path / "slurm.conf").write_text(text + f"\nSlurmctldPort={_closed_port()}\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    final = str(tmp_path / "final")
    entries = [Submission(done, REDUCE, ((done, ()),), 1.0, final=final),
               Submission("999999", REDUCE, (("999999_0", ()), ("999999_1", ())), 2.0, final=final, stage="keys")]
    view = query(entries)
    assert view.note.startswith("squeue failed (") and "states come from the run folder only" in view.note
    assert [job.states for job in view.reduce_jobs] == [{"COMPLETED": 1}, {UNANSWERED: 2}]
    with pytest.raises(CapsfusError, match=r"\(or SLURM did not answer whether it is\): keys job 999999 "
                                           r"\(SQUEUE_FAILED\); wait for it, or scancel 999999$"):
        refuse_active_reduce(tmp_path / "final", view.reduce_jobs)
