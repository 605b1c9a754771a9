"""run.json: the settings a run folder is frozen with.

The first command against a folder writes them; every later command passes only the options
the user gave, which must equal the frozen ones (anything not given is inherited). A change of
package version is allowed and reported, since it cannot change what a committed part holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_write_json
from .errors import CapsfusError
from .manifest import Manifest, load_manifest, manifest_sha256
from .paths import RunPaths
from .prompt import template_sha256

DEFAULT_CHUNK_ROWS = 2048
DEFAULT_BATCH_SIZE = 16
DEFAULT_WINDOW_ROWS = 256


@dataclass(frozen=True)
class RunSettings:
    manifest: str
    manifest_sha256: str
    model: str
    model_revision: str | None
    prompt_template_sha256: str
    columns: dict
    num_beams: int = 3
    max_new_tokens: int = 80
    max_prompt_tokens: int = 256
    dtype: str = "auto"  # bf16 on GPU, fp32 on CPU
    device_map: str | None = "auto"  # used on GPU only, through accelerate
    batch_size: int = DEFAULT_BATCH_SIZE
    # With it, a batch holds as many length-sorted prompts as fit: prompts x (longest prompt +
    # max_new_tokens) x num_beams <= batch_tokens; batch_size still caps the count. None: on a
    # GPU, what fits in its free memory (batching.py), on CPU no budget.
    batch_tokens: int | None = None
    prefix_cache: bool = True  # compute the instruction's keys and values once per task (prefix_cache.py)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    window_rows: int = DEFAULT_WINDOW_ROWS  # rows sorted and batched together; the unit of an early stop
    max_caption_chars: int = 4000
    trust_remote_code: bool = False
    package_version: str = __version__

    def __post_init__(self):
        for name in AT_LEAST_ONE:
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise CapsfusError(f"{name} must be a whole number of at least 1, not {value!r} "
                                   f"(--{name.replace('_', '-')}, a profile or run.json)")
        if self.dtype not in DTYPES:
            raise CapsfusError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)} (--dtype, a profile or run.json)")

    def as_dict(self) -> dict:
        return asdict(self)


AT_LEAST_ONE = ("num_beams", "max_new_tokens", "max_prompt_tokens", "batch_size", "batch_tokens", "chunk_rows",
                "window_rows", "max_caption_chars")
DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")  # engine._dtype maps them

# Options a user may pass to a run command; None means "not given".
TUNABLE = ("num_beams", "max_new_tokens", "max_prompt_tokens", "dtype", "device_map", "batch_size", "batch_tokens",
           "prefix_cache", "chunk_rows", "window_rows", "max_caption_chars", "trust_remote_code")


SAMPLE_BYTES = 2**20


def cached_commit(model: str, revision: str | None) -> str | None:
    """The commit of the hub model's snapshot in the local Hugging Face cache that `revision` (a
    branch, tag or commit; None: main) names there, or None where the cache holds none."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except (ValueError, OSError):  # not a hub id (the loader names the problem), or an unreadable cache
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def model_revision(model: str, revision: str | None) -> str | None:
    """A hub id is pinned to the commit its cached snapshot has (so every task loads that one, however
    the hub's branch moves later), else keeps the user's revision; a local folder is identified by
    its files: names and sizes, JSON files whole, and the first and last MiB of the others (weights
    re-saved at the same size differ there; reading them whole would take minutes for a 13B model
    at every resume)."""
    folder = Path(model)
    if not folder.is_dir():
        return cached_commit(model, revision) or revision
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}\n".encode())
            with path.open("rb") as handle:
                if path.suffix == ".json" or size <= 2 * SAMPLE_BYTES:
                    digest.update(handle.read())
                else:
                    digest.update(handle.read(SAMPLE_BYTES))
                    handle.seek(-SAMPLE_BYTES, 2)
                    digest.update(handle.read())
    return "local:" + digest.hexdigest()[:16]


def requested_settings(manifest_path: Path, model: str, revision: str | None, **options: Any) -> RunSettings:
    """Settings for a new run: defaults, overridden by whatever the user gave."""
    manifest_path = manifest_path.absolute()
    manifest = load_manifest(manifest_path)
    if not Path(model).exists() and model.startswith(("/", "./", "../", "~")):  # a path, not a hub id
        raise CapsfusError(f"--model {model}: no such folder")
    if Path(model).exists() and not (Path(model) / "config.json").is_file():  # else every task fails loading it
        what = "a folder without config.json" if Path(model).is_dir() else "a file"
        raise CapsfusError(f"--model {model}: {what}, not a model folder (one that save_pretrained wrote, "
                           "with config.json, the weights and the tokenizer)")
    model_id = str(Path(model).absolute()) if Path(model).exists() else model
    unknown = set(options) - set(TUNABLE)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    return RunSettings(
        manifest=str(manifest_path),
        manifest_sha256=manifest_sha256(manifest_path),
        model=model_id,
        model_revision=model_revision(model_id, revision),
        prompt_template_sha256=template_sha256(),
        columns=manifest.columns.as_dict(),
        **given,
    )


def differences(frozen: RunSettings, requested: RunSettings, given: set[str]) -> list[str]:
    """Fields where the request contradicts the frozen run; only given options are compared."""
    always = {"manifest", "manifest_sha256", "model", "model_revision", "prompt_template_sha256", "columns"}
    lines = []
    for field in fields(RunSettings):
        name = field.name
        if name in always or name in given:
            old, new = getattr(frozen, name), getattr(requested, name)
            if old != new:
                lines.append(f"{name}: run has {old!r}, this command asks for {new!r}")
    return lines


def open_or_create(paths: RunPaths, requested: RunSettings, given: set[str], write: bool = True) -> RunSettings:
    """The run's settings: created on first use (unless write is off, for a dry run), afterwards
    checked against the request."""
    if not paths.run_config.exists():
        if write:
            paths.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            atomic_write_json(paths.run_config, requested.as_dict())
        return requested
    frozen = load_settings(paths)
    problems = differences(frozen, requested, given)
    if problems:
        raise CapsfusError(
            f"{paths.run_config} was created with other settings; use a new --output folder or the same options:\n  "
            + "\n  ".join(problems)
        )
    return frozen


def refuse_drift(settings: RunSettings) -> None:
    """Refuse to fuse with a model folder or prompt template other than the ones run.json froze:
    parts of one run must come from one model and one prompt. A hub id is checked by its
    revision only (None: whatever the hub serves; give --revision a commit to pin it)."""
    template = template_sha256()
    if template != settings.prompt_template_sha256:
        raise CapsfusError(f"this capsfus-hpc's prompt template (sha256 {template[:16]}) is not the one the "
                           f"run was frozen with ({settings.prompt_template_sha256[:16]}); finish the run with the "
                           "capsfus-hpc that started it, or start a new --output folder")
    if not (settings.model_revision or "").startswith("local:"):
        return
    if not Path(settings.model).is_dir():
        raise CapsfusError(f"the run's model folder {settings.model} is gone")
    now = model_revision(settings.model, None)
    if now != settings.model_revision:
        raise CapsfusError(f"the run's model folder {settings.model} changed since the run started (run.json has "
                           f"{settings.model_revision}, its files now give {now}); put the files back, or fuse with "
                           "the new model into a new --output folder")


def load_settings(paths: RunPaths) -> RunSettings:
    try:
        data = json.loads(paths.run_config.read_text())
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CapsfusError(f"{paths.root}: not a run folder (no run.json); start one with 'capsfus-hpc submit'") from exc
    except json.JSONDecodeError as exc:
        raise CapsfusError(f"{paths.run_config}: invalid JSON: {exc}") from exc
    required = {f.name for f in fields(RunSettings) if f.default is MISSING and f.default_factory is MISSING}
    if not isinstance(data, dict) or required - set(data):
        lacking = sorted(required - set(data)) if isinstance(data, dict) else "everything: it is not an object"
        raise CapsfusError(f"{paths.run_config}: not a run's settings (lacks {lacking}); it was edited or written by "
                           "something else, and the run cannot go on from it")
    known = {f.name for f in fields(RunSettings)}
    return RunSettings(**{k: v for k, v in data.items() if k in known})


def load_run(paths: RunPaths) -> tuple[RunSettings, Manifest]:
    """The frozen settings and the manifest they name, refusing a manifest changed since."""
    settings = load_settings(paths)
    manifest_path = Path(settings.manifest)
    if not manifest_path.exists():
        raise CapsfusError(f"the run's manifest {manifest_path} is gone")
    if manifest_sha256(manifest_path) != settings.manifest_sha256:
        raise CapsfusError(f"the run's manifest {manifest_path} changed since the run started (its sha256 was "
                           f"{settings.manifest_sha256[:12]}...); put that manifest back, or start a new run "
                           "from the new one with 'capsfus-hpc submit' and a new --output folder")
    return settings, load_manifest(manifest_path)
