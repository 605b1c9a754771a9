"""One reduce at a time per final folder.

Two reduces into one folder would mix their key spills and plans. A reduce is refused while
  - another process holds the folder's lock: a flock on the folder itself, which a local reduce
    holds from its checks to its last file, and `reduce --slurm` until its jobs are in the
    ledger; or
  - the run's ledger names a reduce job into the folder that SLURM still has queued or running
    (`submit --then-reduce`, or any stage of `reduce --slurm`), other than the job asking.
Where the file system has no flock (some NFS and Lustre mounts), only the second check holds:
two local reduces started at once on two hosts are then not told apart.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CapsfusError
from .scheduler import ReduceJobState


@contextmanager
def hold_final(folder: Path) -> Iterator[None]:
    """Hold the final folder (made if missing, and removed again if still empty on the way out)."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CapsfusError(f"another reduce is writing {folder} right now (a local reduce, or the submission "
                               "of a --slurm one); wait for it to end") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # gives the lock back
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def own_job_id() -> str | None:
    """The SLURM job this process runs in, as the ledger names jobs (an array's job id)."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def active_reduces(final: Path, jobs: tuple[ReduceJobState, ...], own_job: str | None) -> list[ReduceJobState]:
    """Pure: the reduce jobs into `final` that SLURM has queued or running, other than `own_job`."""
    target = Path(final).resolve()
    return [job for job in jobs if job.final is not None and Path(job.final).resolve() == target and job.active
            and job.job_id.split("_")[0] != own_job]


def refuse_active_reduce(final: Path, jobs: tuple[ReduceJobState, ...]) -> None:
    if active := active_reduces(final, jobs, own_job_id()):
        described = ", ".join(f"{job.stage or 'reduce'} job {job.job_id} ({', '.join(sorted(job.states))})"
                              for job in active)
        raise CapsfusError(f"a reduce into {final} is still queued or running: {described}; wait for it, "
                           f"or scancel {' '.join(sorted({job.job_id.split('_')[0] for job in active}))}")
