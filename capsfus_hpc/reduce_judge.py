"""Judging rows, for the assemble stage: read and screen each part on a reader thread, then
reject the invalid rows and the captions that break a rule, each with its reason and detail.

The compiled screen (caption_screen.py) runs where a batch of parts is decoded, on the reader
threads, beside each other and the encoder: it releases the GIL. Only the rows it flags reach
Python.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .caption_rules import DEFAULT_RULES, CaptionRules
from .caption_screen import judge_screened, screen
from .columns import (DETAIL, FINISH_REASON, FUSED_CAPTION, REASON, REJECT_DETAIL, REJECT_REASON, STATUS,
                      STATUS_INVALID, STATUS_OK, ColumnMapping)
from .reconcile import Part, read_part

CAPTION_REASON_PREFIX = "caption_"
BATCH_ROWS = 65_536  # parts are read, judged and written in batches of about this many rows
T = TypeVar("T")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns and types (absent ones null)."""
    arrays = [(table.column(f.name) if table.schema.field(f.name).type == f.type else table.column(f.name).cast(f.type))
              if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def batches(parts: list[Part], read: Callable[[list[Part]], T], readers: int = 1) -> Iterator[T]:
    """read(group) of each group of consecutive parts of about BATCH_ROWS rows, in order, run on
    `readers` threads (parquet decoding and the screen release the GIL), at most two groups a
    reader ahead of the caller. A reader takes a whole batch, not a part: what little Python a
    read needs is then paid once a batch, not once a part, and waits less on the GIL."""
    if not parts:
        return
    groups, rows = [[]], 0
    for part in parts:
        if rows >= BATCH_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(part)
        rows += part.chunk.rows
    pool = ThreadPoolExecutor(readers)
    try:
        pending = deque(pool.submit(read, group) for group in groups[:2 * readers])
        for group in groups[2 * readers:]:
            done = pending.popleft()
            pending.append(pool.submit(read, group))
            yield done.result()
        while pending:
            yield pending.popleft().result()
    finally:  # on an error, or a caller that stops early, reads not yet started are dropped
        pool.shutdown(cancel_futures=True)


def read_rows(schema: pa.Schema, verify: bool = True) -> Callable[[list[Part]], pa.Table]:
    """read(group) for `batches`: the parts' rows of the schema's columns, conformed to it, each
    part checked (reconcile.read_part)."""
    def read(group: list[Part]) -> pa.Table:
        tables = [read_part(part, schema.names, verify) for part in group]
        return conform(pa.concat_tables(tables, promote_options="permissive"), schema).combine_chunks()
    return read


def _caption_columns(table: pa.Table, columns: ColumnMapping) -> list[pa.ChunkedArray]:
    """The fused, raw and synthetic captions and the finish reason, as the rules read them."""
    names = (FUSED_CAPTION, columns.raw_caption, columns.synthetic_caption, FINISH_REASON)
    return [_as_strings(table.column(n)) if n in table.column_names
            else pa.chunked_array([pa.nulls(table.num_rows, pa.string())]) for n in names]


def _as_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A caption column as the screen reads it. An input column of numbers or lists never held a
    caption that was fused (those rows are invalid input), so it reads as nulls."""
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        return column.cast(pa.string())
    return pa.chunked_array([pa.nulls(len(column), pa.string())])


def screened_rows(schema: pa.Schema, columns: ColumnMapping, rules: CaptionRules
                  ) -> Callable[[list[Part]], tuple[pa.Table, np.ndarray]]:
    """read(group) for `batches`: the parts' rows conformed to the schema, and the screen's flags."""
    read_table = read_rows(schema)

    def read(group: list[Part]) -> tuple[pa.Table, np.ndarray]:
        table = read_table(group)
        return table, screen(*_caption_columns(table, columns), rules)
    return read


@cache  # once a process: the local reduce calls it early, assemble_task again (on SLURM, first)
def load_screen() -> None:
    """Run the screen's compiled kernels once, on two rows, so that numba has loaded them (about
    a second, and the character tables) before the first batch arrives, not on each reader at
    once. The local reduce does it early, beside the fork server loading the workers' kernels."""
    captions = pa.array(["A cat on a mat.", "Un café ÉTÉ, Nike™."])
    screen(captions, captions, captions, pa.array(["eos", "length"]), DEFAULT_RULES)


@dataclass
class Judged:
    """A batch's rejected rows: their offsets in the batch (ascending), reasons and details;
    and which rows passed."""

    offsets: np.ndarray
    reasons: pa.Array
    details: pa.Array
    passed: np.ndarray


def judge_batch(table: pa.Table, flags: np.ndarray, columns: ColumnMapping, rules: CaptionRules,
                counts: Counter) -> Judged:
    """Reject the rows the workers marked invalid, then the captions that break a rule; counts
    gets ok rows and each reason."""
    ok = pc.equal(table.column(STATUS), STATUS_OK).fill_null(False).to_numpy(zero_copy_only=False)
    counts["ok"] += int(ok.sum())
    offsets, reasons, details = [], [], []
    if not ok.all():
        invalid = np.flatnonzero(~ok)
        picked = table.select([REASON, DETAIL]).take(pa.array(invalid))
        offsets.append(invalid)
        reasons.append(picked.column(REASON).cast(pa.string()).fill_null(STATUS_INVALID).combine_chunks())
        details.append(picked.column(DETAIL).cast(pa.string()).combine_chunks())
        counts.update(reasons[-1].to_pylist())
    flags = np.where(ok, flags, 0)
    verdicts = judge_screened(flags, *_caption_columns(table, columns), rules) if flags.any() else []
    passed = ok
    if verdicts:
        rows, caption_reasons, caption_details = zip(*verdicts)
        caption_reasons = [CAPTION_REASON_PREFIX + r for r in caption_reasons]
        counts.update(caption_reasons)
        offsets.append(np.array(rows, np.int64))
        reasons.append(pa.array(caption_reasons, pa.string()))
        details.append(pa.array(caption_details, pa.string()))
        passed = ok.copy()
        passed[offsets[-1]] = False
    if not offsets:
        empty = pa.array([], pa.string())
        return Judged(np.zeros(0, np.int64), empty, empty, passed)
    order = pa.array(np.argsort(np.concatenate(offsets), kind="stable"))
    return Judged(np.sort(np.concatenate(offsets)), pa.concat_arrays(reasons).take(order),
                  pa.concat_arrays(details).take(order), passed)
