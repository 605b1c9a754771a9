"""SLURM submission through submitit: job arrays of shard groups, and the exact sbatch script.

The script comes from one pure function of a frozen ArraySpec (`render_sbatch`), built on
submitit's own renderer with the same parameters the executor is given, so a dry-run prints
what sbatch receives; an integration test compares it with the script submitit wrote.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from .errors import CapsfusError
from .permissions import guard_command

JOB_NAME = "capsfus"
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default, for a dry run away from any cluster
# The worker reads these from the environment the sbatch script sets up (preemption.py).
SIGNAL_DELAY_ENV = "CAPSFUS_SIGNAL_DELAY_S"
MAX_REQUEUES_ENV = "CAPSFUS_MAX_REQUEUES"


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    gpus: int | None = None
    cpus: int | None = None
    mem: str | None = None
    constraint: str | None = None
    extra: tuple[str, ...] = ()  # more sbatch arguments, "--name=value" or "--flag"
    array_parallelism: int | None = None
    signal_delay_s: int = 120  # warning before the time limit (USR2)
    max_requeues: int = 5  # time-limit requeues before a task is reported failed


@dataclass(frozen=True)
class ArraySpec:
    """Everything that decides one sbatch script."""

    folder: str  # submitit's folder: logs and pickles
    python: str
    options: SlurmOptions
    tasks: int  # 1 submits a plain job, more an array
    dependency: str | None = None
    requeue: bool = False  # fusion arrays: SLURM requeues a preempted task or one whose node failed,
    #                        whatever the cluster's JobRequeue, and scontrol requeue works at the time limit


def time_minutes(value: str) -> int:
    """SLURM time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) as whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not match:
        raise CapsfusError(f"--time {value!r} is not a SLURM time (e.g. 240, 04:00:00 or 1-12:00:00)")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is not None:
        hours, minutes, seconds = first, second, third
    elif second is not None:
        hours, minutes, seconds = 0, first, second
    else:
        hours, minutes, seconds = 0, first, 0
    total = (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise CapsfusError(f"--time {value!r} is shorter than a minute")
    return total


# sbatch options the scripts always set themselves: an --sbatch-arg would replace them silently.
STRUCTURAL_OPTIONS = {
    "array": "give --array-parallelism for the throttle", "signal": "give --signal-delay",
    **dict.fromkeys(("output", "error", "open-mode"), "status and the requeued tasks read the logs where they are"),
    **dict.fromkeys(("nodes", "ntasks", "ntasks-per-node"), "one worker a task: two would share its shards"),
    "no-requeue": "tasks requeue themselves at the time-limit warning, and SLURM requeues preempted ones",
    "dependency": "reduce jobs wait on the fusion arrays with it",
    "job-name": "the jobs are named capsfus",
}
# sbatch options a command's own flag sets: refused where that command has the flag.
FLAGGED_OPTIONS = {"partition": "--partition", "account": "--account", "qos": "--qos", "time": "--time",
                   "gpus-per-node": "--gpus", "cpus-per-task": "--cpus", "mem": "--mem", "constraint": "--constraint"}


def refuse_own_options(extra: tuple[str, ...] | list[str], flags: set[str]) -> None:
    """Refuse --sbatch-arg values (as given to a command with these flags) that would replace
    what the scripts set; ones a run inherited from an earlier submission pass through."""
    for argument in extra:
        name = argument[2:].partition("=")[0] if argument.startswith("--") else None
        if name in STRUCTURAL_OPTIONS:
            raise CapsfusError(f"--sbatch-arg {argument!r}: the scripts set --{name} themselves; "
                               f"{STRUCTURAL_OPTIONS[name]}")
        if name in FLAGGED_OPTIONS and FLAGGED_OPTIONS[name] in flags:
            raise CapsfusError(f"--sbatch-arg {argument!r}: the scripts set --{name} themselves; "
                               f"give {FLAGGED_OPTIONS[name]}")


def extra_parameters(extra: tuple[str, ...]) -> dict:
    parameters = {}
    for argument in extra:
        if not argument.startswith("--"):
            raise CapsfusError(f"--sbatch-arg {argument!r} must look like --name=value or --flag")
        name, sep, value = argument[2:].partition("=")
        parameters[name] = value if sep else True
    return parameters


def slurm_parameters(spec: ArraySpec) -> dict:
    """submitit SlurmExecutor parameters for the spec."""
    options = spec.options
    parameters = {
        "job_name": JOB_NAME,
        "time": time_minutes(options.time),
        "partition": options.partition,
        "account": options.account,
        "qos": options.qos,
        "gpus_per_node": options.gpus,
        "cpus_per_task": options.cpus,
        "mem": options.mem,
        "constraint": options.constraint,
        "signal_delay_s": options.signal_delay_s,
        "dependency": spec.dependency,
        "setup": [guard_command(spec.folder), f"export {SIGNAL_DELAY_ENV}={options.signal_delay_s}",
                  f"export {MAX_REQUEUES_ENV}={options.max_requeues}"],
        "additional_parameters": extra_parameters(options.extra) or None,
    }
    if spec.requeue:
        parameters["additional_parameters"] = {"requeue": True, **(parameters["additional_parameters"] or {})}
    if spec.dependency:
        # A job behind a failed afterok (a reduce --slurm stage) would pend forever; SLURM cancels it instead.
        parameters["additional_parameters"] = {"kill-on-invalid-dep": "yes", **(parameters["additional_parameters"] or {})}
    if options.array_parallelism:
        parameters["array_parallelism"] = options.array_parallelism
    return {k: v for k, v in parameters.items() if v is not None}


def render_sbatch(spec: ArraySpec) -> str:
    """The exact sbatch script submitit submits for this spec."""
    command = " ".join([spec.python, "-u -m submitit.core._submit", shlex.quote(spec.folder)])
    map_count = spec.tasks if spec.tasks > 1 else None
    return _make_sbatch_string(command=command, folder=spec.folder, map_count=map_count, **slurm_parameters(spec))


def max_array_size(config_text: str | None = None) -> int:
    """How many tasks one array may hold: SLURM's MaxArraySize (indices 0..MaxArraySize-1)."""
    if config_text is None:
        config_text = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", config_text, re.MULTILINE)
    if not match:
        raise CapsfusError("'scontrol show config' shows no MaxArraySize")
    return int(match.group(1))


def plan_arrays(groups: list[list[int]], max_tasks: int) -> list[list[list[int]]]:
    """Shard groups cut into arrays of at most max_tasks tasks each, in order."""
    return [groups[i : i + max_tasks] for i in range(0, len(groups), max_tasks)]


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise CapsfusError(f"'{command[0]}' is not on PATH: is this a SLURM login node?") from exc
    except subprocess.TimeoutExpired as exc:
        raise CapsfusError(f"'{' '.join(command)}' did not answer within 60 s") from exc
    if result.returncode != 0:
        raise CapsfusError(f"'{' '.join(command)}' failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def sbatch_test_only(script: str) -> tuple[bool, str]:
    """sbatch --test-only on the script: whether SLURM accepts it, and when and where it would
    start it, or its objection."""
    result = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return result.returncode == 0, "; ".join(lines)  # one line: it goes into an error line and a script comment


def slurm_reachable() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def submit_array(spec: ArraySpec, function, arguments: list[tuple]) -> list[str]:
    """Submit `function(*arguments[i])` as task i of one job; returns each task's job id."""
    if len(arguments) != spec.tasks:
        raise ValueError("one argument tuple per task")
    executor = submitit.AutoExecutor(folder=spec.folder, cluster="slurm", slurm_python=spec.python)
    executor.update_parameters(**{f"slurm_{k}": v for k, v in slurm_parameters(spec).items()})
    try:
        jobs = executor.map_array(function, *zip(*arguments))
    except submitit.core.utils.FailedJobError as exc:  # sbatch refused: its own words say why
        raise CapsfusError(f"sbatch refused the job: {str(exc).strip().splitlines()[-1]}") from None
    return [str(job.job_id) for job in jobs]


def spec_for(folder: Path, options: SlurmOptions, tasks: int, dependency: str | None = None,
             requeue: bool = False) -> ArraySpec:
    return ArraySpec(folder=str(folder), python=shlex.quote(sys.executable), options=options, tasks=tasks,
                     dependency=dependency, requeue=requeue)
