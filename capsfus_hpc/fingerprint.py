"""File fingerprints: size, mtime and a hash of the parquet footer (or of a staged source's
content), so that an input changed after the manifest was built is detected cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import sha256_bytes
from .errors import CapsfusError


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's content cheaply: a later change to any of these is detected."""

    size: int
    mtime_ns: int
    footer_sha256: str | None = None  # parquet only
    content_sha256: str | None = None  # staged sources only

    def as_dict(self) -> dict:
        return asdict(self)


def parquet_fingerprint(path: Path) -> Fingerprint:
    stat = path.stat()
    with open(path, "rb") as handle:
        handle.seek(max(stat.st_size - 8, 0))
        tail = handle.read(8)
        if len(tail) != 8 or tail[4:] != b"PAR1":
            raise CapsfusError(f"{path}: not a parquet file (no PAR1 footer)")
        footer_length = int.from_bytes(tail[:4], "little")
        handle.seek(max(stat.st_size - 8 - footer_length, 0))
        footer = handle.read(footer_length + 8)
    return Fingerprint(size=stat.st_size, mtime_ns=stat.st_mtime_ns, footer_sha256=sha256_bytes(footer))


def stat_fingerprint(path: Path, content_sha256: str | None = None) -> Fingerprint:
    stat = path.stat()
    return Fingerprint(size=stat.st_size, mtime_ns=stat.st_mtime_ns, content_sha256=content_sha256)


def read_footer(path: Path) -> pq.FileMetaData:
    """The parquet footer, or an error that names the file."""
    try:
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise CapsfusError(f"{path}: unreadable parquet file: {exc}") from exc
