"""Durable writes: readers never see a half-written file.

Every durable file is written to a temporary name in its own folder, flushed and fsynced,
renamed over the final name, and then the folder itself is fsynced so the rename survives
a power loss. Callers that commit several files order their calls; see worker.commit_chunk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CapsfusError


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode open() gives a new file, 0o666 less the umask, and never writable by group or
    others (permissions.py says why). mkstemp's 0o600 would hide a finished dataset from the
    rest of the group."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o644 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # no /proc: read the umask by setting it (briefly stricter, never laxer)
    os.umask(mask)
    return 0o644 & ~mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to fill (by a streaming writer, say); on success it replaces `path` durably,
    with the mode a plainly created file would have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise CapsfusError(f"no space left on the device while writing {path}") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary file, then move it over `path` durably."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: Path, data: bytes, midway: Callable[[], None] | None = None) -> None:
    """`midway` runs with half the bytes written: where fault tests crash a write."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data[: len(data) // 2])
            if midway:
                handle.flush()
                midway()
            handle.write(data[len(data) // 2:])

    atomic_write(path, write)


def atomic_write_json(path: Path, document: Any) -> None:
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's SHA-256; on_bytes gets the size of each block as it is read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if on_bytes:
                on_bytes(len(block))
    return digest.hexdigest()
