"""What SLURM says of a run's tasks: squeue for live tasks, sacct for ended ones.

The parsers are pure; `query` is the I/O edge. Without accounting (sacct failing) the run
still has squeue and its own folder, and `SchedulerView.note` says what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime

from .ledger import REDUCE, REDUCE_STAGES, Submission, job_of, latest_task_of_shard

PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
                  "SUSPENDED", "STOPPED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
# Ended states a shard can be failed by; COMPLETED tells nothing about a shard by itself.
FAILURE_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED", "NODE_FAIL", "CANCELLED", "BOOT_FAIL",
                  "DEADLINE"}
GONE = "GONE"  # a local task whose process is no longer there
# Submitted, but in neither squeue nor sacct: SLURM 22.05 keeps no record of a pending array
# task cancelled on its own.
MISSING = "MISSING"
# Pending behind a job that failed its afterok dependency: it will never start (reduce --slurm stages).
NEVER_STARTS = "DEPENDENCY_NEVER_SATISFIED"
# squeue is there but did not answer: a reduce job may still be queued or running.
UNANSWERED = "SQUEUE_FAILED"


@dataclass(frozen=True)
class TaskState:
    job_id: str
    state: str  # a SLURM state, GONE or MISSING
    queued: bool = False  # squeue lists it now: SLURM still has it


@dataclass(frozen=True)
class ReduceJobState:
    """A reduce job of the run (`submit --then-reduce`, or a stage of `reduce --slurm`)."""
    job_id: str
    final: str | None
    stage: str | None  # keys, dedup, assemble; None for a whole reduce
    states: dict[str, int]  # SLURM state -> tasks in it; empty where SLURM no longer says
    submitted_at: float = 0.0
    ended_at: float | None = None  # when its last task ended, as sacct says; None before or where it does not

    @property
    def active(self) -> bool:
        return any(state in PENDING_STATES | RUNNING_STATES for state in self.states)

    @property
    def failed(self) -> bool:
        return any(state in FAILURE_STATES | {MISSING, NEVER_STARTS} for state in self.states)


@dataclass(frozen=True)
class SchedulerView:
    tasks: dict[int, TaskState] = field(default_factory=dict)  # by shard id
    note: str | None = None  # what the view lacks, for the user
    reduce_jobs: tuple[ReduceJobState, ...] = ()


def parse_squeue(text: str) -> dict[str, str]:
    """`squeue -h -r -o %i|%T|%r` lines -> {task job id: state}; a task pending on a dependency
    that can no longer be met is NEVER_STARTS."""
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state, *reason = line.strip().split("|", 2)
            never = state.strip() == "PENDING" and reason and "DependencyNeverSatisfied" in reason[0]
            states[job_id] = NEVER_STARTS if never else state.strip()
    return states


def _expand(job_id: str) -> list[str]:
    """sacct writes never-started array tasks as one record, e.g. 19_[2-3%2] or 19_[1,4-5]."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    base, ranges = match.groups()
    ids = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P --format=JobID,State` lines -> {task job id: state}; an own record wins."""
    states: dict[str, str] = {}
    grouped: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job_id, state = line.strip().split("|")[:2]
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        expanded = _expand(job_id)
        target = grouped if len(expanded) > 1 or expanded[0] != job_id else states
        for task in expanded:
            target[task] = state
    return {**grouped, **states}


def parse_sacct_ends(text: str) -> dict[str, float]:
    """`sacct -X -n -P --format=JobID,State,End` lines -> {task job id: unix time it ended}, for
    the tasks of their own record that ended (End is "Unknown" while one runs, "None" for one
    that never started)."""
    ends = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 3:
            try:
                ends[fields[0]] = datetime.strptime(fields[2], "%Y-%m-%dT%H:%M:%S").timestamp()
            except ValueError:
                continue
    return ends


def _task_state(task: str, squeue: dict[str, str], sacct: dict[str, str] | None, unknown: str = MISSING) -> str | None:
    """squeue (live) over sacct (ended); with accounting, a task known to neither is `unknown`."""
    return squeue.get(task) or (sacct or {}).get(task) or (unknown if sacct is not None else None)


def shard_tasks(entries: list[Submission], squeue: dict[str, str], sacct: dict[str, str] | None) -> dict[int, TaskState]:
    """Each shard's latest task and its state: squeue (live) over sacct (ended).

    With accounting (sacct not None) a task known to neither is MISSING."""
    tasks = {}
    for shard, task in latest_task_of_shard(entries).items():
        if state := _task_state(task, squeue, sacct):
            tasks[shard] = TaskState(task, state, task in squeue)
    return tasks


def behind_never_starts(chain: list[str], squeue: dict[str, str]) -> dict[str, str]:
    """squeue's states with the pending tasks of every job after one that never starts in a chain
    of afterok jobs (in order) marked NEVER_STARTS too: squeue's reason for them is a plain
    Dependency (the queue keeps them where --kill-on-invalid-dep=no)."""
    states = dict(squeue)
    blocked = False
    for job_id in chain:
        tasks = [task for task in states if job_of(task) == job_id]
        if blocked:
            states.update({task: NEVER_STARTS for task in tasks if states[task] in PENDING_STATES})
        blocked = blocked or any(states[task] == NEVER_STARTS for task in tasks)
    return states


def reduce_jobs(entries: list[Submission], squeue: dict[str, str], sacct: dict[str, str] | None,
                unknown: str = MISSING, ends: dict[str, float] | None = None) -> tuple[ReduceJobState, ...]:
    """Each reduce job of the ledger with how many of its tasks are in each state: squeue over
    sacct, `unknown` with accounting where neither knows a task (UNANSWERED where squeue failed);
    and when its last task ended, from sacct's `ends`."""
    chains: dict[str | None, list[str]] = {}  # final folder -> the stages of its latest reduce --slurm
    for entry in entries:
        if entry.kind == REDUCE and entry.stage:
            if entry.stage == REDUCE_STAGES[0]:
                chains[entry.final] = []
            chains.setdefault(entry.final, []).append(entry.job_id)
    for chain in chains.values():
        squeue = behind_never_starts(chain, squeue)
    jobs = []
    for entry in entries:
        if entry.kind != REDUCE:
            continue
        states: dict[str, int] = {}
        for task, _ in entry.tasks:
            if state := _task_state(task, squeue, sacct, unknown):
                states[state] = states.get(state, 0) + 1
        ended = [(ends or {})[task] for task, _ in entry.tasks if task in (ends or {})]
        jobs.append(ReduceJobState(entry.job_id, entry.final, entry.stage, states, entry.submitted_at,
                                   max(ended) if ended else None))
    return tuple(jobs)


def _sacct(entries: list[Submission]) -> tuple[bool, str]:
    job_ids = ",".join(entry.job_id for entry in entries)
    return _run(["sacct", "-X", "-n", "-P", "-j", job_ids, "--format=JobID,State,End"])


def _run(command: list[str]) -> tuple[bool, str]:
    try:  # (times as parse_sacct_ends reads them, whatever format the user's environment asks for)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "SLURM_TIME_FORMAT": "standard"})
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stderr.strip()


def query(entries: list[Submission]) -> SchedulerView:
    """Ask squeue and sacct about the ledger's jobs."""
    if not entries:
        return SchedulerView()
    ok, squeue_text = _run(["squeue", "-h", "-r", "--me", "-o", "%i|%T|%r"])
    if not ok:
        note = f"squeue failed ({squeue_text}); states come from the run folder only"
        reduces = [entry for entry in entries if entry.kind == REDUCE]
        if not reduces or not shutil.which("squeue"):  # no SLURM here: none of its jobs can be running
            return SchedulerView(note=note)
        ok, sacct_text = _sacct(reduces)  # slurmdbd may answer while slurmctld does not
        sacct, ends = (parse_sacct(sacct_text), parse_sacct_ends(sacct_text)) if ok else ({}, {})
        return SchedulerView(note=note, reduce_jobs=reduce_jobs(reduces, {}, sacct, UNANSWERED, ends))
    ok, sacct_text = _sacct(entries)
    note = None if ok else (f"no accounting (sacct: {sacct_text}); ended tasks show no SLURM state, "
                            "only what the run folder records")
    squeue, sacct = parse_squeue(squeue_text), parse_sacct(sacct_text) if ok else None
    ends = parse_sacct_ends(sacct_text) if ok else {}
    return SchedulerView(shard_tasks(entries, squeue, sacct), note, reduce_jobs(entries, squeue, sacct, ends=ends))
