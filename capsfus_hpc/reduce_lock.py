"""One reduce at a time per final folder.

Two reduces into one folder would mix their key spills, plans and staged files. A reduce is refused while
  - another process holds the folder's lock: a flock on FINAL/.reduce/lock, which a local reduce
    holds from its checks to its last file, and `reduce --slurm` until its jobs are in the
    ledger (`submit --then-reduce` only checks that nobody holds it); or
  - the run's ledger names a reduce job into the folder that SLURM still has queued or running
    (`submit --then-reduce`, or any stage of `reduce --slurm`), other than the job asking, or
    whose state SLURM could not give (squeue did not answer).
The lock is a regular file opened for writing, as NFS needs for an exclusive flock. Its holder
removes it on the way out, while still holding it; a taker that finds the file it locked gone or
replaced takes the new one. Where the file system has no flock at all (Lustre mounted without
`-o flock`), a warning says so and only the ledger check holds: two local reduces started at once
on two hosts are then not told apart.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CapsfusError
from .ledger import job_of
from .paths import ReducePaths
from .scheduler import UNANSWERED, ReduceJobState

log = logging.getLogger(__name__)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


@contextmanager
def hold_final(folder: Path) -> Iterator[None]:
    """Hold the final folder (made if missing, and removed again if still empty on the way out)."""
    final = ReducePaths(folder)
    refuse_not_folder(folder)
    created = not final.root.exists()
    final.work.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        fd = _lock(final)
        yield
    finally:
        if fd is not None and _is_file(fd, final.lock):
            final.lock.unlink()  # still held: a taker that opened it finds it gone and opens a new one
        for empty in (final.work, final.root) if created else (final.work,):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
        if fd is not None:
            os.close(fd)  # gives the lock back


def refuse_held(folder: Path) -> None:
    """Refuse if a reduce holds the folder now; makes nothing (`submit --then-reduce`, dry runs too)."""
    refuse_not_folder(folder)
    lock = ReducePaths(folder).lock
    try:
        fd = os.open(lock, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return  # a holder makes the file before it locks it: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused only while a holder has it exclusively
    except BlockingIOError:
        raise CapsfusError(f"a reduce is writing {folder} right now (its lock {lock} is held); wait for it to "
                           "end before submitting with --then-reduce into it") from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
    finally:
        os.close(fd)


def refuse_not_folder(folder: Path) -> None:
    """Refuse a final folder that is, or lies under, a file or a link to nothing (a folder yet to be made is fine)."""
    for path in (folder, *folder.parents):
        if path.is_dir():
            return
        if path.is_symlink():
            raise CapsfusError(f"final folder {folder}: {path} is a link to {os.readlink(path)}, which does not exist; "
                               "make its target, or name another --final folder")
        if path.exists():
            raise CapsfusError(f"final folder {folder}: {path} is a file, not a folder; name another --final folder")


def _lock(final: ReducePaths) -> int | None:
    """The descriptor holding FINAL/.reduce/lock, or None where the file system takes no locks."""
    for _ in range(3):
        fd = os.open(final.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CapsfusError(f"another reduce is writing {final.root} right now (a local reduce, or the "
                               "submission of a --slurm one); wait for it to end") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            log.warning("%s: the file system takes no locks (%s); a second reduce into it started now is not "
                        "refused", final.root, os.strerror(exc.errno))
            return None
        if _is_file(fd, final.lock):
            return fd
        os.close(fd)  # its holder removed it as it finished: take the new one
    raise CapsfusError(f"could not take the lock {final.lock}: other reduces keep taking it; try again")


def _is_file(fd: int, path: Path) -> bool:
    """Whether the descriptor is still the file at `path` (not removed or replaced since it was opened)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def own_job_id() -> str | None:
    """The SLURM job this process runs in, as the ledger names jobs (an array's job id)."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def active_reduces(final: Path, jobs: tuple[ReduceJobState, ...], own_job: str | None) -> list[ReduceJobState]:
    """Pure: the reduce jobs into `final` that SLURM has queued or running, or could not say of,
    other than `own_job`."""
    target = Path(final).resolve()
    return [job for job in jobs if job.final is not None and Path(job.final).resolve() == target
            and (job.active or UNANSWERED in job.states) and job_of(job.job_id) != own_job]


def refuse_active_reduce(final: Path, jobs: tuple[ReduceJobState, ...]) -> None:
    if active := active_reduces(final, jobs, own_job_id()):
        described = ", ".join(f"{job.stage or 'reduce'} job {job.job_id} ({', '.join(sorted(job.states))})"
                              for job in active)
        unknown = " (or SLURM did not answer whether it is)" if any(UNANSWERED in job.states for job in active) else ""
        raise CapsfusError(f"a reduce into {final} is still queued or running{unknown}: {described}; wait for it, "
                           f"or scancel {' '.join(sorted({job_of(job.job_id) for job in active}))}")
