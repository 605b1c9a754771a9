"""Cluster profiles: TOML files in capsfus_hpc/cluster_profiles/ (package data, so an installed
wheel has them too) with sbatch resources and generation settings that suit one GPU type.
Options given on the command line override them."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CapsfusError

# CAPSFUS_PROFILE_DIR points at a site's own folder of profiles instead.
PROFILE_DIR = Path(__file__).resolve().parent / "cluster_profiles"
SLURM_KEYS = {"partition", "account", "qos", "time", "gpus", "cpus", "mem", "constraint"}
GENERATION_KEYS = {"batch_size", "batch_tokens", "window_rows", "dtype"}
COUNTS = {"gpus": 0, "cpus": 1, "batch_size": 1, "batch_tokens": 1, "window_rows": 1}  # whole numbers, at least this
TOP_LEVEL_KEYS = ("description",)


@dataclass(frozen=True)
class Profile:
    name: str
    slurm: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)


def profile_dir() -> Path:
    return Path(os.environ.get("CAPSFUS_PROFILE_DIR", PROFILE_DIR))


def profile_names() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.toml"))


def load_profile(name: str) -> Profile:
    """A profile by name (e.g. H100-80G) or by path to a .toml file."""
    path = Path(name) if name.endswith(".toml") else profile_dir() / f"{name}.toml"
    if not path.exists():
        raise CapsfusError(f"no cluster profile '{name}' (known: {', '.join(profile_names()) or 'none'} "
                           f"in {profile_dir()})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CapsfusError(f"{path}: invalid TOML: {exc}") from exc
    # A misspelt section or a key outside one would otherwise be dropped without a word.
    sections = {"slurm": SLURM_KEYS, "generation": GENERATION_KEYS}
    unknown = sorted(set(data) - {*sections, *TOP_LEVEL_KEYS})
    unknown += [f"{section}.{key}" for section, keys in sections.items()
                for key in sorted(set(_table(data, section, path)) - keys)]
    if unknown:
        raise CapsfusError(f"{path}: unknown keys {', '.join(unknown)} (known: [slurm] {', '.join(sorted(SLURM_KEYS))}; "
                           f"[generation] {', '.join(sorted(GENERATION_KEYS))}; top level: {', '.join(TOP_LEVEL_KEYS)})")
    for section in sections:
        for key, value in _table(data, section, path).items():
            if problem := _bad_value(key, value):
                raise CapsfusError(f"{path}: [{section}] {key} = {value!r}: {problem}")
    return Profile(path.stem, data.get("slurm", {}), data.get("generation", {}))


def _bad_value(key: str, value) -> str | None:
    if key in COUNTS:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        return f"must be at least {COUNTS[key]}" if value < COUNTS[key] else None
    if not isinstance(value, str):
        return 'must be text, in quotes (e.g. time = "04:00:00")' if key == "time" else "must be text, in quotes"
    return None


def _table(data: dict, section: str, path: Path) -> dict:
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise CapsfusError(f"{path}: '{section}' must be a [{section}] table")
    return table
