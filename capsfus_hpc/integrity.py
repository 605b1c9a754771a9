"""Committed parts against their checksums: a part truncated, bit-flipped or deleted on disk
after its commit is found here, by size and sha256 against the progress record; a deleted one
also by a listing of its shard's folder, which reads no part."""

from __future__ import annotations

import os

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


def missing_chunks(paths: RunPaths, record: ProgressRecord) -> list[ChunkRecord]:
    """The committed chunks whose part is not in its shard's folder (one listing, no part read)."""
    if not record.chunks:
        return []
    try:
        names = set(os.listdir(paths.shard_dir(record.shard)))
    except FileNotFoundError:
        names = set()
    return [chunk for chunk in record.chunks if paths.part(record.shard, chunk.index).name not in names]


def damage_report(paths: RunPaths, record: ProgressRecord, damaged: list[ChunkRecord],
                  what: str = "the part on disk does not match its checksum") -> str:
    chunks = ", ".join(f"chunk {c.index} (rows {c.row_id_start}-{c.row_id_stop - 1})" for c in damaged)
    return f"{chunks} of shard {record.shard}: {what}; capsfus-hpc resume {paths.root} regenerates only these"
