"""RunPaths and ReducePaths: the one place that names every file of a run folder and of a final folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run folder.

    DIR/run.json                               frozen settings (settings.py)
    DIR/shards/00012/part-00003.parquet        committed chunk 3 of shard 12 (worker.py)
    DIR/shards/00012/progress.json             commit record of shard 12 (progress.py)
    DIR/shards/00012/lease.json                who may write shard 12 now (lease.py)
    DIR/logs/<job id>_<task>_log.{out,err}      task logs written by submitit (launch.py, slurm.py)
    DIR/jobs.jsonl                             ledger of SLURM submissions (ledger.py)
    DIR/local/<host>-<pid>.json                shards a running submit --local has yet to start (local_queue.py)
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

    def lease(self, shard: int) -> Path:
        return self.shard_dir(shard) / "lease.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def local_queues(self) -> Path:
        return self.root / "local"

    def local_queue(self, host: str, pid: int) -> Path:
        return self.local_queues / f"{host}-{pid}.json"

    def task_stderr(self, job_id: str) -> Path:
        """stderr of a task (job id "123" or array task "123_4"), as submitit names it."""
        return self.logs / f"{job_id}_0_log.err"

    @property
    def ledger(self) -> Path:
        return self.root / "jobs.jsonl"


@dataclass(frozen=True)
class DatasetPaths:
    """The files of a dataset, in FINAL or staged in FINAL/.reduce/dataset/ (see ReducePaths)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    def data_file(self, index: int) -> Path:
        return self.root / f"data-{index:05d}.parquet"

    def data_files(self) -> list[Path]:
        """The data files in the folder now."""
        return sorted(self.root.glob("data-*.parquet"))

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def duplicates(self) -> Path:
        return self.root / "duplicates.parquet"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"


@dataclass(frozen=True)
class ReducePaths(DatasetPaths):
    """Layout of a final dataset folder and of the reducer's scratch space inside it.

    FINAL/data-00000.parquet                   accepted rows (dataset_writer.py)
    FINAL/rejects.parquet, duplicates.parquet  rejected rows; dropped duplicates and their winners
    FINAL/README.md, FINAL/stats.json          dataset card; counts, written last
    FINAL/.reduce/lock                         held by the one reduce writing FINAL (reduce_lock.py)
    FINAL/.reduce/plan.json                    what each reduce task does (reduce_plan.py)
    FINAL/.reduce/map-00003/key-00007.arrow    key task 3's spilled keys of partition 7 (reduce_keys.py)
    FINAL/.reduce/map-00003/done.json          key task 3 finished: its counts
    FINAL/.reduce/dedup/key-00007.arrow        the rows of key partition 7 that share a key
    FINAL/.reduce/dataset/                     the new dataset, moved into FINAL once complete
                                               (reduce_publish.py); the earlier one stays until then
    FINAL/.reduce/logs/                        the logs of reduce --slurm's stages, kept after the end
    """

    @property
    def work(self) -> Path:
        return self.root / ".reduce"

    @property
    def lock(self) -> Path:
        return self.work / "lock"

    @property
    def plan(self) -> Path:
        return self.work / "plan.json"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def map_dir(self, task: int) -> Path:
        return self.work / f"map-{task:05d}"

    def map_keys(self, task: int, kind: str, partition: int) -> Path:
        return self.map_dir(task) / f"{kind}-{partition:05d}.arrow"

    def map_done(self, task: int) -> Path:
        return self.map_dir(task) / "done.json"

    @property
    def staged(self) -> DatasetPaths:
        return DatasetPaths(self.work / "dataset")

    def dedup(self, kind: str, partition: int) -> Path:
        return self.work / "dedup" / f"{kind}-{partition:05d}.arrow"
