"""The jobs ledger: every SLURM submission of a run, appended to DIR/jobs.jsonl.

One JSON line per submitted job: its tasks (job id of each task and the shards it runs) and the
SLURM options it went with, which a later `resume` starts from.
Lines are appended with O_APPEND and fsynced; a reader skips a torn line, and the next append
starts on a new line, so a torn line costs only its own entry.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

FUSE = "fuse"
REDUCE = "reduce"
REDUCE_STAGES = ("keys", "dedup", "assemble")  # of reduce --slurm, appended in this order


def job_of(task_id: str) -> str:
    """The job a SLURM task id belongs to: "123_4" (an array task) -> "123"; "123" -> "123"."""
    return task_id.split("_")[0]


@dataclass(frozen=True)
class Submission:
    job_id: str
    kind: str  # FUSE or REDUCE
    tasks: tuple[tuple[str, tuple[int, ...]], ...]  # (task job id, shard ids)
    submitted_at: float
    slurm: dict | None = None  # slurm.SlurmOptions as a dict
    final: str | None = None  # REDUCE: the folder the dataset goes to
    stage: str | None = None  # REDUCE: keys, dedup or assemble (reduce --slurm); None for a whole reduce

    def as_dict(self) -> dict:
        reduce = {name: value for name, value in (("final", self.final), ("stage", self.stage)) if value}
        return {"job_id": self.job_id, "kind": self.kind, "submitted_at": self.submitted_at,
                "tasks": [[task, list(shards)] for task, shards in self.tasks], "slurm": self.slurm, **reduce}

    @classmethod
    def from_dict(cls, data: dict) -> "Submission":
        return cls(data["job_id"], data["kind"], tuple((t, tuple(s)) for t, s in data["tasks"]), data["submitted_at"],
                   data.get("slurm"), data.get("final"), data.get("stage"))


def append(path: Path, job_id: str, kind: str, tasks: list[tuple[str, list[int]]], slurm: dict | None = None,
           final: str | None = None, stage: str | None = None) -> Submission:
    entry = Submission(job_id, kind, tuple((t, tuple(s)) for t, s in tasks), time.time(), slurm, final, stage)
    line = (json.dumps(entry.as_dict(), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # after a torn line: end it, so this entry is a line of its own
        while line:
            line = line[os.write(fd, line):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read(path: Path) -> list[Submission]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(Submission.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line of an interrupted append
    return entries


def latest_fuse_options(entries: list[Submission]) -> dict | None:
    """The SLURM options of the run's latest fusion job, None before the first."""
    return next((e.slurm for e in reversed(entries) if e.kind == FUSE and e.slurm is not None), None)


def latest_task_of_shard(entries: list[Submission]) -> dict[int, str]:
    """The task job id that most recently was given each shard."""
    latest: dict[int, str] = {}
    for entry in entries:
        if entry.kind == FUSE:
            for task, shards in entry.tasks:
                for shard in shards:
                    latest[shard] = task
    return latest
