"""One writer per shard: a lease file with the holder's job id, host and pid, kept alive by a heartbeat.

Taken before a worker touches a shard's progress record: the holder's record is written to a file
of its own and hard-linked to the lease name, so the lease appears whole or not at all and a link
succeeds for one taker only (os.link is the exclusive create that NFS and Lustre keep). The
holder is that file (its inode), not a pid: whoever finds another file under the name has lost
the shard. A thread moves the file's modification time, the heartbeat, every quarter of
CAPSFUS_LEASE_TIMEOUT_S (default 600 s) while the worker lives, however long a chunk takes; at
every commit the worker checks the lease is still its file and stops before committing if not.

A lease is stale when its heartbeat is older than the timeout, when its process on this host is
gone, or when our own job id holds it (the same task before SLURM requeued it, from a node that
failed). A stale lease is renamed aside and the shard taken again; if what was renamed is not the
file judged stale (another taker replaced it in between), it is linked back, so two takers of one
stale lease do not both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CapsfusError
from .process import alive

TIMEOUT_ENV = "CAPSFUS_LEASE_TIMEOUT_S"
HELD_CHECKS = 5  # over 0.8 s, while the lease file is missing
log = logging.getLogger(__name__)


class LeaseLost(CapsfusError):
    """Another writer holds the shard now: the loser must not write its progress record."""


def timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "600"))


@dataclass(frozen=True)
class Lease:
    shard: int
    job_id: str | None
    host: str
    pid: int
    heartbeat: float  # when the holder last showed it lives: read from the file's modification time
    taken_at: float | None = None  # when it was taken (by a process that had started by then)

    def describe(self) -> str:
        return (f"job {self.job_id or '(local)'} on {self.host} (pid {self.pid}, "
                f"heartbeat {time.time() - self.heartbeat:.0f} s ago)")


def _read(path: Path) -> tuple[Lease, int] | None:
    """The lease under `path` and the file it is (its inode), or None if there is none."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        lease = Lease(**{**json.loads(text.decode()), "heartbeat": info.st_mtime})
    except (ValueError, TypeError):  # not ours, or hand-edited: it lives as long as its heartbeat
        lease = Lease(-1, None, "?", -1, info.st_mtime)
    return lease, info.st_ino


def abandoned(path: Path) -> Lease | None:
    """The shard's lease if its holder stopped renewing it (heartbeat older than the timeout):
    whatever the scheduler can say, that writer is gone."""
    found = _read(path)
    return found[0] if found is not None and _expired(found[0]) else None


def _expired(lease: Lease) -> bool:
    return time.time() - lease.heartbeat > timeout_s()


def _stale(lease: Lease, job_id: str | None) -> bool:
    if _expired(lease):
        return True
    if job_id is not None and lease.job_id == job_id:
        return True  # our own task before SLURM requeued it (after a node failure, say)
    return lease.host == socket.gethostname() and not alive(lease.pid, lease.taken_at)


class ShardLease:
    def __init__(self, path: Path, shard: int, job_id: str | None):
        self.path = path
        self.mine = Lease(shard, job_id, socket.gethostname(), os.getpid(), time.time(), time.time())
        self._fd: int | None = None  # the holder's file, open while held
        self._inode = -1
        self._released = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> ShardLease:
        """Take the lease, or raise naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        own = self.path.with_name(f".{self.path.name}.{self.mine.host}-{self.mine.pid}-{id(self)}.new")
        fd = os.open(own, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        try:
            holder = {key: value for key, value in asdict(self.mine).items() if key != "heartbeat"}
            os.write(fd, json.dumps(holder).encode())
            os.fsync(fd)
            for _ in range(3):
                try:
                    os.link(own, self.path)
                except FileExistsError:
                    self._set_aside_if_stale()
                    continue
                self._fd, self._inode = fd, os.fstat(fd).st_ino
                break
            else:
                raise CapsfusError(f"shard {self.mine.shard}: could not take the lease {self.path}; try again")
        finally:
            own.unlink(missing_ok=True)
            if self._fd is None:
                os.close(fd)
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{self.mine.shard}", daemon=True)
        self._heartbeat.start()
        return self

    def _set_aside_if_stale(self) -> None:
        found = _read(self.path)
        if found is None:
            return  # given back meanwhile: link again
        holder, inode = found
        if not _stale(holder, self.mine.job_id):
            raise CapsfusError(f"shard {self.mine.shard} is being written by {holder.describe()}; "
                               f"this task leaves it alone (lease {self.path})")
        aside = self.path.with_name(f"{self.path.name}.stale-{self.mine.host}-{self.mine.pid}")  # ours alone
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker set it aside first
        if os.stat(aside).st_ino != inode:  # a lease another taker made since we looked: not ours to end
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass  # a third lease is there already; the one we moved finds out at its next renew
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        interval = min(60.0, max(0.1, timeout_s() / 4))
        while not self._released.wait(interval):
            try:
                os.utime(self._fd, (time.time(), time.time()))
            except OSError as exc:  # a file server hiccup: the next beat may pass, renew() decides
                log.warning("shard %d: lease heartbeat failed: %s", self.mine.shard, exc)

    def _held(self) -> bool:
        """Whether our file is under the lease name. Opened, not stat'ed: an open makes NFS look the
        name up again. Gone for a moment is asked again: a taker that set our lease aside by
        mistake links it back at once."""
        for check in range(HELD_CHECKS):
            try:
                with open(self.path, "rb") as handle:
                    return os.fstat(handle.fileno()).st_ino == self._inode
            except FileNotFoundError:
                if check + 1 < HELD_CHECKS:
                    time.sleep(0.2)
        return False

    def renew(self) -> None:
        """Check the lease is still ours and move its heartbeat; raise if it was taken over."""
        if not self._held():
            found = _read(self.path)
            taken = found[0].describe() if found else "nobody (the lease file is gone)"
            raise LeaseLost(f"shard {self.mine.shard}: the lease was taken over by {taken}; "
                            "this task stops without committing more")
        os.utime(self._fd, (time.time(), time.time()))

    def release(self) -> None:
        self._released.set()
        if self._heartbeat is not None:
            self._heartbeat.join()  # before the file is closed: its number may name another file next
        if self._held():
            self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
