"""One writer per shard: an exclusive lease file with the holder's job id, host, pid and heartbeat.

Taken with O_CREAT|O_EXCL before a worker touches a shard's progress record; renewed at every
commit, where a worker that finds the lease no longer its own stops before committing; given
back when the shard ends. A lease whose heartbeat is older than CAPSFUS_LEASE_TIMEOUT_S
(default 600 s), whose process on this host is gone, or that our own job id holds (the same
task before SLURM requeued it, from a node that failed), is stale: it is renamed aside (a rename
succeeds for one taker only) and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import atomic_write_json
from .errors import CapsfusError

TIMEOUT_ENV = "CAPSFUS_LEASE_TIMEOUT_S"


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
    heartbeat: float

    def describe(self) -> str:
        return (f"job {self.job_id or '(local)'} on {self.host} (pid {self.pid}, "
                f"heartbeat {time.time() - self.heartbeat:.0f} s ago)")


def _read(path: Path) -> Lease | None:
    try:
        return Lease(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return Lease(-1, None, "?", -1, 0.0)  # unreadable: a writer died mid-write; stale


def abandoned(path: Path) -> Lease | None:
    """The shard's lease if its holder stopped renewing it (heartbeat older than the timeout):
    whatever the scheduler can say, that writer is gone."""
    lease = _read(path)
    return lease if lease is not None and _expired(lease) else None


def _expired(lease: Lease) -> bool:
    return time.time() - lease.heartbeat > timeout_s()


def _stale(lease: Lease, job_id: str | None) -> bool:
    if _expired(lease):
        return True
    if job_id is not None and lease.job_id == job_id:
        return True  # our own task before SLURM requeued it (after a node failure, say)
    return lease.host == socket.gethostname() and not Path(f"/proc/{lease.pid}").exists()


class ShardLease:
    def __init__(self, path: Path, shard: int, job_id: str | None):
        self.path = path
        self.mine = Lease(shard, job_id, socket.gethostname(), os.getpid(), time.time())

    def acquire(self) -> ShardLease:
        """Take the lease, or raise naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is not None and not _stale(holder, self.mine.job_id):
                    raise CapsfusError(f"shard {self.mine.shard} is being written by {holder.describe()}; "
                                       f"this task leaves it alone (lease {self.path})")
                try:  # stale: set it aside; if another taker was first, the rename fails and we look again
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.stale-{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(asdict(self.mine)))
                handle.flush()
                os.fsync(handle.fileno())
            for aside in self.path.parent.glob(f"{self.path.name}.stale-*"):
                aside.unlink(missing_ok=True)
            return self
        raise CapsfusError(f"shard {self.mine.shard}: could not take the lease {self.path}; try again")

    def renew(self) -> None:
        """Check the lease is still ours and move its heartbeat; raise if it was taken over."""
        holder = _read(self.path)
        if holder is None or (holder.host, holder.pid) != (self.mine.host, self.mine.pid):
            taken = holder.describe() if holder else "nobody (the lease file is gone)"
            raise LeaseLost(f"shard {self.mine.shard}: the lease was taken over by {taken}; "
                            "this task stops without committing more")
        self.mine = Lease(**{**asdict(self.mine), "heartbeat": time.time()})
        atomic_write_json(self.path, asdict(self.mine))

    def release(self) -> None:
        holder = _read(self.path)
        if holder is not None and (holder.host, holder.pid) == (self.mine.host, self.mine.pid):
            self.path.unlink(missing_ok=True)
