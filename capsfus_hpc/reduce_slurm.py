"""`reduce --slurm`: the reduce's three stages as SLURM jobs, each stage an array after the last.

The tasks are the ones a local reduce runs (reduce_keys.keys_task, reduce_dedup.dedup_task,
reduce_assemble.assemble_task) with the same plan in FINAL/.reduce/plan.json, so the output is
byte for byte the local reduce's. Stages depend on each other with afterok: a failed task
stops the later stages, and `wait_for_reduce` names the job and its log.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import ledger
from .errors import CapsfusError
from .paths import ReducePaths, RunPaths
from .reduce import prepare_reduce
from .reduce_assemble import assemble_task
from .reduce_dedup import dedup_task
from .reduce_keys import keys_task
from .reduce_lock import hold_final
from .reduce_plan import ReduceOptions, ReducePlan
from .reduce_publish import published_at
from .scheduler import NEVER_STARTS, behind_never_starts, parse_sacct, parse_squeue
from .slurm import SlurmOptions, _run, max_array_size, spec_for, submit_array

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReduceJob:
    stage: str  # keys, dedup, assemble
    job_id: str
    tasks: int


def submit_reduce(paths: RunPaths, final: Path, options: ReduceOptions, slurm: SlurmOptions,
                  tasks: int) -> list[ReduceJob]:
    """Plan the reduce for about `tasks` tasks per stage and submit its stages; returns the jobs."""
    with hold_final(Path(final).absolute()):  # until the jobs are in the ledger, for the next reduce to see
        return _submit_stages(paths, prepare_reduce(paths, final, options, tasks), slurm)


def _submit_stages(paths: RunPaths, plan: ReducePlan, slurm: SlurmOptions) -> list[ReduceJob]:
    limit = max_array_size()
    dedup_tasks = [(plan.final, kind, p) for kind in plan.kinds for p in range(plan.partitions)]
    if max(len(plan.key_tasks), len(dedup_tasks)) > limit:
        raise CapsfusError(f"the reduce needs {max(len(plan.key_tasks), len(dedup_tasks))} tasks in a stage, "
                           f"over this cluster's MaxArraySize {limit}; ask for fewer with --workers")
    logs = plan.final_paths.logs
    logs.mkdir(parents=True, exist_ok=True, mode=0o755)
    slurm = replace(slurm, gpus=None)  # the reduce needs no GPU
    stages = zip(ledger.REDUCE_STAGES, (keys_task, dedup_task, assemble_task),
                 ([(plan.final, t) for t in range(len(plan.key_tasks))], dedup_tasks, [(plan.final,)]))
    jobs: list[ReduceJob] = []
    for stage, function, arguments in stages:
        dependency = f"afterok:{jobs[-1].job_id}" if jobs else None
        task_ids = submit_array(spec_for(logs, slurm, len(arguments), dependency), function, arguments)
        jobs.append(ReduceJob(stage, ledger.job_of(task_ids[0]), len(arguments)))
        ledger.append(paths.ledger, jobs[-1].job_id, ledger.REDUCE, [(t, []) for t in task_ids],
                      final=str(plan.final), stage=stage)
    return jobs


def _published(out: ReducePaths) -> dict | None:
    """This reduce's stats once it has published its dataset. An earlier dataset's stats.json does
    not count: assemble removes the plan this reduce wrote only after publishing."""
    return json.loads(out.stats.read_text()) if published_at(out) is not None else None


class _Patient:
    """Runs one SLURM query; its failure is forgiven (None, after a pause) until its failures have
    lasted `patience_s`, when the last one is raised. One per command: another's answer says
    nothing of this one (squeue answers where accounting is off and sacct never will)."""

    def __init__(self, poll_s: float, patience_s: float):
        self.poll_s, self.patience_s = poll_s, patience_s
        self.failing_since: float | None = None

    def __call__(self, command: list[str]) -> str | None:
        try:
            answer = _run(command)
        except CapsfusError as exc:
            self.failing_since = self.failing_since or time.monotonic()
            if time.monotonic() - self.failing_since >= self.patience_s:
                raise CapsfusError(f"{exc} (for {self.patience_s:.0f} s, asked every {self.poll_s:g} s); the reduce "
                                   "jobs may still run: 'capsfus-hpc status RUN' shows them") from exc
            log.warning("%s; asking again", exc)
            time.sleep(self.poll_s)
            return None
        self.failing_since = None
        return answer


def wait_for_reduce(final: Path, jobs: list[ReduceJob], poll_s: float = 2.0, patience_s: float = 600.0) -> dict:
    """Block until the dataset is published (returns the stats) or a stage's job ends without it.
    A busy controller that does not answer squeue or sacct is asked again for up to patience_s."""
    out = ReducePaths(final)
    ids = [job.job_id for job in jobs]
    # Asked only once the jobs left the queue, where accounting that is off never answers: briefly.
    squeue_patiently, sacct_patiently = _Patient(poll_s, patience_s), _Patient(poll_s, min(patience_s, 30.0))
    while True:
        if (stats := _published(out)) is not None:
            return stats
        if (squeue := squeue_patiently(["squeue", "-h", "-r", "-o", "%i|%T|%r"])) is None:
            continue
        queued = behind_never_starts(ids, parse_squeue(squeue))
        # A stage behind a failed one waits forever (NEVER_STARTS): it counts as ended.
        active = [task for task, state in queued.items() if ledger.job_of(task) in ids and state != NEVER_STARTS]
        if not active:
            if (stats := _published(out)) is not None:
                return stats
            if (sacct := sacct_patiently(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "--format=JobID,State"])) is None:
                continue
            states = parse_sacct(sacct)
            failed = {task: state for task, state in states.items() if state != "COMPLETED"}
            stage = {job.job_id: job.stage for job in jobs}
            described = ", ".join(f"{stage.get(ledger.job_of(t), '?')} task {t}: {s}" for t, s in sorted(failed.items()))
            raise CapsfusError(f"the reduce jobs ended without publishing a dataset into {out.root}: "
                               f"{described or 'no state recorded'}; logs in {out.logs}")
        time.sleep(poll_s)
