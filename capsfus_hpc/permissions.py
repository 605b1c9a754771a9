"""Safety on a shared cluster: a task unpickles what it finds in its folder, so nobody but the
owner may write there. Everything we create is kept free of group and other write
(`restrict_umask`), and a task refuses to start from a folder that others can write: the sbatch
script checks before Python unpickles anything (`guard_command`), and the worker checks again.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .errors import CapsfusError

SHARED_WRITE = 0o022
REFUSED_EXIT = 3


def restrict_umask() -> None:
    """Files and folders created from now on are not writable by group or others."""
    os.umask(os.umask(0) | SHARED_WRITE)


def writable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & SHARED_WRITE)


def refusal(folder: Path) -> str:
    return (f"refusing to start: {folder} is writable by group or others (mode "
            f"{oct(folder.stat().st_mode & 0o777)}), and a task runs the pickled job it finds there; "
            f"run: chmod go-w {shlex.quote(str(folder))}")


def check_folders(*folders: Path) -> None:
    """Raise if one of the folders (that exists) can be written by group or others."""
    for folder in folders:
        if folder.exists() and writable_by_others(folder):
            raise CapsfusError(refusal(folder))


def guard_command(folder: str) -> str:
    """A shell line for the sbatch script: exit before anything is unpickled if the job folder
    or the folder holding it can be written by group or others."""
    quoted = [shlex.quote(folder), shlex.quote(str(Path(folder).parent))]
    return (f"for d in {' '.join(quoted)}; do if [ -n \"$(find \"$d\" -maxdepth 0 -perm /022)\" ]; then "
            f"echo \"capsfus-hpc: refusing to start: $d is writable by group or others; run: chmod go-w $d\" >&2; "
            f"exit {REFUSED_EXIT}; fi; done")
