"""The single-node SLURM cluster the SLURM layer is tested on: it must be up and run jobs."""

import re
import subprocess
import time


def run(*command):
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def test_cluster_runs_an_array_and_accounts_for_it(tmp_path):
    config = run("scontrol", "show", "config")
    assert re.search(r"MaxArraySize\s*=\s*33$", config, re.MULTILINE)
    job = run("sbatch", "--parsable", "--array=0-1", "--wait", f"--output={tmp_path}/%A_%a.out",  # not the caller's folder
              "--wrap", "true").strip().split(";")[0]
    deadline = time.time() + 30
    while time.time() < deadline:
        states = run("sacct", "-j", job, "-X", "-n", "--format=JobID,State", "-P").split()
        if len(states) == 2 and all(s.endswith("|COMPLETED") for s in states):
            return
        time.sleep(0.5)
    raise AssertionError(f"sacct did not report both array tasks COMPLETED: {states}")
