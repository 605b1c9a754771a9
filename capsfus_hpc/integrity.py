"""Committed parts against their checksums: a part truncated, bit-flipped or deleted on disk
after its commit is found here, by size and sha256 against the progress record."""

from __future__ import annotations

from .atomic import sha256_file
from .paths import RunPaths
from .progress import ChunkRecord, ProgressRecord


def damaged_chunks(paths: RunPaths, record: ProgressRecord) -> list[ChunkRecord]:
    """The committed chunks whose part is missing or differs from the record (hashes every part)."""
    damaged = []
    for chunk in record.chunks:
        part = paths.part(record.shard, chunk.index)
        try:
            if part.stat().st_size != chunk.bytes or sha256_file(part) != chunk.sha256:
                damaged.append(chunk)
        except FileNotFoundError:
            damaged.append(chunk)
    return damaged


def damage_report(paths: RunPaths, record: ProgressRecord, damaged: list[ChunkRecord]) -> str:
    chunks = ", ".join(f"chunk {c.index} (rows {c.row_id_start}-{c.row_id_stop - 1})" for c in damaged)
    return (f"{chunks} of shard {record.shard}: the part on disk does not match its checksum; "
            f"capsfus-hpc resume {paths.root} regenerates only these")
