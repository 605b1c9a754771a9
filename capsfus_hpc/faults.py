"""Fault injection for tests, through the CAPSFUS_FAULT environment variable (unset in real runs).

  CAPSFUS_FAULT=sleep_per_window:SECONDS   sleep after each window, as a slow model would

It travels to SLURM tasks with the submitting environment (sbatch --export=ALL, the default).
"""

from __future__ import annotations

import os
import time

FAULT_ENV = "CAPSFUS_FAULT"


def _value(name: str) -> str | None:
    for item in os.environ.get(FAULT_ENV, "").split(","):
        key, _, value = item.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def after_window() -> None:
    seconds = _value("sleep_per_window")
    if seconds:
        time.sleep(float(seconds))
