"""The capsfus-hpc command line: each command parses options, calls one core function, renders."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live

from . import __version__
from .columns import ColumnMapping
from .display import row_progress, safe, stats_table, status_table
from .errors import CapsfusError
from .launch import plan_slurm, submit_local, submit_plan
from .manifest import DEFAULT_ROWS_PER_SHARD, build_manifest, load_manifest
from .paths import RunPaths
from .profiles import load_profile
from .reduce import reduce_run
from .settings import load_run, load_settings, open_or_create, requested_settings
from .slurm import DEFAULT_MAX_ARRAY_SIZE, SlurmOptions, max_array_size, sbatch_test_only, slurm_reachable
from .status import FAILED, derive_status, gather_status
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


# Options of the run commands (submit, resume), declared once.
NumBeams = Annotated[Optional[int], typer.Option("--num-beams", help="Beams [default: 3, as the reference].")]
Greedy = Annotated[bool, typer.Option("--greedy", help="Greedy decoding (same as --num-beams 1).")]
MaxNewTokens = Annotated[Optional[int], typer.Option(help="[default: 80]")]
BatchSize = Annotated[Optional[int], typer.Option(help="Prompts per generate call [default: 16, or the profile's].")]
ChunkRows = Annotated[Optional[int], typer.Option(help="Rows per committed part [default: 2048].")]
WindowRows = Annotated[Optional[int], typer.Option(help="Rows sorted and batched together; an early stop commits whole windows [default: 256].")]
Dtype = Annotated[Optional[str], typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")]
MaxCaptionChars = Annotated[Optional[int], typer.Option(help="Longer input captions are rejected [default: 4000].")]
TrustRemoteCode = Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Run the model repo's own code (off unless asked).")]
Local = Annotated[bool, typer.Option("--local", help="Run the tasks on this machine (submitit LocalExecutor).")]
Workers = Annotated[int, typer.Option(help="With --local: tasks at once.")]
ShardsPerTask = Annotated[int, typer.Option(help="Shards one task runs in turn.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the sbatch script(s) and the estimate; submit nothing, write nothing.")]
Profile = Annotated[Optional[str], typer.Option(help="Cluster profile from slurm/profiles (A100-40G, A100-80G, A800-80G, H100-80G) or a .toml path.")]
Partition = Annotated[Optional[str], typer.Option(help="SLURM partition.")]
Account = Annotated[Optional[str], typer.Option(help="SLURM account.")]
Qos = Annotated[Optional[str], typer.Option(help="SLURM QOS.")]
Time = Annotated[Optional[str], typer.Option("--time", help="Time limit per task, e.g. 04:00:00 [default: 04:00:00, or the profile's].")]
Gpus = Annotated[Optional[int], typer.Option(help="GPUs per task.")]
Cpus = Annotated[Optional[int], typer.Option(help="CPUs per task.")]
Mem = Annotated[Optional[str], typer.Option(help="Memory per task, e.g. 96G.")]
Constraint = Annotated[Optional[str], typer.Option(help="SLURM node constraint.")]
SbatchArg = Annotated[Optional[list[str]], typer.Option("--sbatch-arg", help="Extra sbatch argument, e.g. --sbatch-arg=--exclude=node7; repeatable.")]
ArrayParallelism = Annotated[Optional[int], typer.Option(help="Tasks of one array running at once (%N).")]
SignalDelay = Annotated[int, typer.Option(help="Seconds of warning (USR2) before the time limit.")]
MaxRequeues = Annotated[int, typer.Option(help="Time-limit requeues of a task before it is reported failed.")]
SamplesPerS = Annotated[float, typer.Option(help="Stated samples/s of one task, for the GPU-hour estimate.")]
ThenReduce = Annotated[Optional[Path], typer.Option("--then-reduce", help="Also submit a reduce job into this folder, after the arrays (afterany).")]


def _run_options(greedy, num_beams, profile, **options) -> dict:
    if greedy and num_beams not in (None, 1):
        raise CapsfusError("--greedy and --num-beams disagree; give one of them")
    options["num_beams"] = 1 if greedy else num_beams
    for key, value in (profile.generation if profile else {}).items():
        if options.get(key) is None:
            options[key] = value
    return options


def _slurm_options(profile, time, gpus, cpus, mem, partition, account, qos, constraint, sbatch_arg,
                   array_parallelism, signal_delay, max_requeues) -> SlurmOptions:
    given = dict(time=time, gpus=gpus, cpus=cpus, mem=mem, partition=partition, account=account, qos=qos,
                 constraint=constraint)
    merged = {**(profile.slurm if profile else {}), **{k: v for k, v in given.items() if v is not None}}
    return SlurmOptions(**merged, extra=tuple(sbatch_arg or ()), array_parallelism=array_parallelism,
                        signal_delay_s=signal_delay, max_requeues=max_requeues)


def _launch(paths: RunPaths, requested, given: set[str], *, local: bool, dry_run: bool, workers: int,
            shards_per_task: int, slurm_options: SlurmOptions, samples_per_s: float, then_reduce: Optional[Path],
            as_json: bool) -> None:
    """The one path of submit and resume: freeze or check the settings, then run what is missing."""
    open_or_create(paths, requested, given, write=not dry_run)
    if local:
        if dry_run or then_reduce:
            raise CapsfusError("--dry-run and --then-reduce are for SLURM submissions; drop --local")
        return _launch_local(paths, workers, shards_per_task, as_json)
    manifest = load_manifest(Path(requested.manifest))
    run_status = (gather_status(paths, manifest) if paths.run_config.exists()
                  else derive_status(manifest, {}, {}))
    plan = plan_slurm(paths, run_status, slurm_options, shards_per_task,
                      max_array_size() if slurm_reachable() or not dry_run else DEFAULT_MAX_ARRAY_SIZE,
                      samples_per_s, then_reduce)
    if dry_run:
        return _print_plan(plan, as_json)
    entries = submit_plan(paths, plan, then_reduce)
    summary = {"run": str(paths.root), "jobs": [e.as_dict() for e in entries],
               "shards": sum(len(g) for a in plan.arrays for g in a), "rows": plan.rows}
    if as_json:
        print_json(summary)
    else:
        for entry in entries:
            console.print(f"submitted {entry.kind} job {entry.job_id}: {len(entry.tasks)} task(s)")
        if not entries:
            console.print("nothing to submit: every shard is done, running or queued")
        console.print(f"follow it with: capsfus-hpc status {safe(paths.root)} --watch")


def _print_plan(plan, as_json: bool) -> None:
    scripts = plan.scripts()
    checks = [sbatch_test_only(script) if slurm_reachable() else "SLURM not reachable: not validated"
              for script in scripts[: len(plan.specs)]]
    estimate = {"rows": plan.rows, "samples_per_s": plan.samples_per_s, "gpus_per_task": plan.gpus_per_task,
                "gpu_hours": round(plan.gpu_hours, 2)}
    if as_json:
        print_json({"arrays": [[list(g) for g in a] for a in plan.arrays], "scripts": scripts,
                    "test_only": checks, "estimate": estimate})
        return
    for index, (array, script) in enumerate(zip(plan.arrays, scripts)):
        shards = [s for group in array for s in group]
        typer.echo(f"# array {index}: {len(array)} task(s), shards {shards[0]}..{shards[-1]}" if shards else "")
        typer.echo(script)
        typer.echo(f"# sbatch --test-only: {checks[index]}\n")
    if plan.reduce_spec is not None:
        typer.echo("# reduce job, after the arrays above")
        typer.echo(scripts[-1])
    typer.echo(f"# {plan.rows} rows to fuse at a stated {plan.samples_per_s:g} samples/s per task "
               f"({max(plan.gpus_per_task, 1)} GPU each): about {plan.gpu_hours:.1f} GPU-hours. Nothing was submitted.")


def _launch_local(paths: RunPaths, workers: int, shards_per_task: int, as_json: bool) -> None:
    _, run_manifest = load_run(paths)
    with row_progress(console, "fusing", run_manifest.total_rows) as advance:
        shard_ids, outcomes = submit_local(
            paths, shards_per_task, workers,
            on_poll=lambda: advance(gather_status(paths, run_manifest, slurm=False).rows_done))
    run_status = gather_status(paths, run_manifest, slurm=False)
    failed = [o for o in outcomes if o.error]
    if as_json:
        print_json({"run": str(paths.root), "shards_run": shard_ids, "status": run_status.as_dict(),
                    "failed_tasks": [o.__dict__ for o in failed]})
    else:
        console.print(status_table(run_status, f"run {paths.root}"))
    if failed:
        first = failed[0]
        raise CapsfusError(f"{len(failed)} task(s) failed, first: job {first.job_id} (shards "
                           f"{', '.join(map(str, first.shard_ids))}): {first.error}; see "
                           f"'capsfus-hpc status {paths.root}' and the logs in {paths.logs}")


@app.command()
@user_errors
def submit(
    manifest: Annotated[Path, typer.Argument(help="Manifest from 'capsfus-hpc manifest build'.")],
    output: OutputDir,
    model: Annotated[str, typer.Option(help="Model folder or hub id, e.g. BAAI/CapsFus-LLaMA.")],
    revision: Annotated[Optional[str], typer.Option(help="Model revision (hub models).")] = None,
    local: Local = False, dry_run: DryRun = False, profile: Profile = None,
    num_beams: NumBeams = None, greedy: Greedy = False, max_new_tokens: MaxNewTokens = None,
    batch_size: BatchSize = None, chunk_rows: ChunkRows = None, window_rows: WindowRows = None, dtype: Dtype = None,
    max_caption_chars: MaxCaptionChars = None, trust_remote_code: TrustRemoteCode = None,
    workers: Workers = 1, shards_per_task: ShardsPerTask = 1,
    partition: Partition = None, account: Account = None, qos: Qos = None, time: Time = None, gpus: Gpus = None,
    cpus: Cpus = None, mem: Mem = None, constraint: Constraint = None, sbatch_arg: SbatchArg = None,
    array_parallelism: ArrayParallelism = None, signal_delay: SignalDelay = 120, max_requeues: MaxRequeues = 5,
    samples_per_s: SamplesPerS = 50.0, then_reduce: ThenReduce = None, as_json: JsonFlag = False,
):
    """Fuse every shard not done yet: SLURM job arrays, or --local tasks. The run folder freezes the settings.

    Example: capsfus-hpc submit manifests/laion.json -o runs/laion --model BAAI/CapsFus-LLaMA --profile H100-80G --dry-run
    """
    chosen = load_profile(profile) if profile else None
    options = _run_options(greedy, num_beams, chosen, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           chunk_rows=chunk_rows, window_rows=window_rows, dtype=dtype,
                           max_caption_chars=max_caption_chars,
                           trust_remote_code=trust_remote_code)
    requested = requested_settings(manifest, model, revision, **options)
    slurm_options = _slurm_options(chosen, time, gpus, cpus, mem, partition, account, qos, constraint, sbatch_arg,
                                   array_parallelism, signal_delay, max_requeues)
    _launch(RunPaths(output), requested, {k for k, v in options.items() if v is not None}, local=local,
            dry_run=dry_run, workers=workers, shards_per_task=shards_per_task, slurm_options=slurm_options,
            samples_per_s=samples_per_s, then_reduce=then_reduce, as_json=as_json)


@app.command()
@user_errors
def resume(
    run_dir: RunDir,
    local: Local = False, dry_run: DryRun = False, profile: Profile = None,
    num_beams: NumBeams = None, greedy: Greedy = False, max_new_tokens: MaxNewTokens = None,
    batch_size: BatchSize = None, chunk_rows: ChunkRows = None, window_rows: WindowRows = None, dtype: Dtype = None,
    max_caption_chars: MaxCaptionChars = None, trust_remote_code: TrustRemoteCode = None,
    workers: Workers = 1, shards_per_task: ShardsPerTask = 1,
    partition: Partition = None, account: Account = None, qos: Qos = None, time: Time = None, gpus: Gpus = None,
    cpus: Cpus = None, mem: Mem = None, constraint: Constraint = None, sbatch_arg: SbatchArg = None,
    array_parallelism: ArrayParallelism = None, signal_delay: SignalDelay = 120, max_requeues: MaxRequeues = 5,
    samples_per_s: SamplesPerS = 50.0, then_reduce: ThenReduce = None, as_json: JsonFlag = False,
):
    """Submit only the shards that are neither done nor queued or running, as new arrays.

    Settings options must match the run's run.json (omit them to inherit); SLURM options may change.

    Example: capsfus-hpc resume runs/laion --time 08:00:00 --dry-run
    """
    paths = RunPaths(run_dir)
    frozen = load_settings(paths)
    chosen = load_profile(profile) if profile else None
    options = _run_options(greedy, num_beams, chosen, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           chunk_rows=chunk_rows, window_rows=window_rows, dtype=dtype,
                           max_caption_chars=max_caption_chars,
                           trust_remote_code=trust_remote_code)
    # A local model folder's revision is recomputed from its files; a hub id keeps its revision.
    requested = requested_settings(Path(frozen.manifest), frozen.model, frozen.model_revision, **options)
    slurm_options = _slurm_options(chosen, time, gpus, cpus, mem, partition, account, qos, constraint, sbatch_arg,
                                   array_parallelism, signal_delay, max_requeues)
    _launch(paths, requested, {k for k, v in options.items() if v is not None}, local=local, dry_run=dry_run,
            workers=workers, shards_per_task=shards_per_task, slurm_options=slurm_options,
            samples_per_s=samples_per_s, then_reduce=then_reduce, as_json=as_json)


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


def _log_tails(paths: RunPaths, run_status, lines: int = 4) -> dict[int, str]:
    """The last lines of the stderr log of each failed shard's task."""
    tails = {}
    for shard in run_status.shards:
        if shard.state == FAILED and shard.job_id:
            log = paths.task_stderr(shard.job_id)
            if log.exists():
                text = log.read_bytes()[-8192:].decode("utf-8", "replace")
                tails[shard.shard] = "\n".join(text.strip().splitlines()[-lines:])
    return tails


@app.command()
@user_errors
def status(
    run_dir: RunDir,
    as_json: JsonFlag = False,
    watch: Annotated[Optional[float], typer.Option("--watch", help="Refresh in place every N seconds until done "
                                                   "(Ctrl-C stops).", show_default=False)] = None,
):
    """Per-shard rows done, state (pending, running, done, failed), SLURM job and state, requeues, rate and ETA.

    Example: capsfus-hpc status runs/laion --json
    """
    paths = RunPaths(run_dir)
    _, manifest = load_run(paths)

    def table():
        run_status = gather_status(paths, manifest)
        return run_status, status_table(run_status, f"run {paths.root}", _log_tails(paths, run_status))

    if as_json:
        run_status = gather_status(paths, manifest)
        print_json({**run_status.as_dict(), "log_tails": _log_tails(paths, run_status)})
        return
    if watch is None:
        console.print(table()[1])
        return
    with Live(table()[1], console=console, auto_refresh=False) as live:
        try:
            while True:
                run_status, rendered = table()
                live.update(rendered, refresh=True)
                if run_status.complete:
                    break
                time.sleep(max(watch, 1.0))
        except KeyboardInterrupt:
            pass


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
