"""Replacing a final folder's dataset with the one a reduce staged in FINAL/.reduce/dataset/.

Assemble writes the whole new dataset there, so a reduce that fails (a damaged part, a full
disk, a killed task) leaves the earlier dataset in FINAL whole, stats.json included. Only a
reduce that succeeded moves its files up, by renames within one file system, in this order:
  1. the earlier stats.json goes: from here FINAL reads as an unfinished reduce, never as a
     complete dataset that mixes two reduces;
  2. the earlier files the new dataset does not replace go (data files past its count, a
     duplicates.parquet it does not write);
  3. each new file but stats.json is renamed over its name, and FINAL is fsynced;
  4. stats.json is renamed in, and FINAL fsynced: the new dataset is complete.
A crash between 1 and 4 leaves FINAL without stats.json; the next reduce of the run replaces it
(check_final reads the run from the plan, still in .reduce/).
"""

from __future__ import annotations

import os

from . import faults
from .atomic import fsync_dir
from .errors import CapsfusError
from .paths import DatasetPaths, ReducePaths


def published_names(final: DatasetPaths) -> set[str]:
    """The dataset files in FINAL (an earlier reduce's, or what a crash midway through publishing left)."""
    named = (final.rejects, final.duplicates, final.card, final.stats)
    return {p.name for p in final.data_files()} | {p.name for p in named if p.exists()}


def last_published_at(final: ReducePaths) -> float | None:
    """When the dataset now in FINAL was published (its stats.json's time), even while a later
    reduce into FINAL runs; None where there is none."""
    try:
        return final.stats.stat().st_mtime
    except FileNotFoundError:
        return None


def published_at(final: ReducePaths) -> float | None:
    """When the dataset in FINAL was published, or None where there is none or a reduce into
    FINAL has not finished (its plan is still there: the stats.json may be an earlier one's)."""
    when = last_published_at(final)
    return None if when is None or final.plan.exists() else when


def publish(staged: DatasetPaths, final: DatasetPaths) -> list[str]:
    """Move the staged dataset into FINAL in the order above; returns the names moved."""
    new = sorted(p.name for p in staged.root.iterdir() if p.is_file() and not p.name.startswith("."))
    if final.stats.name not in new:
        raise CapsfusError(f"internal error: {staged.root} holds no {final.stats.name} to publish")
    final.stats.unlink(missing_ok=True)
    fsync_dir(final.root)
    for name in sorted(published_names(final) - set(new)):
        (final.root / name).unlink()
    for count, name in enumerate(n for n in new if n != final.stats.name):
        os.replace(staged.root / name, final.root / name)
        if count == 0:
            faults.reached("publish")
    fsync_dir(final.root)
    os.replace(staged.stats, final.stats)
    fsync_dir(final.root)
    return new
