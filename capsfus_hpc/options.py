"""Command-line options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RunDir = Annotated[Path, typer.Argument(help="Run folder (holds run.json, shards/ and logs/).")]
OutputDir = Annotated[Path, typer.Option("--output", "-o", help="Run folder to create or continue.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]

# Options of the run commands (submit, resume), declared once.
NumBeams = Annotated[Optional[int], typer.Option("--num-beams", help="Beams (default: 3, as the reference).")]
Greedy = Annotated[bool, typer.Option("--greedy", help="Greedy decoding (same as --num-beams 1).")]
MaxNewTokens = Annotated[Optional[int], typer.Option(help="Most tokens a fused caption may have (default: 80, as the reference).")]
MaxPromptTokens = Annotated[Optional[int], typer.Option(help="Longer prompts (BOS included) lose the end of their raw caption (default: 256, as the reference).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Most prompts per generate call; a batch never spans windows (--window-rows) (default: 16, or the profile's).")]
BatchTokens = Annotated[Optional[int], typer.Option(help="Token budget of a generate call: as many length-sorted prompts as fit, prompts x (longest + max new tokens) x beams (default: on a GPU, what fits in 80% of its memory free after loading; none on CPU; --batch-size still caps).")]
PrefixCache = Annotated[Optional[bool], typer.Option("--prefix-cache/--no-prefix-cache", help="Compute the instruction's keys and values once per task and start every batch from them (default: on).")]
ChunkRows = Annotated[Optional[int], typer.Option(help="Rows per committed part (default: 2048).")]
WindowRows = Annotated[Optional[int], typer.Option(help="Rows sorted and batched together, within a chunk (--chunk-rows); an early stop commits whole windows (default: 256).")]
Dtype = Annotated[Optional[str], typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")]
MaxCaptionChars = Annotated[Optional[int], typer.Option(help="Longer input captions are rejected (default: 4000).")]
TrustRemoteCode = Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Run the model repo's own code (off unless asked).")]
Local = Annotated[bool, typer.Option("--local", help="Run the tasks on this machine (submitit LocalExecutor).")]
Workers = Annotated[Optional[int], typer.Option(help="With --local: tasks at once (default: 1).", min=1)]
ShardsPerTask = Annotated[int, typer.Option(help="Shards one task runs in turn.", min=1)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the sbatch script(s) and the estimate; submit nothing, write nothing.")]
Profile = Annotated[Optional[str], typer.Option(help="Cluster profile (A100-40G, A100-80G, A800-80G, H100-80G) or a .toml path.")]
Partition = Annotated[Optional[str], typer.Option(help="SLURM partition.")]
Account = Annotated[Optional[str], typer.Option(help="SLURM account.")]
Qos = Annotated[Optional[str], typer.Option(help="SLURM QOS.")]
Time = Annotated[Optional[str], typer.Option("--time", help="Time limit per task, e.g. 04:00:00 (default: a --profile's, else the run's latest submission's, else 04:00:00).")]
ReduceTime = Annotated[Optional[str], typer.Option("--time", help="Time limit per reduce task, e.g. 02:00:00 (default: 04:00:00).")]
Gpus = Annotated[Optional[int], typer.Option(help="GPUs per task.", min=0)]
Cpus = Annotated[Optional[int], typer.Option(help="CPUs per task.", min=1)]
Mem = Annotated[Optional[str], typer.Option(help="Memory per task, e.g. 96G.")]
Constraint = Annotated[Optional[str], typer.Option(help="SLURM node constraint.")]
SbatchArg = Annotated[Optional[list[str]], typer.Option("--sbatch-arg", help="Extra sbatch argument, e.g. --sbatch-arg=--exclude=node7; repeatable.")]
ArrayParallelism = Annotated[Optional[int], typer.Option(help="Tasks of one array running at once (%N).", min=1)]
SignalDelay = Annotated[Optional[int], typer.Option(help="Seconds of warning (USR2) before the time limit (default: a --profile's, else the run's latest submission's, else 120).", min=0)]
MaxRequeues = Annotated[Optional[int], typer.Option(help="Time-limit requeues a task may make for one shard before the shard is reported failed; preemptions do not count (default: a --profile's, else the run's latest submission's, else 5).", min=0)]
SamplesPerS = Annotated[Optional[float], typer.Option(help="Stated samples/s of one task, for the GPU-hour estimate (default: 50).", min=0.001)]
ThenReduce = Annotated[Optional[Path], typer.Option("--then-reduce", help="Also submit a reduce job into this folder, after the arrays (afterany).")]
