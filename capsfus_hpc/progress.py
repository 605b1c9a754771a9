"""A shard's progress record: the committed chunks (the resume contract) and its attempts.

The record is the only proof that a part is committed: a part file without an entry here is
an orphan of a crash and is overwritten when its chunk is redone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .atomic import atomic_write_bytes
from .errors import CapsfusError
from .manifest import Shard


@dataclass(frozen=True)
class ChunkRecord:
    index: int  # part file number within the shard
    row_id_start: int
    row_id_stop: int
    ok_rows: int
    sha256: str  # of the part file's bytes
    bytes: int
    seconds: float  # time spent on the chunk: read, generate, write
    committed_at: float  # unix time
    schema_sha256: str | None = None  # parquet_layout.schema_fingerprint; None in older records

    @property
    def rows(self) -> int:
        return self.row_id_stop - self.row_id_start


@dataclass(frozen=True)
class Attempt:
    started_at: float
    host: str
    pid: int
    job_id: str | None
    restart: int = 0  # SLURM_RESTART_COUNT: how often the task was requeued before this attempt
    ended_at: float | None = None
    error: str | None = None  # None with ended_at set: the attempt finished or was stopped
    stopped_by: str | None = None  # the signal that made it commit early and stop (SIGUSR2, SIGTERM)


@dataclass(frozen=True)
class ProgressRecord:
    shard: int
    row_id_start: int
    row_id_stop: int
    chunks: tuple[ChunkRecord, ...] = ()
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    batch_tokens: int | None = None  # the token budget an out-of-memory left (batching.kv_tokens)

    @classmethod
    def new(cls, shard: Shard) -> "ProgressRecord":
        return cls(shard.id, shard.row_id_start, shard.row_id_stop)

    @property
    def rows_done(self) -> int:
        return sum(c.rows for c in self.chunks)

    @property
    def next_row_id(self) -> int:
        return self.chunks[-1].row_id_stop if self.chunks else self.row_id_start

    @property
    def done(self) -> bool:
        return self.next_row_id == self.row_id_stop

    @property
    def requeues(self) -> int:
        return sum(1 for attempt in self.attempts if attempt.stopped_by)

    def time_limit_stops(self, job_id: str | None) -> int:
        """Attempts of one SLURM task stopped by its time-limit warning. Preemptions (SIGTERM) are not
        the shard's fault, and a resubmitted task (a new job id) starts from none."""
        return sum(1 for a in self.attempts if a.stopped_by == "SIGUSR2" and a.job_id == job_id)

    @property
    def last_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def with_chunk(self, chunk: ChunkRecord) -> "ProgressRecord":
        if chunk.row_id_start != self.next_row_id or chunk.index != len(self.chunks):
            raise ValueError(f"chunk {chunk.index} does not follow the committed rows of shard {self.shard}")
        return replace(self, chunks=(*self.chunks, chunk))

    def with_chunk_replaced(self, chunk: ChunkRecord) -> "ProgressRecord":
        """The record with a regenerated chunk in place of the one with its index and rows."""
        old = self.chunks[chunk.index]
        if (old.row_id_start, old.row_id_stop) != (chunk.row_id_start, chunk.row_id_stop):
            raise ValueError(f"chunk {chunk.index} of shard {self.shard} must keep rows {old.row_id_start}-"
                             f"{old.row_id_stop - 1}")
        return replace(self, chunks=(*self.chunks[:chunk.index], chunk, *self.chunks[chunk.index + 1:]))

    def with_attempt(self, attempt: Attempt) -> "ProgressRecord":
        return replace(self, attempts=(*self.attempts, attempt))

    def with_attempt_ended(self, ended_at: float, error: str | None, stopped_by: str | None = None) -> "ProgressRecord":
        last = replace(self.attempts[-1], ended_at=ended_at, error=error, stopped_by=stopped_by)
        return replace(self, attempts=(*self.attempts[:-1], last))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProgressRecord":
        """The record a progress file holds; a field of the wrong type, or chunks that do not
        follow each other from the shard's first row, raise TypeError or ValueError."""
        record = _typed(cls, {**data, "chunks": tuple(_typed(ChunkRecord, c) for c in data["chunks"]),
                              "attempts": tuple(_typed(Attempt, a) for a in data["attempts"])})
        at = record.row_id_start
        for index, chunk in enumerate(record.chunks):
            if chunk.index != index or chunk.row_id_start != at or not at < chunk.row_id_stop <= record.row_id_stop:
                raise ValueError(f"chunk {index} does not follow the rows before it within {record.row_id_start}-"
                                 f"{record.row_id_stop - 1}")
            at = chunk.row_id_stop
        return record


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,)}


def _typed(cls, data: dict):
    """cls(**data), once each scalar field holds the JSON type its annotation names (None where allowed)."""
    for f in fields(cls):
        kinds = str(f.type).split(" | ")
        if f.name not in data or not all(k in _JSON_TYPES or k == "None" for k in kinds):
            continue  # a missing field is cls's to refuse; a tuple field was checked by the caller
        value = data[f.name]
        allowed = tuple(t for k in kinds if k != "None" for t in _JSON_TYPES[k])
        if not (value is None and "None" in kinds) and (isinstance(value, bool) or not isinstance(value, allowed)):
            raise TypeError(f"{f.name} is {value!r}, not {f.type}")
    return cls(**data)


def read_progress(path: Path) -> ProgressRecord | None:
    try:
        return ProgressRecord.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CapsfusError(f"{path}: damaged progress record ({type(exc).__name__}: {exc}); which rows its shard "
                           f"committed cannot be known: move {path.parent} aside (its parts with it) and resume, "
                           "which fuses that shard again") from exc


def write_progress(path: Path, record: ProgressRecord, midway: Callable[[], None] | None = None) -> None:
    text = json.dumps(record.as_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), midway)
