"""The manifest: input files, their fingerprints, and the shards (row ranges) cut from them.

Row ids are global: file i's rows are numbered from the sum of the row counts of files before
it, so every input row of a manifest has exactly one id.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from .atomic import atomic_write_json, sha256_file
from .columns import INPUT_ERROR, ColumnMapping
from .errors import CapsfusError
from .fingerprint import Fingerprint, parquet_fingerprint, read_footer, stat_fingerprint
from .inputs import PARQUET, STAGING_PASSES, check_readable, detect_format, stage_to_parquet
from .shard_reader import plain_schema

MANIFEST_VERSION = 1
DEFAULT_ROWS_PER_SHARD = 50_000


@dataclass(frozen=True)
class InputFile:
    index: int
    path: str  # the parquet file workers read: the input itself, or its staging file
    source: str  # the file the user named
    format: str
    rows: int
    row_id_start: int
    has_key: bool
    fingerprint: Fingerprint
    source_fingerprint: Fingerprint | None = None  # staged inputs only

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["fingerprint"] = self.fingerprint.as_dict()
        data["source_fingerprint"] = self.source_fingerprint.as_dict() if self.source_fingerprint else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "InputFile":
        source_fp = data.get("source_fingerprint")
        return cls(
            **{**data, "fingerprint": Fingerprint(**data["fingerprint"]),
               "source_fingerprint": Fingerprint(**source_fp) if source_fp else None}
        )


@dataclass(frozen=True)
class Shard:
    id: int
    file: int
    start: int  # first row within the file
    stop: int  # one past the last row within the file
    row_id_start: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def row_id_stop(self) -> int:
        return self.row_id_start + self.rows


@dataclass(frozen=True)
class Manifest:
    columns: ColumnMapping
    rows_per_shard: int
    files: tuple[InputFile, ...]
    shards: tuple[Shard, ...]

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def shard(self, shard_id: int) -> Shard:
        if not 0 <= shard_id < len(self.shards):
            raise CapsfusError(f"no shard {shard_id}: the manifest has shards 0..{len(self.shards) - 1}")
        return self.shards[shard_id]

    def as_dict(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "columns": self.columns.as_dict(),
            "rows_per_shard": self.rows_per_shard,
            "total_rows": self.total_rows,
            "files": [f.as_dict() for f in self.files],
            "shards": [s.__dict__ for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        return cls(
            columns=ColumnMapping.from_dict(data["columns"]),
            rows_per_shard=data["rows_per_shard"],
            files=tuple(InputFile.from_dict(f) for f in data["files"]),
            shards=tuple(Shard(**s) for s in data["shards"]),
        )


def plan_shards(row_group_rows: Sequence[int], rows_per_shard: int) -> list[tuple[int, int]]:
    """Cut one file into contiguous [start, stop) ranges of about rows_per_shard rows.

    A cut snaps to a row-group boundary within a quarter of the target, so a shard rarely
    straddles a row group; a tail shorter than that quarter joins the shard before it.
    """
    if rows_per_shard < 1:
        raise CapsfusError(f"--rows-per-shard must be at least 1, got {rows_per_shard}")
    boundaries: list[int] = []
    for rows in row_group_rows:
        boundaries.append((boundaries[-1] if boundaries else 0) + rows)
    total = boundaries[-1] if boundaries else 0
    tolerance = rows_per_shard // 4
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < total:
        target = start + rows_per_shard
        if target + tolerance >= total:
            ranges.append((start, total))
            break
        low = bisect.bisect_left(boundaries, max(start + 1, target - tolerance))
        high = bisect.bisect_right(boundaries, target + tolerance)
        candidates = boundaries[low:high]
        stop = min(candidates, key=lambda b: (abs(b - target), b)) if candidates else target
        ranges.append((start, stop))
        start = stop
    return ranges


def staging_dir(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".staging")


def bytes_to_read(inputs: Sequence[Path]) -> int:
    """What build_manifest reads of these inputs, for a progress bar: a parquet file's size (its
    footer is all, but it stands for the file), and each pass over a JSON source."""
    total = 0
    for given in map(Path, inputs):
        try:
            total += given.stat().st_size * (1 if detect_format(given) == PARQUET else STAGING_PASSES)
        except (OSError, CapsfusError):
            pass  # build_manifest names it
    return total


def _resolve_input(source: Path, manifest_path: Path, columns: ColumnMapping,
                   on_bytes: Callable[[int], None] | None) -> tuple[Path, str, Fingerprint | None]:
    fmt = detect_format(source)  # (build_manifest checked it is readable)
    if fmt == PARQUET:
        if on_bytes:
            on_bytes(source.stat().st_size)
        return source, fmt, None
    staged, content_sha256 = stage_to_parquet(source, fmt, staging_dir(manifest_path), columns, on_bytes)
    return staged, fmt, stat_fingerprint(source, content_sha256)


def build_manifest(
    inputs: Sequence[Path],
    output: Path,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    columns: ColumnMapping = ColumnMapping(),
    key_required: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    replace: bool = False,
) -> Manifest:
    """Read footers (staging JSON inputs first), plan shards, and write the manifest atomically.
    An existing file at `output` is replaced only with `replace` (and never when it is an input);
    on_bytes gets the bytes read as it goes (bytes_to_read in all)."""
    if not inputs:
        raise CapsfusError("no input files given")
    output = output.absolute()
    if output.is_dir():
        raise CapsfusError(f"-o {output}: is a folder; name the manifest file, e.g. {output / 'manifest.json'}")
    seen: dict[tuple[int, int], Path] = {}
    for given in inputs:  # overlapping globs (or links) would fuse every row of a file twice
        check_readable(Path(given))
        info = Path(given).stat()
        if (info.st_dev, info.st_ino) in seen:
            raise CapsfusError(f"{given} is given more than once (as {seen[info.st_dev, info.st_ino]}, or a link to "
                               "it); list each input file once")
        seen[info.st_dev, info.st_ino] = Path(given)
    if output.exists():
        out = output.stat()
        if (out.st_dev, out.st_ino) in seen:
            raise CapsfusError(f"-o {output}: is one of the inputs; name a new file for the manifest")
        if not replace:
            raise CapsfusError(f"-o {output}: exists already, and runs started from it refuse a changed one; "
                               "name a new manifest, or give --force to replace it")
    files: list[InputFile] = []
    shards: list[Shard] = []
    schema: pa.Schema | None = None
    row_id = 0
    for index, given in enumerate(inputs):
        source = Path(given).absolute()
        parquet_path, fmt, source_fp = _resolve_input(source, output, columns, on_bytes)
        footer = read_footer(parquet_path)
        file_schema = plain_schema(footer.schema.to_arrow_schema())  # the types the worker reads
        staged = fmt != PARQUET  # (a staged file's INPUT_ERROR column is ours; a user's parquet may not have one)
        columns.check([n for n in file_schema.names if not (staged and n == INPUT_ERROR)], str(source), key_required)
        _check_key_type(file_schema, columns.key, source)
        schema = _unify(schema, file_schema, source)
        group_rows = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        for start, stop in plan_shards(group_rows, rows_per_shard):
            shards.append(Shard(len(shards), index, start, stop, row_id + start))
        files.append(InputFile(
            index=index, path=str(parquet_path), source=str(source), format=fmt, rows=footer.num_rows,
            row_id_start=row_id, has_key=columns.key in file_schema.names,
            fingerprint=parquet_fingerprint(parquet_path), source_fingerprint=source_fp,
        ))
        row_id += footer.num_rows
    if row_id == 0:
        raise CapsfusError(f"the inputs hold no rows: {', '.join(str(f.source) for f in files)}")
    manifest = Manifest(columns, rows_per_shard, tuple(files), tuple(shards))
    atomic_write_json(output, manifest.as_dict())
    return manifest


def _check_key_type(file_schema: pa.Schema, key: str | None, source: Path) -> None:
    """Keys are compared as text: strings, and integers (ids) written as text, but nothing nested."""
    if key is None or key not in file_schema.names:
        return
    kind = file_schema.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_null(kind)):  # (null: every value is; a null key is no key, as anywhere)
        raise CapsfusError(f"{source}: key column '{key}' is {kind}, not a string or integer column; "
                           f"name another with --key-column")


def _unify(schema: pa.Schema | None, file_schema: pa.Schema, source: Path) -> pa.Schema:
    file_schema = pa.schema([f for f in file_schema if f.name != INPUT_ERROR])
    if schema is None:
        return file_schema
    try:
        return pa.unify_schemas([schema, file_schema], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CapsfusError(f"{source}: columns do not match the earlier inputs: {exc}") from exc


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CapsfusError(f"{path}: no such manifest; build one with 'capsfus-hpc manifest build'") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CapsfusError(f"{path}: not a manifest (invalid JSON: {exc})") from exc
    if not isinstance(data, dict) or "shards" not in data:
        raise CapsfusError(f"{path}: not a manifest (no shards); build one with 'capsfus-hpc manifest build'")
    if data.get("version") != MANIFEST_VERSION:
        raise CapsfusError(f"{path}: manifest version {data.get('version')!r} is not {MANIFEST_VERSION}")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CapsfusError(f"{path}: a damaged manifest ({type(exc).__name__}: {exc}); build it again") from exc


def manifest_sha256(path: Path) -> str:
    return sha256_file(path)


def input_change(file: InputFile) -> str | None:
    """How an input changed since the manifest was built ("PATH was deleted", say), or None."""
    changed = _changed(Path(file.path), file.fingerprint, parquet=True)
    if changed:
        return f"{file.path} {changed}"
    if file.source_fingerprint is not None and (changed := _changed(Path(file.source), file.source_fingerprint,
                                                                     parquet=False)):
        return f"{file.source} {changed}"
    return None


def verify_input(file: InputFile) -> None:
    """Refuse to read an input that changed since the manifest was built."""
    if changed := input_change(file):
        raise CapsfusError(f"input {changed} since the manifest was built; rebuild the manifest")


def refuse_changed_inputs(manifest: Manifest, shard_ids: list[int]) -> None:
    """Before tasks are submitted: every input these shards read is as the manifest saw it (else
    each of their tasks would fail on it)."""
    files = sorted({manifest.shard(shard).file for shard in shard_ids})
    changed = [change for index in files if (change := input_change(manifest.files[index]))]
    if changed:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise CapsfusError(f"{len(changed)} input file(s) of the shards to run changed since the manifest was "
                           f"built, so their tasks would fail: {shown}. Put them back, or rebuild the manifest "
                           "and start a new run")


def _changed(path: Path, expected: Fingerprint, parquet: bool) -> str | None:
    try:
        actual = parquet_fingerprint(path) if parquet else stat_fingerprint(path, expected.content_sha256)
    except FileNotFoundError:
        return "was deleted"
    except CapsfusError:
        return "is no longer a parquet file"
    if actual.size != expected.size:
        return f"changed size ({expected.size} -> {actual.size} bytes)"
    if actual.footer_sha256 != expected.footer_sha256:
        return "changed content (parquet footer differs)"
    if actual.mtime_ns != expected.mtime_ns:
        return "was modified (mtime differs)"
    return None
