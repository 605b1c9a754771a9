"""The capsfus-hpc command line: each command parses options, calls one core function, renders."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from . import __version__
from .columns import ColumnMapping
from .display import (NO_GPU, byte_progress, plan_document, plan_text, polling, row_progress, safe, stage_progress,
                      stats_table, status_table)
from .errors import CapsfusError
from .permissions import restrict_umask
from .launch import (DEFAULT_SAMPLES_PER_S, SLURM_COMMAND_OPTIONS, prepare_slurm, refusal, slurm_options_for,
                     submit_local, submit_plan, validate_plan)
from .manifest import DEFAULT_ROWS_PER_SHARD, build_manifest, bytes_to_read, load_manifest
from . import options as opt
from .paths import ReducePaths, RunPaths
from .profiles import load_profile
from .caption_rules import CaptionRules
from .reduce import ReduceOptions, check_final, load_rules, reduce_run
from .settings import load_run, load_settings, open_or_create, requested_settings
from .slurm import SlurmOptions, refuse_own_options
from .status import DAMAGED, FAILED, gather_status, rows_committed
from .worker import run_shards

app = typer.Typer(
    name="capsfus-hpc", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Fuse raw web alt-texts with synthetic captions (CapsFusion) at cluster scale.\n\n"
         "Example: capsfus-hpc demo",
)
manifest_app = typer.Typer(no_args_is_help=True, help="Build manifests: input files cut into shards.")
app.add_typer(manifest_app, name="manifest")
console = Console(stderr=True)
CHECKING_PARTS = "checking committed parts (shards)"

def user_errors(command):
    """Turn the project's errors into one red line and exit code 1, never a traceback; with
    --json, stdout also gets {"error": ...} unless the command printed its document already."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _json_printed.clear()
        try:
            return command(*args, **kwargs)
        except CapsfusError as exc:
            message = str(exc)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            message = f"{exc.filename or ''}: {exc.strerror}"
        console.print(f"[red]error:[/] {safe(message)}", soft_wrap=True)
        if kwargs.get("as_json") and not _json_printed:
            print_json({"error": message})
        raise typer.Exit(1) from None

    return wrapper


_json_printed: list[bool] = []  # whether this command wrote its JSON document to stdout


def print_json(document) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))
    _json_printed.append(True)


@manifest_app.command("build")
@user_errors
def manifest_build(
    inputs: Annotated[list[Path], typer.Argument(help="Parquet, JSON list, JSON Lines or .jsonl.zst files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write, e.g. manifests/laion.json.")],
    rows_per_shard: Annotated[int, typer.Option(help="Rows per shard (snapped to row groups).")] = DEFAULT_ROWS_PER_SHARD,
    raw_column: Annotated[str, typer.Option(help="Column of the raw web caption.")] = "laion_2b",
    synthetic_column: Annotated[str, typer.Option(help="Column of the synthetic caption.")] = "laion_coco",
    key_column: Annotated[Optional[str], typer.Option(help="Column identifying a row, used to deduplicate "
                                                      "(default: image_url, if present).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing manifest at -o (runs started from "
                                        "it will refuse to go on).")] = False,
    as_json: opt.JsonFlag = False,
):
    """Cut input files into shards, reading only parquet footers; JSON inputs are staged to parquet once.

    Example: capsfus-hpc manifest build data/*.parquet -o manifests/laion.json --rows-per-shard 50000
    """
    columns = ColumnMapping(raw_column, synthetic_column, key_column or "image_url")
    with byte_progress(console, "reading inputs (JSON: hashed, typed, staged)", bytes_to_read(inputs)) as read:
        manifest = build_manifest(inputs, output, rows_per_shard, columns, key_required=key_column is not None,
                                  on_bytes=read, replace=force)
    summary = {"manifest": str(output.absolute()), "files": len(manifest.files), "shards": len(manifest.shards),
               "rows": manifest.total_rows, "columns": manifest.columns.as_dict(),
               "staged": [f.path for f in manifest.files if f.source != f.path],
               "files_without_key": [f.source for f in manifest.files if not f.has_key]}
    if summary["files_without_key"]:
        console.print(f"[yellow]warning:[/] {len(summary['files_without_key'])} of {len(manifest.files)} file(s) have "
                      f"no {safe(columns.key)} column: reduce cannot find their duplicates (name the key with "
                      "--key-column)")
    if as_json:
        print_json(summary)
    else:
        console.print(f"wrote {safe(output)}: {summary['rows']} rows from {summary['files']} file(s) "
                      f"in {summary['shards']} shard(s)")


def _run_command(paths: RunPaths, manifest: Path, model: str, revision: Optional[str], given: dict) -> None:
    """The shared body of submit and resume; `given` holds the command's parsed options."""
    _refuse_options_the_target_ignores(given)
    profile = load_profile(given["profile"]) if given["profile"] else None
    if given["greedy"] and given["num_beams"] not in (None, 1):
        raise CapsfusError("--greedy and --num-beams disagree; give one of them")
    options = {name: given[name] for name in ("max_new_tokens", "max_prompt_tokens", "batch_size", "batch_tokens",
                                              "prefix_cache", "chunk_rows", "window_rows", "dtype", "max_caption_chars",
                                              "trust_remote_code")}
    options["num_beams"] = 1 if given["greedy"] else given["num_beams"]
    for key, value in (profile.generation if profile else {}).items():
        if options.get(key) is None:
            options[key] = value
    requested = requested_settings(manifest, model, revision, **options)
    slurm_options = slurm_options_for(paths, profile.slurm if profile else {}, given)
    _launch(paths, requested, {k for k, v in options.items() if v is not None}, local=given["local"],
            dry_run=given["dry_run"], workers=given["workers"], shards_per_task=given["shards_per_task"],
            slurm_options=slurm_options, samples_per_s=given["samples_per_s"], then_reduce=given["then_reduce"],
            as_json=given["as_json"])


def _refuse_options_the_target_ignores(given: dict) -> None:
    """--local runs no sbatch, and SLURM runs as many tasks as the array allows: an option for
    the other is refused, not dropped."""
    if given["local"]:
        named = [f"--{name.replace('_', '-')}" for name in (*SLURM_COMMAND_OPTIONS, "samples_per_s", "then_reduce")
                 if given[name] is not None] + (["--dry-run"] if given["dry_run"] else [])
        if named:
            raise CapsfusError(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} for SLURM submissions; "
                               "drop --local, or drop them")
    elif given["workers"] is not None:
        raise CapsfusError("--workers is for --local (tasks at once on this machine); on SLURM, "
                           "--array-parallelism caps the tasks running at once")


def _launch(paths: RunPaths, requested, given: set[str], *, local: bool, dry_run: bool, workers: int | None,
            shards_per_task: int, slurm_options: SlurmOptions, samples_per_s: float | None, then_reduce: Optional[Path],
            as_json: bool) -> None:
    """The one path of submit and resume: check everything, and only then freeze the settings and
    run what is missing (a refused command leaves no run.json behind to refuse its correction)."""
    open_or_create(paths, requested, given, write=False)
    if local:
        open_or_create(paths, requested, given)
        return _launch_local(paths, workers or 1, shards_per_task, as_json)
    if then_reduce is not None:
        check_final(ReducePaths(then_reduce), paths)
    with row_progress(console, CHECKING_PARTS, len(load_manifest(Path(requested.manifest)).shards)) as checked:
        plan, reachable = prepare_slurm(paths, Path(requested.manifest), slurm_options, shards_per_task,
                                        samples_per_s or DEFAULT_SAMPLES_PER_S, then_reduce, on_verified=checked)
    checks = validate_plan(plan, reachable)
    refused = refusal(checks)
    if dry_run:
        _print_plan(plan, checks, as_json)
        if refused:
            raise CapsfusError(refused)
        return
    if not reachable:
        raise CapsfusError("SLURM does not answer (sinfo failed); run on a login node, or use --local")
    if refused:
        raise CapsfusError(refused)
    open_or_create(paths, requested, given)
    entries = submit_plan(paths, plan, then_reduce)
    if entries and not plan.gpus_per_task:
        console.print(f"[yellow]warning:[/] {NO_GPU}")
    if as_json:
        print_json({"run": str(paths.root), "jobs": [e.as_dict() for e in entries], "rows": plan.rows})
        return
    for entry in entries:
        console.print(f"submitted {entry.kind} job {entry.job_id}: {len(entry.tasks)} task(s)")
    if not entries:
        console.print("nothing to submit: every shard is done, running or queued")
    console.print(f"follow it with: capsfus-hpc status {safe(shlex.quote(str(paths.root)))} --watch 10")


def _print_plan(plan, checks: list[tuple[bool, str]], as_json: bool) -> None:
    if as_json:
        print_json(plan_document(plan, checks))
    else:
        typer.echo(plan_text(plan, checks))


def _launch_local(paths: RunPaths, workers: int, shards_per_task: int, as_json: bool) -> None:
    _, run_manifest = load_run(paths)
    stages = [(CHECKING_PARTS, len(run_manifest.shards)), ("fusing", run_manifest.total_rows)]
    every_shard = [shard.id for shard in run_manifest.shards]
    with stage_progress(console, stages) as (checked, advance):
        shard_ids, outcomes = submit_local(  # (the bar needs only the rows committed, not a status)
            paths, shards_per_task, workers, on_verified=checked,
            on_poll=lambda: advance(rows_committed(paths, every_shard)))
    run_status = gather_status(paths, run_manifest, slurm=False)
    failed = [o for o in outcomes if o.error]
    if as_json:
        print_json({"run": str(paths.root), "shards_run": shard_ids, "status": run_status.as_dict(),
                    "failed_tasks": [o.__dict__ for o in failed]})
    else:
        console.print(status_table(run_status, f"run {paths.root}"))
        if not shard_ids:
            console.print("nothing to run: every shard is done, running or queued")
    if failed:
        first = failed[0]
        raise CapsfusError(f"{len(failed)} task(s) failed, first: job {first.job_id} (shards "
                           f"{', '.join(map(str, first.shard_ids))}): {first.error}; see "
                           f"'capsfus-hpc status {paths.root}' and the logs in {paths.logs}")


@app.command()
@user_errors
def submit(
    manifest: Annotated[Path, typer.Argument(help="Manifest from 'capsfus-hpc manifest build'.")],
    output: opt.OutputDir,
    model: Annotated[str, typer.Option(help="Model folder or hub id, e.g. BAAI/CapsFus-LLaMA.")],
    revision: Annotated[Optional[str], typer.Option(help="Model revision: a branch, tag or commit of a hub id (a local folder is identified by its files).")] = None,
    local: opt.Local = False, dry_run: opt.DryRun = False, profile: opt.Profile = None,
    num_beams: opt.NumBeams = None, greedy: opt.Greedy = False, max_new_tokens: opt.MaxNewTokens = None,
    max_prompt_tokens: opt.MaxPromptTokens = None,
    batch_size: opt.BatchSize = None, batch_tokens: opt.BatchTokens = None, prefix_cache: opt.PrefixCache = None,
    chunk_rows: opt.ChunkRows = None, window_rows: opt.WindowRows = None, dtype: opt.Dtype = None,
    max_caption_chars: opt.MaxCaptionChars = None, trust_remote_code: opt.TrustRemoteCode = None,
    workers: opt.Workers = None, shards_per_task: opt.ShardsPerTask = 1,
    partition: opt.Partition = None, account: opt.Account = None, qos: opt.Qos = None, time: opt.Time = None, gpus: opt.Gpus = None,
    cpus: opt.Cpus = None, mem: opt.Mem = None, constraint: opt.Constraint = None, sbatch_arg: opt.SbatchArg = None,
    array_parallelism: opt.ArrayParallelism = None, signal_delay: opt.SignalDelay = None, max_requeues: opt.MaxRequeues = None,
    samples_per_s: opt.SamplesPerS = None, then_reduce: opt.ThenReduce = None, as_json: opt.JsonFlag = False,
):
    """Fuse every shard not done yet: SLURM job arrays, or --local tasks. The run folder freezes the settings.

    Example: capsfus-hpc submit manifests/laion.json -o runs/laion --model BAAI/CapsFus-LLaMA --profile H100-80G --dry-run
    """
    if revision is not None and Path(model).is_dir():  # it would be replaced by the folder's fingerprint
        raise CapsfusError(f"--revision {revision}: --model {model} is a local folder, identified by its files; "
                           "--revision is for hub ids")
    _run_command(RunPaths(output), manifest, model, revision, locals())


@app.command()
@user_errors
def resume(
    run_dir: opt.RunDir,
    local: opt.Local = False, dry_run: opt.DryRun = False, profile: opt.Profile = None,
    num_beams: opt.NumBeams = None, greedy: opt.Greedy = False, max_new_tokens: opt.MaxNewTokens = None,
    max_prompt_tokens: opt.MaxPromptTokens = None,
    batch_size: opt.BatchSize = None, batch_tokens: opt.BatchTokens = None, prefix_cache: opt.PrefixCache = None,
    chunk_rows: opt.ChunkRows = None, window_rows: opt.WindowRows = None, dtype: opt.Dtype = None,
    max_caption_chars: opt.MaxCaptionChars = None, trust_remote_code: opt.TrustRemoteCode = None,
    workers: opt.Workers = None, shards_per_task: opt.ShardsPerTask = 1,
    partition: opt.Partition = None, account: opt.Account = None, qos: opt.Qos = None, time: opt.Time = None, gpus: opt.Gpus = None,
    cpus: opt.Cpus = None, mem: opt.Mem = None, constraint: opt.Constraint = None, sbatch_arg: opt.SbatchArg = None,
    array_parallelism: opt.ArrayParallelism = None, signal_delay: opt.SignalDelay = None, max_requeues: opt.MaxRequeues = None,
    samples_per_s: opt.SamplesPerS = None, then_reduce: opt.ThenReduce = None, as_json: opt.JsonFlag = False,
):
    """Submit only the shards that are neither done nor queued or running, as new arrays.

    Settings options must match the run's run.json (omit them to inherit); SLURM options may change.

    Example: capsfus-hpc resume runs/laion --time 08:00:00 --dry-run
    """
    paths = RunPaths(run_dir)
    frozen = load_settings(paths)
    # A local model folder's revision is recomputed from its files; a hub id keeps its revision.
    _run_command(paths, Path(frozen.manifest), frozen.model, frozen.model_revision, locals())


@app.command()
@user_errors
def work(
    run_dir: opt.RunDir,
    shard: Annotated[list[int], typer.Option("--shard", help="Shard id; repeat for several.")],
):
    """Run shards in the foreground, the way a SLURM task would.

    Example: capsfus-hpc work runs/laion --shard 12
    """
    paths = RunPaths(run_dir.absolute())
    _, run_manifest = load_run(paths)
    rows = sum(run_manifest.shard(shard_id).rows for shard_id in shard)
    if console.is_terminal:  # log lines print above the bar
        logging.basicConfig(level=logging.INFO, format="%(message)s",
                            handlers=[RichHandler(console=console, show_path=False, markup=False)])
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with row_progress(console, "fusing", rows) as advance, \
            polling(lambda: advance(rows_committed(paths, shard)), every_s=1.0):
        done = run_shards(str(paths.root), list(shard))
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


def _reduce_logs(paths: RunPaths, run_status) -> dict[str, str]:
    """Where each failed reduce job's log is: the task's stderr, or a reduce --slurm stage's folder."""
    logs = {}
    for job in run_status.reduce_jobs:
        if job.failed:
            log = ReducePaths(Path(job.final)).logs if job.stage and job.final else paths.task_stderr(job.job_id)
            if log.exists():
                logs[job.job_id] = str(log)
    return logs


@app.command()
@user_errors
def status(
    run_dir: opt.RunDir,
    as_json: opt.JsonFlag = False,
    watch: Annotated[Optional[float], typer.Option("--watch", help="Refresh in place every N seconds until done "
                                                   "(Ctrl-C stops).", show_default=False)] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Also check every committed part against its checksum "
                                         "(reads them all); damaged shards show as damaged.")] = False,
):
    """Per-shard rows done, state (pending, running, done, failed, damaged), SLURM job and state, requeues, rate and ETA.

    Example: capsfus-hpc status runs/laion --json

    Example: capsfus-hpc status runs/laion --verify
    """
    if as_json and watch is not None:
        raise CapsfusError("--watch refreshes a table; for scripts, call 'status --json' at your own interval")
    paths = RunPaths(run_dir)
    _, manifest = load_run(paths)

    def gather(progress=True):
        if not (verify and progress):  # (no bar inside --watch's live table: rich shows one at a time)
            return gather_status(paths, manifest, verify=verify)
        with row_progress(console, CHECKING_PARTS, len(manifest.shards)) as checked:
            return gather_status(paths, manifest, verify=True, on_verified=checked)

    def table(progress=True):
        run_status = gather(progress)
        return run_status, status_table(run_status, f"run {paths.root}", _log_tails(paths, run_status),
                                        _reduce_logs(paths, run_status))

    if as_json:
        run_status = gather()
        print_json({**run_status.as_dict(), "log_tails": _log_tails(paths, run_status),
                    "reduce_logs": _reduce_logs(paths, run_status)})
    elif watch is None:
        run_status, rendered = table()
        console.print(rendered)
    else:
        with Live(table()[1], console=console, auto_refresh=False) as live:
            try:
                while True:
                    run_status, rendered = table(progress=False)
                    live.update(rendered, refresh=True)
                    if run_status.settled:
                        break  # done, or all that is left failed: nothing more will happen
                    time.sleep(max(watch, 1.0))
            except KeyboardInterrupt:
                return
        if not console.is_terminal:
            console.line()  # Live ends a terminal's last frame with a newline, not a file's
    # Exit 1 where a script asked a question whose answer is bad: damage found, or a watch that ended on failures.
    unfinished = run_status.counts[DAMAGED] + (run_status.counts[FAILED] if watch is not None else 0)
    if (verify or watch is not None) and unfinished:
        raise CapsfusError(f"{unfinished} shard(s) failed or damaged; 'capsfus-hpc resume {paths.root}' runs them again")
    if watch is not None and run_status.stranded:
        raise CapsfusError(f"{len(run_status.stranded)} shard(s) pending with no task queued to run them; "
                           f"'capsfus-hpc resume {paths.root}' submits them")
    if watch is not None and (failed := run_status.failed_reduces):
        job = failed[0]
        log = _reduce_logs(paths, run_status).get(job.job_id)
        raise CapsfusError(f"reduce{' ' + job.stage if job.stage else ''} job {job.job_id} into {job.final} failed"
                           + (f"; its log: {log}" if log else ""))


@app.command()
@user_errors
def reduce(
    run_dir: opt.RunDir,
    final: Annotated[Path, typer.Option("--final", help="Folder for the final dataset.")],
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Assemble an incomplete run; stats.json lists the missing rows.")] = False,
    dedup_caption: Annotated[bool, typer.Option("--dedup-caption", help="Also drop rows whose normalised fused caption was seen before.")] = False,
    write_duplicates: Annotated[bool, typer.Option("--write-duplicates", help="Write duplicates.parquet: each dropped row and the row it duplicates.")] = False,
    near_dup: Annotated[Optional[float], typer.Option("--near-dup", help="Also drop captions this Jaccard-similar (word 3-grams, MinHash) to an earlier kept one, e.g. 0.9; needs capsfus-hpc\\[near-dup], in memory, for runs of a few million rows.")] = None,
    target_file_mb: Annotated[int, typer.Option(help="Start a new data file past this size.", min=1)] = 512,
    rules: Annotated[Optional[Path], typer.Option(help="JSON file of caption rule thresholds (see capsfus_hpc/caption_rules.py).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Processes, and reader threads of the last stage, to use (default: the CPUs this process may use); with --slurm (default 1), at most N keys tasks and, from 200k rows on, at least N key partitions, each a dedup task per key kind.")] = None,
    on_slurm: Annotated[bool, typer.Option("--slurm", help="Run the reduce as SLURM arrays (keys, dedup, assemble) instead of here.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --slurm: wait for the dataset and print its stats.")] = False,
    partition: opt.Partition = None, account: opt.Account = None, qos: opt.Qos = None,
    time_limit: opt.ReduceTime = None, cpus: opt.Cpus = None, mem: opt.Mem = None,
    sbatch_arg: opt.SbatchArg = None,
    as_json: opt.JsonFlag = False,
):
    """Reconcile every row, judge the captions, deduplicate keys and write the final dataset.

    Example: capsfus-hpc reduce runs/laion --final datasets/laion-capsfusion --write-duplicates

    Example: capsfus-hpc reduce runs/laion --final datasets/laion-capsfusion --slurm --workers 32 --partition cpu --wait
    """
    if wait and not on_slurm:
        raise CapsfusError("--wait is for --slurm (a reduce here always waits)")
    slurm_only = {"--partition": partition, "--account": account, "--qos": qos, "--time": time_limit, "--cpus": cpus,
                  "--mem": mem, "--sbatch-arg": sbatch_arg}
    if not on_slurm and (given_slurm := [name for name, value in slurm_only.items() if value]):
        raise CapsfusError(f"{', '.join(given_slurm)} {'is' if len(given_slurm) == 1 else 'are'} for --slurm "
                           "(a reduce here uses --workers processes of this machine)")
    if not (workers is None or workers > 0):
        raise CapsfusError("--workers must be at least 1")
    paths = RunPaths(run_dir)
    _, manifest = load_run(paths)
    options = ReduceOptions(allow_partial=allow_partial, dedup_caption=dedup_caption,
                            write_duplicates=write_duplicates, target_file_bytes=target_file_mb * 2**20,
                            rules=load_rules(rules) if rules else CaptionRules(), near_dup=near_dup)
    if on_slurm:
        from .reduce_slurm import submit_reduce, wait_for_reduce

        given = {"partition": partition, "account": account, "qos": qos, "time": time_limit, "cpus": cpus, "mem": mem}
        refuse_own_options(sbatch_arg or (), {f"--{name}" for name in given})
        slurm_options = SlurmOptions(**{k: v for k, v in given.items() if v is not None}, extra=tuple(sbatch_arg or ()))
        jobs = submit_reduce(paths, final, options, slurm_options, workers or 1)
        if not wait:
            document = {"final": str(final.absolute()), "jobs": [vars(job) for job in jobs]}
            if as_json:
                print_json(document)
            else:
                for job in jobs:
                    console.print(f"submitted {job.stage}: job {job.job_id} ({job.tasks} task(s))")
                console.print(f"the dataset in {safe(final.absolute())} is replaced when the assemble job completes "
                              "(an earlier one stays whole until then); follow it with: capsfus-hpc status "
                              f"{safe(shlex.quote(str(paths.root)))}")
            return
        try:
            stats = wait_for_reduce(final, jobs)
        except CapsfusError as exc:
            if as_json:  # the error, with the jobs a script may want to look at
                print_json({"error": str(exc), "jobs": [vars(job) for job in jobs]})
            raise
    else:
        with row_progress(console, "reducing (keys, then judge and write)", 2 * manifest.total_rows) as advance:
            stats = reduce_run(paths, final, options, on_rows=advance, workers=workers)
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

    Example: capsfus-hpc smoke-model /tmp/smoke && capsfus-hpc submit manifests/laion.json -o /tmp/rehearsal --model /tmp/smoke --local
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):  # save_pretrained would overwrite a real model
        raise CapsfusError(f"{folder}: exists and is not an empty folder; the smoke model is written to a new one")
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
    restrict_umask()  # run folders, logs and job pickles: nobody else may write them
    app()
