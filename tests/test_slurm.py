import re
import shlex
import subprocess
from pathlib import Path

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.slurm import (FLAGGED_OPTIONS, ArraySpec, SlurmOptions, max_array_size, plan_arrays, refuse_own_options,
                               render_sbatch, time_minutes)

GOLDEN = Path(__file__).parent / "golden" / "sbatch_array.sh"
ODD_FOLDER = "/runs/odd it's; \"quoted\" $HOME/logs"
SPEC = ArraySpec(
    folder=ODD_FOLDER, python="/usr/bin/python3",
    options=SlurmOptions(partition="gpu", account="proj", qos="high", time="04:00:00", gpus=1, cpus=8, mem="96G",
                         constraint="h100", extra=("--exclude=node7",), array_parallelism=4,
                         signal_delay_s=180, max_requeues=3),
    tasks=10, requeue=True,
)


def test_rendered_sbatch_script_matches_the_golden_file():
    assert render_sbatch(SPEC) == GOLDEN.read_text()


def test_odd_folder_names_survive_the_shell(tmp_path):
    script = render_sbatch(SPEC)
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    srun_line = next(line for line in script.splitlines() if line.startswith("srun "))
    words = shlex.split(srun_line)
    assert words[-1] == ODD_FOLDER
    assert words[words.index("--output") + 1] == f"{ODD_FOLDER}/%A_%a_%t_log.out"
    output_directive = next(line for line in script.splitlines() if line.startswith("#SBATCH --output="))
    assert shlex.split(output_directive.split("=", 1)[1]) == [f"{ODD_FOLDER}/%A_%a_0_log.out"]


def test_a_single_task_is_a_plain_job():
    script = render_sbatch(ArraySpec(folder="/r/logs", python="python3", options=SlurmOptions(), tasks=1))
    assert "--array" not in script and "%j_0_log.out" in script



def test_a_job_behind_a_dependency_is_cancelled_when_it_can_never_run_unless_the_user_says_otherwise():
    behind = ArraySpec(folder="/r/logs", python="python3", options=SlurmOptions(), tasks=2, dependency="afterok:41")
    script = render_sbatch(behind)
    assert "#SBATCH --dependency=afterok:41" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
    kept = ArraySpec(folder="/r/logs", python="python3", options=SlurmOptions(extra=("--kill-on-invalid-dep=no",)),
                     tasks=2, dependency="afterok:41")
    assert "#SBATCH --kill-on-invalid-dep=no" in render_sbatch(kept) and "=yes" not in render_sbatch(kept)
    assert "kill-on-invalid-dep" not in render_sbatch(SPEC)

@pytest.mark.parametrize("text,minutes", [("90", 90), ("04:00:00", 240), ("1-12:00:00", 2160), ("10:30", 11),
                                          ("2-0", 2880), ("0:0:59", 1)])
def test_slurm_time_formats(text, minutes):
    assert time_minutes(text) == minutes


def test_bad_time_is_refused():
    with pytest.raises(CapsfusError, match="--time"):
        time_minutes("four hours")


def test_arrays_never_exceed_max_array_size_and_lose_nothing():
    groups = [[i] for i in range(70)]
    arrays = plan_arrays(groups, 33)
    assert [len(a) for a in arrays] == [33, 33, 4]
    assert [g for a in arrays for g in a] == groups


def test_max_array_size_is_read_from_scontrol_output():
    assert max_array_size("AccountingStorageType   = x\nMaxArraySize            = 1001\nMaxJobCount = 10000\n") == 1001
    with pytest.raises(CapsfusError, match="MaxArraySize"):
        max_array_size("nothing here")


@pytest.mark.parametrize("argument, advice", [
    ("--array=0-9", "--array-parallelism"), ("--signal=USR1@5", "--signal-delay"),
    ("--output=/tmp/x.log", "status and the requeued tasks read the logs"), ("--partition=gpu", "give --partition"),
    ("--ntasks=2", "one worker a task"), ("--no-requeue", "requeue themselves"),
    ("--dependency=afterok:1", "reduce jobs wait on the fusion arrays")])
def test_an_sbatch_arg_that_would_replace_what_the_scripts_set_is_refused(argument, advice):
    with pytest.raises(CapsfusError, match=rf"--sbatch-arg '{re.escape(argument)}': the scripts set "
                                           rf"--{argument[2:].split('=')[0]} themselves; .*{re.escape(advice)}"):
        refuse_own_options([argument], set(FLAGGED_OPTIONS.values()))


def test_an_sbatch_arg_for_what_the_command_has_no_flag_for_is_taken():
    refuse_own_options(["--constraint=skylake", "--gpus-per-node=1"], {"--partition", "--cpus", "--mem"})  # reduce
    with pytest.raises(CapsfusError, match="give --mem"):
        refuse_own_options(["--mem=8G"], {"--partition", "--cpus", "--mem"})
    # One a run inherited from an earlier submission is rendered as it was given then.
    script = render_sbatch(ArraySpec(folder="/r/logs", python="python3", options=SlurmOptions(extra=("--nodes=1",)),
                                     tasks=3))
    assert "#SBATCH --nodes=1\n" in script
