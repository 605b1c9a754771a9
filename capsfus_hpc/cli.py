"""The capsfus-hpc command line: each command parses options, calls one core function, renders."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .columns import ColumnMapping
from .display import row_progress, safe, stats_table, status_table
from .errors import CapsfusError
from .launch import submit_local
from .manifest import DEFAULT_ROWS_PER_SHARD, build_manifest
from .paths import RunPaths
from .reduce import reduce_run
from .settings import load_run, open_or_create, requested_settings
from .status import gather_status
from .worker import run_shards

app = typer.Typer(
    name="capsfus-hpc", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Fuse raw web alt-texts with synthetic captions (CapsFusion) at cluster scale.\n\n"
         "Example: capsfus-hpc demo",
)
manifest_app = typer.Typer(no_args_is_help=True, help="Build manifests: input files cut into shards.")
app.add_typer(manifest_app, name="manifest")
console = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="Run folder (holds run.json, shards/ and logs/).")]
OutputDir = Annotated[Path, typer.Option("--output", "-o", help="Run folder to create or continue.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]


def user_errors(command):
    """Turn the project's errors into one red line and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CapsfusError as exc:
            console.print(f"[red]error:[/] {safe(exc)}", soft_wrap=True)
            raise typer.Exit(1) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            console.print(f"[red]error:[/] {safe(exc.filename or '')}: {safe(exc.strerror)}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def print_json(document) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


@manifest_app.command("build")
@user_errors
def manifest_build(
    inputs: Annotated[list[Path], typer.Argument(help="Parquet, JSON list, JSON Lines or .jsonl.zst files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write, e.g. manifests/laion.json.")],
    rows_per_shard: Annotated[int, typer.Option(help="Rows per shard (snapped to row groups).")] = DEFAULT_ROWS_PER_SHARD,
    raw_column: Annotated[str, typer.Option(help="Column of the raw web caption.")] = "laion_2b",
    synthetic_column: Annotated[str, typer.Option(help="Column of the synthetic caption.")] = "laion_coco",
    key_column: Annotated[Optional[str], typer.Option(help="Column identifying a row, used to deduplicate "
                                                      "[default: image_url, if present].")] = None,
    as_json: JsonFlag = False,
):
    """Cut input files into shards, reading only parquet footers; JSON inputs are staged to parquet once.

    Example: capsfus-hpc manifest build data/*.parquet -o manifests/laion.json --rows-per-shard 50000
    """
    columns = ColumnMapping(raw_column, synthetic_column, key_column or "image_url")
    with row_progress(console, "reading inputs", len(inputs)) as advance:
        seen = []
        manifest = build_manifest(inputs, output, rows_per_shard, columns, key_required=key_column is not None,
                                  on_file=lambda path: (seen.append(path), advance(len(seen))))
    summary = {"manifest": str(output.absolute()), "files": len(manifest.files), "shards": len(manifest.shards),
               "rows": manifest.total_rows, "columns": manifest.columns.as_dict(),
               "staged": [f.path for f in manifest.files if f.source != f.path]}
    if as_json:
        print_json(summary)
    else:
        console.print(f"wrote {safe(output)}: {summary['rows']} rows from {summary['files']} file(s) "
                      f"in {summary['shards']} shard(s)")


@app.command()
@user_errors
def submit(
    manifest: Annotated[Path, typer.Argument(help="Manifest from 'capsfus-hpc manifest build'.")],
    output: OutputDir,
    model: Annotated[str, typer.Option(help="Model folder or hub id, e.g. BAAI/CapsFus-LLaMA.")],
    local: Annotated[bool, typer.Option("--local", help="Run the tasks on this machine (submitit LocalExecutor).")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Model revision (hub models).")] = None,
    num_beams: Annotated[Optional[int], typer.Option("--num-beams", help="Beams [default: 3, as the reference].")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy decoding (same as --num-beams 1).")] = False,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="[default: 80]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Prompts per generate call [default: 16].")] = None,
    chunk_rows: Annotated[Optional[int], typer.Option(help="Rows per committed part [default: 2048].")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")] = None,
    max_caption_chars: Annotated[Optional[int], typer.Option(help="Longer input captions are rejected [default: 4000].")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Run the model repo's own code (off unless asked).")] = None,
    workers: Annotated[int, typer.Option(help="With --local: tasks at once.")] = 1,
    shards_per_task: Annotated[int, typer.Option(help="Shards one task runs in turn.")] = 1,
    as_json: JsonFlag = False,
):
    """Fuse every shard that is not done yet. The run folder freezes the settings on first use.

    Example: capsfus-hpc submit manifests/laion.json -o runs/laion --model BAAI/CapsFus-LLaMA --local
    """
    if not local:
        raise CapsfusError("SLURM submission is not built yet; run on this machine with --local")
    if greedy and num_beams not in (None, 1):
        raise CapsfusError("--greedy and --num-beams disagree; give one of them")
    options = dict(num_beams=1 if greedy else num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   chunk_rows=chunk_rows, dtype=dtype, max_caption_chars=max_caption_chars,
                   trust_remote_code=trust_remote_code)
    paths = RunPaths(output)
    requested = requested_settings(manifest, model, revision, **options)
    open_or_create(paths, requested, {k for k, v in options.items() if v is not None})
    _, run_manifest = load_run(paths)
    with row_progress(console, "fusing", run_manifest.total_rows) as advance:
        shard_ids, outcomes = submit_local(
            paths, shards_per_task, workers, on_poll=lambda: advance(gather_status(paths, run_manifest).rows_done))
    status = gather_status(paths, run_manifest)
    failed = [o for o in outcomes if o.error]
    if as_json:
        print_json({"run": str(paths.root), "shards_run": shard_ids, "status": status.as_dict(),
                    "failed_tasks": [o.__dict__ for o in failed]})
    else:
        console.print(status_table(status, f"run {paths.root}"))
    if failed:
        first = failed[0]
        raise CapsfusError(f"{len(failed)} task(s) failed, first: job {first.job_id} (shards "
                           f"{', '.join(map(str, first.shard_ids))}): {first.error}; see "
                           f"'capsfus-hpc status {paths.root}' and the logs in {paths.logs}")


@app.command()
@user_errors
def work(
    run_dir: RunDir,
    shard: Annotated[list[int], typer.Option("--shard", help="Shard id; repeat for several.")],
):
    """Run shards in the foreground, the way a SLURM task would.

    Example: capsfus-hpc work runs/laion --shard 12
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    done = run_shards(str(run_dir.absolute()), list(shard))
    console.print(f"done: {', '.join(f'shard {s} ({rows} rows)' for s, rows in done.items())}")


@app.command()
@user_errors
def status(run_dir: RunDir, as_json: JsonFlag = False):
    """Per-shard rows done, state (pending, running, done, failed), rate and ETA.

    Example: capsfus-hpc status runs/laion --json
    """
    paths = RunPaths(run_dir)
    _, manifest = load_run(paths)
    run_status = gather_status(paths, manifest)
    if as_json:
        print_json(run_status.as_dict())
    else:
        console.print(status_table(run_status, f"run {paths.root}"))


@app.command()
@user_errors
def reduce(
    run_dir: RunDir,
    final: Annotated[Path, typer.Option("--final", help="Folder for the final dataset.")],
    as_json: JsonFlag = False,
):
    """Reconcile every row, reject invalid ones, deduplicate keys and write the final dataset.

    Example: capsfus-hpc reduce runs/laion --final datasets/laion-capsfusion
    """
    paths = RunPaths(run_dir)
    _, manifest = load_run(paths)
    with row_progress(console, "reducing", manifest.total_rows) as advance:
        done = [0]
        stats = reduce_run(paths, final, on_part=lambda rows: (done.__setitem__(0, done[0] + rows), advance(done[0])))
    if as_json:
        print_json(stats)
    else:
        console.print(stats_table(stats, f"final dataset {final.absolute()}"))


@app.command("smoke-model")
@user_errors
def smoke_model(folder: Annotated[Path, typer.Argument(help="Folder to write the model to.")]):
    """Write a tiny random LLaMA and BPE tokenizer with save_pretrained.

    It writes gibberish: it exists so the real loading and generation code runs anywhere
    without downloading a model (tests, the demo, a CPU rehearsal of a run).

    Example: capsfus-hpc smoke-model /tmp/smoke && capsfus-hpc submit m.json -o run --model /tmp/smoke --local
    """
    from .smoke import build_smoke_model  # torch and transformers load only for commands that need them

    build_smoke_model(folder)
    console.print(f"wrote a smoke model (random weights, gibberish output) to {safe(folder.absolute())}")


@app.command()
@user_errors
def demo(folder: Annotated[Path, typer.Argument(help="Folder for everything the demo makes.")] = Path("capsfus-demo")):
    """Run the whole flow on made-up captions with the smoke model: manifest, local submit, status, reduce.

    Example: capsfus-hpc demo /tmp/capsfus-demo
    """
    from .demo import run_demo

    run_demo(folder, console)


@app.command()
def version():
    """Print the package version."""
    typer.echo(__version__)


def main() -> None:
    app()
