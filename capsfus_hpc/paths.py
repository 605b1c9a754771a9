"""RunPaths: the one place that names every file of a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run folder.

    DIR/run.json                               frozen settings (settings.py)
    DIR/shards/00012/part-00003.parquet        committed chunk 3 of shard 12 (worker.py)
    DIR/shards/00012/progress.json             commit record of shard 12 (progress.py)
    DIR/logs/<job id>_<task>_log.{out,err}      task logs written by submitit (launch.py, slurm.py)
    DIR/jobs.jsonl                             ledger of SLURM submissions (ledger.py)
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def run_config(self) -> Path:
        return self.root / "run.json"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard_dir(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}"

    def part(self, shard: int, chunk: int) -> Path:
        return self.shard_dir(shard) / f"part-{chunk:05d}.parquet"

    def progress(self, shard: int) -> Path:
        return self.shard_dir(shard) / "progress.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def task_stderr(self, job_id: str) -> Path:
        """stderr of a task (job id "123" or array task "123_4"), as submitit names it."""
        return self.logs / f"{job_id}_0_log.err"

    @property
    def ledger(self) -> Path:
        return self.root / "jobs.jsonl"
