"""The embedded demo: the whole flow on made-up captions with the smoke model.

It calls the same commands a user types, and prints each as a command line to copy.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from . import cli
from .display import safe
from .errors import CapsfusError
from .examples import write_example_parquet
from .reduce import DATA_FILE

MARKER = ".capsfus-demo"
DEMO_ROWS = 200
DEMO_ROWS_PER_SHARD = 50


def _prepare(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise CapsfusError(f"{folder} exists and is not a demo folder; give the demo an empty or new folder")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by capsfus-hpc demo; removed and remade by the next demo here\n")


def run_demo(folder: Path, console: Console) -> None:
    folder = folder.absolute()
    _prepare(folder)
    model, inputs = folder / "smoke-model", folder / "inputs" / "examples.parquet"
    manifest, run, final = folder / "manifests" / "demo.json", folder / "run", folder / "final"

    def step(*words: object) -> None:
        console.print(f"\n[bold]$ capsfus-hpc {safe(shlex.join(str(w) for w in words))}[/]")

    step("smoke-model", model)
    cli.smoke_model(model)
    write_example_parquet(inputs, DEMO_ROWS, row_group_rows=DEMO_ROWS_PER_SHARD)
    console.print(f"wrote {DEMO_ROWS} made-up caption pairs to {safe(inputs)}")
    step("manifest", "build", inputs, "-o", manifest, "--rows-per-shard", DEMO_ROWS_PER_SHARD)
    cli.manifest_build([inputs], manifest, rows_per_shard=DEMO_ROWS_PER_SHARD)
    step("submit", manifest, "--output", run, "--model", model, "--local", "--workers", 2)
    cli.submit(manifest, run, str(model), local=True, workers=2)
    step("status", run)
    cli.status(run)
    step("reduce", run, "--final", final)
    cli.reduce(run, final)
    sample = pq.read_table(final / DATA_FILE, columns=["laion_2b", "fused_caption"]).slice(0, 3).to_pylist()
    console.print("\nfirst fused captions (the smoke model writes gibberish; a real model writes sentences):")
    for row in sample:
        console.print(f"  {safe(row['laion_2b'])!s:60.60}  ->  {safe(row['fused_caption'])}")
    console.print(f"\nfinal dataset in {safe(final)} (see stats.json and rejects.parquet)")
