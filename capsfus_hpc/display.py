"""Rendering for people: status tables, progress bars and summaries (Rich).

Text from data (errors quoting captions, file names) is passed through `safe` so a terminal
never replays control or escape sequences from it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from .scheduler import ReduceJobState
from .status import DAMAGED, DONE, FAILED, RUNNING, RunStatus

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STATE_STYLE = {DONE: "green", RUNNING: "cyan", FAILED: "red", DAMAGED: "magenta"}


def safe(text: object) -> str:
    """Printable text with Rich markup escaped and control characters shown as \\xNN."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def status_table(status: RunStatus, title: str, log_tails: dict[int, str] | None = None,
                 reduce_logs: dict[str, str] | None = None) -> Table:
    """Per-shard table; `log_tails` adds the last stderr lines of failed shards, `reduce_logs`
    where a failed reduce job's log is."""
    table = Table(title=safe(title), show_lines=False)
    for column, justify in (("shard", "right"), ("rows", "right"), ("ok", "right"), ("state", "left"),
                            ("slurm", "left"), ("tries", "right"), ("requeues", "right"), ("rows/s", "right"),
                            ("eta", "right"), ("error", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "error")
    for shard in status.shards:
        style = _STATE_STYLE.get(shard.state, "")
        slurm = f"{shard.job_id} {shard.slurm_state or ''}".strip() if shard.job_id else "-"
        error = safe(shard.error or "")
        if log_tails and shard.shard in log_tails:
            error += "\n[dim]" + safe(log_tails[shard.shard]) + "[/]"
        table.add_row(
            str(shard.shard), f"{shard.rows_done}/{shard.rows_total}", str(shard.ok_rows),
            f"[{style}]{shard.state}[/]" if style else shard.state, safe(slurm), str(shard.attempts),
            str(shard.requeues), f"{shard.rate:.1f}" if shard.rate else "-", duration(shard.eta_s), error,
        )
    counts = ", ".join(f"{n} {state}" for state, n in status.counts.items() if n)
    caption = f"{status.rows_done}/{status.rows_total} rows, {status.ok_rows} ok; {counts}"
    if status.rate:
        caption += f"; rate {status.rate:.1f} rows/s, eta {duration(status.eta_s)}"
    for job in status.reduce_jobs:
        caption += "\n" + reduce_line(job, (reduce_logs or {}).get(job.job_id))
    if status.note:
        caption += f"\n{safe(status.note)}"
    table.caption = caption
    return table


def reduce_line(job: ReduceJobState, log: str | None) -> str:
    """e.g. 'reduce job 45 into /data/final: 1 COMPLETED'."""
    what = f"reduce {job.stage} job" if job.stage else "reduce job"
    states = ", ".join(f"{n} {state}" for state, n in sorted(job.states.items())) or "no SLURM state (no accounting)"
    style = "red" if job.failed else "green" if set(job.states) == {"COMPLETED"} else "cyan" if job.active else ""
    line = f"{what} {safe(job.job_id)}" + (f" into {safe(job.final)}" if job.final else "") + ": "
    line += f"[{style}]{states}[/]" if style else states
    return line + (f"; log: {safe(log)}" if log else "")


@contextmanager
def row_progress(console: Console, description: str, total: int):
    """A progress bar over rows; yields a function that sets how many are done."""
    with stage_progress(console, [(description, total)]) as (update,):
        yield update


@contextmanager
def byte_progress(console: Console, description: str, total: int):
    """A progress bar over bytes read; yields a function that adds bytes to those done."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(safe(description), total=total)
        yield lambda read: progress.advance(task, read)


@contextmanager
def stage_progress(console: Console, stages: list[tuple[str, int]]):
    """One progress bar per stage of a command, in one display (rich shows one at a time); yields a
    function per stage that sets how many of its items are done."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        tasks = [progress.add_task(safe(description), total=total) for description, total in stages]
        yield [lambda done, task=task: progress.update(task, completed=done) for task in tasks]


@contextmanager
def polling(call: Callable[[], None], every_s: float):
    """Call `call` every `every_s` seconds on a thread while the block runs, and once after it (to
    move a progress bar while the block does the work)."""
    stopped = threading.Event()

    def loop():
        while not stopped.wait(every_s):
            call()

    thread = threading.Thread(target=loop, name="polling", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()
    call()


def stats_table(stats: dict, title: str) -> Table:
    table = Table(title=safe(title), show_header=False)
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("rows in", str(stats["rows_in"]))
    table.add_row("fused ok", str(stats["ok"]))
    for reason, count in stats["rejected"].items():
        table.add_row(f"rejected: {safe(reason)}", str(count))
    for kind, count in stats["duplicates_by_kind"].items():
        table.add_row(f"dropped: {safe(kind)}", str(count))
    if stats["missing_rows"]:
        table.add_row("[yellow]missing (partial)[/]", str(stats["missing_rows"]))
    table.add_row("[bold]rows out[/]", f"[bold]{stats['rows_out']}[/]")
    return table


def _ranges(ids: list[int]) -> str:
    """Sorted ids as runs: 0-3, 7, 9-10."""
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


NO_GPU = "no GPU requested: the tasks get CPUs only; give --gpus N, or a --profile that sets gpus"


def plan_document(plan, checks: list[tuple[bool, str]]) -> dict:
    """A SLURM plan (launch.SlurmPlan) for --json, with sbatch --test-only's (accepted, answer) per array."""
    return {"arrays": [[list(group) for group in array] for array in plan.arrays], "scripts": plan.scripts(),
            "reduce_after": list(plan.reduce_after),
            "test_only": [message for _, message in checks], "accepted": [accepted for accepted, _ in checks],
            "estimate": {"rows": plan.rows, "samples_per_s": plan.samples_per_s, "gpus_per_task": plan.gpus_per_task,
                         "gpu_hours": round(plan.gpu_hours, 2)},
            "warnings": [NO_GPU] if not plan.gpus_per_task else []}


def plan_text(plan, checks: list[tuple[bool, str]]) -> str:
    """A SLURM plan as the scripts sbatch would get, each with its layout and --test-only answer."""
    scripts = plan.scripts()
    parts = []
    for index, (array, script) in enumerate(zip(plan.arrays, scripts)):
        shards = [shard for group in array for shard in group]
        accepted, message = checks[index]
        parts += [f"# array {index}: {len(array)} task(s), shards {_ranges(shards)}", script,
                  f"# sbatch --test-only{'' if accepted else ' REFUSED'}: {message}\n"]
    if plan.reduce_spec is not None:
        after = ["the arrays above"] if plan.arrays else []
        if plan.reduce_after:
            after.append(f"the run's jobs still queued or running ({', '.join(plan.reduce_after)})")
        parts += [f"# reduce job, after {' and '.join(after) or 'nothing: it can start at once'}", scripts[-1]]
    each = f"{plan.gpus_per_task} GPU each" if plan.gpus_per_task else "each counted as one device"
    parts.append(f"# {plan.rows} rows to fuse at a stated {plan.samples_per_s:g} samples/s per task "
                 f"({each}): about {plan.gpu_hours:.1f} GPU-hours. Nothing was submitted.")
    if not plan.gpus_per_task:
        parts.append(f"# warning: {NO_GPU}")
    return "\n".join(parts)
