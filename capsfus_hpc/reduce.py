"""The reducer: judge every fused caption, drop duplicates, and assemble the final dataset.

Every manifest row ends in exactly one place: the final data (accepted), rejects.parquet with
a reject_reason (an invalid input, a caption rule, or a duplicate whose winner, the first
accepted row in manifest order, is named in duplicate_of), or, with --allow-partial only, the
missing rows that stats.json lists. Rows are read in manifest order, so the output is the same
bytes whatever order the shards finished in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .atomic import atomic_path, atomic_write_bytes, atomic_write_json
from .caption_rules import CaptionRules, judge
from .columns import DETAIL, FINISH_REASON, FUSED_CAPTION, REASON, ROW_ID, STATUS, STATUS_OK
from .dataset_card import dataset_card
from .dataset_writer import DataWriter, data_file_name
from .errors import CapsfusError
from .keys import normalize_caption, normalize_url
from .paths import RunPaths
from .reconcile import committed_parts, incomplete_message, iter_tables, part_schema
from .settings import load_run
from .status import gather_status, read_records

DATA_FILE = data_file_name(0)  # the first (in a small dataset, the only) data file
REJECTS_FILE = "rejects.parquet"
DUPLICATES_FILE = "duplicates.parquet"
STATS_FILE = "stats.json"
CARD_FILE = "README.md"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
DUPLICATE_OF = "duplicate_of"
DUPLICATE_KEY = "duplicate_key"
DUPLICATE_CAPTION = "duplicate_caption"
DUPLICATES_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(DUPLICATE_OF, pa.int64()),
                               pa.field(REJECT_REASON, pa.string())])
CAPTION_REASON_PREFIX = "caption_"


@dataclass(frozen=True)
class ReduceOptions:
    allow_partial: bool = False  # assemble an incomplete run, listing what is missing
    dedup_caption: bool = False  # also drop rows whose normalised fused caption was seen before
    write_duplicates: bool = False  # duplicates.parquet: each dropped row and its winner
    target_file_bytes: int = 512 * 2**20
    row_group_rows: int = 100_000
    rules: CaptionRules = field(default_factory=CaptionRules)


@dataclass
class _Tally:
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    rows_out: int = 0


class _Winners:
    """First accepted row of each normalised key (and caption): later ones are duplicates."""

    def __init__(self, by_caption: bool):
        self.keys: dict[str, int] = {}
        self.captions: dict[str, int] | None = {} if by_caption else None

    def duplicate_of(self, key, caption: str, row_id: int) -> tuple[str, int] | None:
        normal_key = normalize_url(key) if isinstance(key, str) else None
        normal_caption = normalize_caption(caption) if self.captions is not None else None
        if normal_key is not None and normal_key in self.keys:
            return DUPLICATE_KEY, self.keys[normal_key]
        if normal_caption is not None and normal_caption in self.captions:
            return DUPLICATE_CAPTION, self.captions[normal_caption]
        if normal_key is not None:
            self.keys[normal_key] = row_id
        if normal_caption is not None:
            self.captions[normal_caption] = row_id
        return None


def load_rules(path: Path) -> CaptionRules:
    """Caption rule thresholds from a JSON object; unknown names are refused."""
    try:
        return CaptionRules.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError as exc:
        raise CapsfusError(f"{path}: no such rules file") from exc
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise CapsfusError(f"{path}: not a JSON object of rule thresholds ({exc})") from exc


def _rules_document(rules: CaptionRules) -> dict:
    values = {f.name: getattr(rules, f.name) for f in fields(rules) if f.init}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}


def _split(table: pa.Table, columns, options: ReduceOptions, winners: _Winners, tally: _Tally):
    """(accepted rows, rejected rows with reason) of one part."""
    values = {name: table.column(name).to_pylist() for name in
              (STATUS, FUSED_CAPTION, REASON, DETAIL, ROW_ID, FINISH_REASON, columns.raw_caption, columns.synthetic_caption)}
    keys = table.column(columns.key).to_pylist() if columns.key in table.column_names else [None] * table.num_rows
    keep, reject, reasons, details, duplicate_of = [], [], [], [], []

    def rejected(i: int, reason: str, detail: str | None, winner: int | None = None) -> None:
        reject.append(i); reasons.append(reason); details.append(detail); duplicate_of.append(winner)

    for i in range(table.num_rows):
        if values[STATUS][i] != STATUS_OK:
            rejected(i, values[REASON][i], values[DETAIL][i])
            continue
        tally.ok += 1
        fused = values[FUSED_CAPTION][i]
        verdict = judge(fused, values[columns.raw_caption][i], values[columns.synthetic_caption][i],
                        values[FINISH_REASON][i], options.rules)
        if verdict:
            rejected(i, CAPTION_REASON_PREFIX + verdict[0], verdict[1])
            continue
        duplicate = winners.duplicate_of(keys[i], fused, values[ROW_ID][i])
        if duplicate:
            kind, winner = duplicate
            rejected(i, kind, f"same {columns.key if kind == DUPLICATE_KEY else 'caption'} as row {winner}", winner)
            tally.duplicates[kind] += 1
            continue
        keep.append(i)
    for reason in reasons:
        if reason not in (DUPLICATE_KEY, DUPLICATE_CAPTION):
            tally.rejected[reason] += 1
    rejects = table.take(pa.array(reject, pa.int64()))
    for name, array in ((REJECT_REASON, pa.array(reasons, pa.string())), (REJECT_DETAIL, pa.array(details, pa.string())),
                        (DUPLICATE_OF, pa.array(duplicate_of, pa.int64()))):
        rejects = rejects.append_column(name, array)
    return table.take(pa.array(keep, pa.int64())), rejects


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _prepare_final(final: Path) -> None:
    """An empty folder, or one holding an earlier reduce's output, which is replaced."""
    if final.exists() and any(final.iterdir()) and not (final / STATS_FILE).exists():
        raise CapsfusError(f"{final} is not empty and holds no earlier reduce output; choose an empty --final folder")
    final.mkdir(parents=True, exist_ok=True)
    # stats.json goes first, so the folder reads as unfinished until this reduce completes.
    (final / STATS_FILE).unlink(missing_ok=True)
    for old in [*final.glob("data-*.parquet"), final / REJECTS_FILE, final / DUPLICATES_FILE, final / CARD_FILE]:
        old.unlink(missing_ok=True)


def reduce_run(paths: RunPaths, final: Path, options: ReduceOptions = ReduceOptions(),
               on_part: Callable[[int], None] | None = None) -> dict:
    """Check the run, then write the final dataset; returns the stats."""
    settings, manifest = load_run(paths)
    records = read_records(paths, manifest)
    status = gather_status(paths, manifest, records=records)
    if not status.complete and not options.allow_partial:
        raise CapsfusError(incomplete_message(paths, status))
    parts, gaps = committed_parts(paths, manifest, records)
    schema = pa.unify_schemas([part_schema(part) for part in parts], promote_options="permissive") if parts else None
    if schema is None:
        raise CapsfusError(f"run {paths.root} has no committed rows to reduce")
    data_schema = pa.schema([f for f in schema if f.name not in (STATUS, REASON, DETAIL)])
    rejects_schema = pa.schema([*schema, pa.field(REJECT_REASON, pa.string()), pa.field(REJECT_DETAIL, pa.string()),
                                pa.field(DUPLICATE_OF, pa.int64())])
    final = final.absolute()
    _prepare_final(final)
    tally, winners = _Tally(), _Winners(options.dedup_caption)
    # Commit order: each file appears under its final name only when complete (atomic_path):
    # duplicates, rejects, then the data files as the stack unwinds; then the card, and
    # stats.json last, which marks a complete reduce.
    with ExitStack() as stack:
        data = stack.enter_context(DataWriter(final, data_schema, options.target_file_bytes, options.row_group_rows))
        rejects_out = stack.enter_context(
            pq.ParquetWriter(stack.enter_context(atomic_path(final / REJECTS_FILE)), rejects_schema, compression="zstd"))
        duplicates_out = stack.enter_context(
            pq.ParquetWriter(stack.enter_context(atomic_path(final / DUPLICATES_FILE)), DUPLICATES_SCHEMA,
                             compression="zstd")) if options.write_duplicates else None
        for part, table in iter_tables(parts):
            accepted, rejected = _split(_conform(table, schema), manifest.columns, options, winners, tally)
            data.write(_conform(accepted, data_schema))
            rejects_out.write_table(_conform(rejected, rejects_schema))
            if duplicates_out is not None:
                dropped = rejected.filter(pc.is_valid(rejected.column(DUPLICATE_OF)))
                duplicates_out.write_table(_conform(dropped, DUPLICATES_SCHEMA))
            tally.rows_out += accepted.num_rows
            if on_part:
                on_part(part.chunk.rows)
    missing_rows = sum(gap.rows for gap in gaps)
    stats = {
        "rows_in": manifest.total_rows,
        "ok": tally.ok,
        "rejected": dict(sorted(tally.rejected.items())),
        "rejected_total": sum(tally.rejected.values()),
        "duplicates": sum(tally.duplicates.values()),
        "duplicates_by_kind": dict(sorted(tally.duplicates.items())),
        "rows_out": tally.rows_out,
        "missing_rows": missing_rows,
        "missing": [asdict(gap) for gap in gaps],
        "shards": len(manifest.shards),
        "parts": len(parts),
        "dedup_key": manifest.columns.key,
        "dedup_caption": options.dedup_caption,
        "rules": _rules_document(options.rules),
        "run": str(paths.root),
        "manifest_sha256": settings.manifest_sha256,
        "model": settings.model,
        "model_revision": settings.model_revision,
        "package_version": __version__,
        "files": {"data": data.files, "rejects": REJECTS_FILE,
                  "duplicates": DUPLICATES_FILE if options.write_duplicates else None},
    }
    if stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] + missing_rows != stats["rows_in"]:
        raise CapsfusError(f"internal error: rows do not add up: {json.dumps(stats)}")
    atomic_write_bytes(final / CARD_FILE, dataset_card(stats, data_schema, settings).encode())
    atomic_write_json(final / STATS_FILE, stats)
    return stats


def reduce_task(run_dir: str, final: str) -> dict:
    """SLURM task entry point for `submit --then-reduce`: plain arguments, like worker.run_shards."""
    return reduce_run(RunPaths(Path(run_dir)), Path(final))
