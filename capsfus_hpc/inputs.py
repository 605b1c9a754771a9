"""Input files: parquet read by footer, JSON inputs staged once to parquet, and fingerprints.

Workers only ever read parquet. A JSON list, JSON Lines or .jsonl.zst input is converted once
to a staging parquet file; a line that cannot be read (bad UTF-8, malformed JSON, not an
object, a lone surrogate escape) still becomes a row, with its captions null and the reason in
INPUT_ERROR, so the worker rejects it with its line number instead of it vanishing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from .atomic import atomic_write, sha256_file
from .columns import INPUT_ERROR, ColumnMapping
from .errors import CapsfusError

PARQUET = "parquet"
JSON_LIST = "json"
JSON_LINES = "jsonl"
JSON_LINES_ZST = "jsonl.zst"
_STAGING_BATCH_ROWS = 10_000
# How records become staged rows: a file staged by an earlier version is staged again (2: a
# leading byte order mark is skipped, lone surrogates and wide integers are rows, not a crash).
STAGING_VERSION = 2
STAGING_PASSES = 3  # a JSON source is read to hash it, to type its columns, and to stage its rows
_REPORT_EVERY = 4096  # records between reports of bytes read
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors put first in a file
# A \u escape of a UTF-16 surrogate: json.loads joins a pair into one character, but takes a lone
# one as a character that is not text (no UTF-8 for it), which no parquet string can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_TEXT = "a \\u escape names half of a UTF-16 surrogate pair alone, which is not text"


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return PARQUET
    if name.endswith(".zst"):
        return JSON_LINES_ZST
    if name.endswith((".jsonl", ".ndjson")):
        return JSON_LINES
    if name.endswith(".json"):
        return JSON_LIST if _first_non_space(path) == b"[" else JSON_LINES
    raise CapsfusError(f"{path}: unknown input format (expected .parquet, .json, .jsonl or .jsonl.zst)")


def _first_non_space(path: Path) -> bytes:
    with open(path, "rb") as handle:
        while block := handle.read(4096):
            stripped = block.removeprefix(_BOM).lstrip()
            if stripped:
                return stripped[:1]
    return b""


# ---------------------------------------------------------------- JSON records


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line (JSON Lines) or element index + 1 (JSON list)
    values: dict[str, Any] | None
    error: str | None  # "code: detail" when the record could not be read


def iter_records(path: Path, fmt: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The file's records in order; on_bytes gets, now and then, how many more of its bytes were read."""
    if fmt == JSON_LIST:
        yield from _json_list_records(path)
        if on_bytes:
            on_bytes(path.stat().st_size)
        return
    with open(path, "rb") as raw:
        lines = raw if fmt != JSON_LINES_ZST else _lines(_zstd_blocks(raw, path))
        reported = 0
        try:
            for count, record in enumerate(_json_lines_records(lines), start=1):
                if on_bytes and count % _REPORT_EVERY == 0:
                    position = raw.tell()
                    on_bytes(position - reported)
                    reported = position
                yield record
        except zstandard.ZstdError as exc:
            raise CapsfusError(f"{path}: corrupt zstandard stream: {exc}") from exc
        if on_bytes:
            on_bytes(raw.tell() - reported)


def _zstd_blocks(raw: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every frame, streamed; a stream that ends mid-frame is refused."""
    context = zstandard.ZstdDecompressor()
    frame, in_frame = context.decompressobj(), False
    while block := raw.read(1 << 20):
        while block:
            in_frame = True
            if out := frame.decompress(block):
                yield out
            if not frame.eof:
                break
            block, frame, in_frame = frame.unused_data, context.decompressobj(), False
    if in_frame:
        raise CapsfusError(f"{path}: truncated zstandard stream (the last frame is incomplete)")


def _lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for block in blocks:
        pending += block
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _json_lines_records(lines: Iterator[bytes]) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield Record(number, None, f"invalid_utf8: line {number}: byte {exc.start} is not valid UTF-8")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(number, None, f"malformed_json: line {number}: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield Record(number, None, f"not_an_object: line {number}: a JSON {type(value).__name__}, not an object")
            continue
        if _SURROGATE_ESCAPE.search(text) and not _is_text(value):
            yield Record(number, None, f"invalid_unicode: line {number}: {_NOT_TEXT}")
            continue
        yield Record(number, value, None)


def _is_text(value: dict[str, Any]) -> bool:
    """Whether every string in a record (names too) has a UTF-8 form."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_list_records(path: Path) -> Iterator[Record]:
    # The CapsFusion example layout is one JSON list; it has to be parsed whole.
    data = path.read_bytes().removeprefix(_BOM)
    try:
        document = json.loads(data)
    except UnicodeDecodeError as exc:
        raise CapsfusError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise CapsfusError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(document, list):
        raise CapsfusError(f"{path}: expected a JSON list of objects, found a {type(document).__name__}")
    escapes = _SURROGATE_ESCAPE.search(data.decode("utf-8", "replace")) is not None
    for index, value in enumerate(document):
        if isinstance(value, dict) and escapes and not _is_text(value):
            yield Record(index + 1, None, f"invalid_unicode: element {index}: {_NOT_TEXT}")
        elif isinstance(value, dict):
            yield Record(index + 1, value, None)
        else:
            yield Record(index + 1, None, f"not_an_object: element {index}: a JSON {type(value).__name__}")


# ---------------------------------------------------------------- staging


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):  # ("int": also exact as a float64, so it may share a column with floats)
        return "int" if -(2**53) <= value <= 2**53 else "wide_int" if -(2**63) <= value < 2**63 else "other"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "other"


def _arrow_type(kinds: set[str]) -> pa.DataType:
    """One column type for all values; anything mixed is kept as JSON text."""
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds and kinds <= {"int", "wide_int"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()


def _cell(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None or not pa.types.is_string(arrow_type) or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _staging_schema(path: Path, fmt: str, columns: ColumnMapping,
                    on_bytes: Callable[[int], None] | None = None) -> pa.Schema:
    kinds: dict[str, set[str]] = {}
    for record in iter_records(path, fmt, on_bytes):
        for name, value in (record.values or {}).items():
            seen = kinds.setdefault(name, set())
            if value is not None:
                seen.add(_kind(value))
    if not kinds:
        raise CapsfusError(f"{path}: no readable records")
    columns.check(list(kinds), str(path), key_required=False)
    text_columns = {columns.raw_caption, columns.synthetic_caption, columns.key}
    fields = [pa.field(name, pa.string() if name in text_columns else _arrow_type(seen)) for name, seen in kinds.items()]
    return pa.schema([*fields, pa.field(INPUT_ERROR, pa.string())])


def _staging_row(record: Record, schema: pa.Schema, columns: ColumnMapping) -> dict[str, Any]:
    if record.values is None:
        return {INPUT_ERROR: record.error}
    row: dict[str, Any] = {}
    roles = {columns.raw_caption: "raw_caption", columns.synthetic_caption: "synthetic_caption"}
    for field in schema:
        if field.name == INPUT_ERROR:
            continue
        value = record.values.get(field.name)
        if field.name in roles and value is not None and not isinstance(value, str):
            # The same reason code the worker gives a non-string parquet value (validate.py).
            row.setdefault(INPUT_ERROR, f"{roles[field.name]}_not_string: line {record.line}: "
                                        f"{field.name} is a {type(value).__name__}, not a string")
            value = None
        row[field.name] = _cell(value, field.type)
    return row


def stage_to_parquet(source: Path, fmt: str, staging_dir: Path, columns: ColumnMapping,
                     on_bytes: Callable[[int], None] | None = None) -> tuple[Path, str]:
    """Convert a JSON input to parquet once; a staged file named by the source's hash and the
    column mapping (which columns are typed as text and checked to be strings) is reused.
    The source is read STAGING_PASSES times (hash, column types, rows); on_bytes gets the bytes
    read as it goes, all passes counted.

    Returns the staged file and the source's content hash."""
    content_sha256 = sha256_file(source, on_bytes)
    staging = {**columns.as_dict(), "staging": STAGING_VERSION}
    mapping = hashlib.sha256(json.dumps(staging, sort_keys=True).encode()).hexdigest()[:8]
    target = staging_dir / f"{source.name}.{content_sha256[:16]}.{mapping}.parquet"
    if target.exists():
        if on_bytes:
            on_bytes((STAGING_PASSES - 1) * source.stat().st_size)
        return target, content_sha256
    schema = _staging_schema(source, fmt, columns, on_bytes)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batch: list[dict[str, Any]] = []
            for record in iter_records(source, fmt, on_bytes):
                batch.append(_staging_row(record, schema, columns))
                if len(batch) == _STAGING_BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))

    try:
        atomic_write(target, write)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:
        raise CapsfusError(f"{source}: its records could not be staged as parquet ({exc})") from exc
    return target, content_sha256


def check_readable(path: Path) -> None:
    if not path.exists():
        raise CapsfusError(f"{path}: no such input file")
    if not os.access(path, os.R_OK) or path.is_dir():
        raise CapsfusError(f"{path}: not a readable file")
