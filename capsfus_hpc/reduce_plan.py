"""What a reduce does, as plain data: options, which shards each key task reads, how many key
partitions. The plan is written to FINAL/.reduce/plan.json, so a reduce task (local process or
SLURM array task) needs only the final folder and its index."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa

from .atomic import atomic_write_json
from .caption_rules import CaptionRules
from .errors import CapsfusError
from .manifest import Manifest
from .paths import ReducePaths, RunPaths

ROWS_PER_PARTITION = 2_000_000  # keys of one partition are deduped in memory: ~300 MB at this size
MIN_ROWS_PER_KEY_TASK = 200_000  # below this a task's start-up outweighs its work
KEY = "key"  # partition kinds: the dedup key column, and the normalised fused caption
CAPTION = "caption"


@dataclass(frozen=True)
class ReduceOptions:
    allow_partial: bool = False  # assemble an incomplete run, listing what is missing
    dedup_caption: bool = False  # also drop rows whose normalised fused caption was seen before
    write_duplicates: bool = False  # duplicates.parquet: each dropped row and its winner
    target_file_bytes: int = 512 * 2**20
    row_group_rows: int = 100_000
    rules: CaptionRules = field(default_factory=CaptionRules)
    near_dup: float | None = None  # drop captions this Jaccard-similar to an earlier kept one (near_dup.py)

    def as_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**values, "rules": rules_document(self.rules)}

    @classmethod
    def from_dict(cls, data: dict) -> ReduceOptions:
        return cls(**{**data, "rules": CaptionRules.from_dict(data["rules"])})


def rules_document(rules: CaptionRules) -> dict:
    values = {f.name: getattr(rules, f.name) for f in fields(rules) if f.init}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}


def load_rules(path: Path) -> CaptionRules:
    """Caption rule thresholds from a JSON object; unknown names are refused."""
    try:
        return CaptionRules.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError as exc:
        raise CapsfusError(f"{path}: no such rules file") from exc
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise CapsfusError(f"{path}: not a JSON object of rule thresholds ({exc})") from exc
    except CapsfusError as exc:  # a value the rules refuse
        raise CapsfusError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class ReducePlan:
    run: str
    final: str
    options: ReduceOptions
    key_tasks: tuple[tuple[int, ...], ...]  # shard ids each key task reads, in manifest order
    partitions: int
    schema: pa.Schema  # of the parts, unified: what the data and rejects files are built from

    @property
    def kinds(self) -> tuple[str, ...]:
        return (KEY, CAPTION) if self.options.dedup_caption else (KEY,)

    def as_dict(self) -> dict:
        return {"run": self.run, "final": self.final, "options": self.options.as_dict(),
                "key_tasks": [list(t) for t in self.key_tasks], "partitions": self.partitions,
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode()}

    @classmethod
    def from_dict(cls, data: dict) -> ReducePlan:
        return cls(data["run"], data["final"], ReduceOptions.from_dict(data["options"]),
                   tuple(tuple(t) for t in data["key_tasks"]), data["partitions"],
                   pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["schema"]))))

    @property
    def run_paths(self) -> RunPaths:
        return RunPaths(Path(self.run))

    @property
    def final_paths(self) -> ReducePaths:
        return ReducePaths(Path(self.final))


def plan_reduce(run: Path, final: Path, manifest: Manifest, shard_rows: dict[int, int], schema: pa.Schema,
                options: ReduceOptions, workers: int) -> ReducePlan:
    """Pure: shards with committed rows cut into key tasks of contiguous shards (one per worker
    when there is enough work), and enough key partitions to keep each one small.
    The output does not depend on either number: only the work does."""
    shard_ids = [s.id for s in manifest.shards if shard_rows.get(s.id)]
    rows = sum(shard_rows.get(s, 0) for s in shard_ids)
    # One task per worker: a key task streams, so its size costs no memory, and each task
    # pays a second or so of start-up.
    tasks = max(1, min(len(shard_ids), workers, math.ceil(rows / MIN_ROWS_PER_KEY_TASK)))
    groups, target, current, current_rows, done_rows = [], rows / tasks, [], 0, 0
    for shard in shard_ids:
        current.append(shard)
        current_rows += shard_rows[shard]
        if done_rows + current_rows >= target * (len(groups) + 1) and len(groups) < tasks - 1:
            groups.append(tuple(current))
            done_rows += current_rows
            current, current_rows = [], 0
    if current or not groups:
        groups.append(tuple(current))
    partitions = max(1, math.ceil(rows / ROWS_PER_PARTITION), workers if rows >= MIN_ROWS_PER_KEY_TASK else 1)
    return ReducePlan(str(run), str(final), options, tuple(groups), partitions, schema)


def write_plan(plan: ReducePlan) -> None:
    plan.final_paths.work.mkdir(parents=True, exist_ok=True, mode=0o755)
    atomic_write_json(plan.final_paths.plan, plan.as_dict())


def read_plan(final: Path) -> ReducePlan:
    paths = ReducePaths(final)
    try:
        return ReducePlan.from_dict(json.loads(paths.plan.read_text()))
    except FileNotFoundError as exc:
        raise CapsfusError(f"{paths.plan}: no reduce plan; start the reduce again") from exc
