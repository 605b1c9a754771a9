"""Reducer benchmark: our `reduce` against DuckDB doing the same job, side by side in one run.

Generates a run folder whose shard parts look exactly like the worker's (written through
worker.commit_chunk), with N rows drawn from the real CapsFusion example captions and ~5% of
URLs repeated, then times, each in its own process:
  ours    capsfus-hpc reduce RUN --final OUT   (reconciliation, checksums, caption rules, dedup)
  duckdb  filter ok rows, keep the first row per URL, write zstd parquet (no validation)
and prints wall time, rows/s and peak RSS of each, and the ratio ours/duckdb. Both read the parts
from the page cache (they are read once before timing), and with --repeat N the two engines run
in turn N times and each engine's best and median wall times are reported: a shared machine's
noise (20% here) then hits both alike.

    python benchmarks/reduce_bench.py --rows 10000000 --repeat 3 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.fingerprint import Fingerprint
from capsfus_hpc.manifest import InputFile, Manifest, Shard
from capsfus_hpc.parquet_layout import part_bytes, schema_fingerprint
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.progress import ProgressRecord, read_progress, write_progress
from capsfus_hpc.settings import RunSettings
from capsfus_hpc.atomic import atomic_write_json, sha256_file
from capsfus_hpc.prompt import template_sha256
from capsfus_hpc.worker import commit_chunk

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "capsfusion_example_5k.json"
DUCKDB_QUERY = """
SET memory_limit = '{memory}';
SET threads = {threads};
COPY (
    SELECT * EXCLUDE (status, reason, detail)
    FROM read_parquet('{parts}')
    WHERE status = 'ok'
    QUALIFY row_number() OVER (PARTITION BY image_url ORDER BY row_id) = 1
    ORDER BY row_id
) TO '{out}' (FORMAT parquet, COMPRESSION zstd);
"""


def generate(run_dir: Path, rows: int, rows_per_shard: int, chunk_rows: int, dup_rate: float, seed: int) -> None:
    """A finished run folder of `rows` rows, written as the worker writes it."""
    records = json.loads(EXAMPLES.read_text())
    rng = random.Random(seed)
    shards = [Shard(i, 0, start, min(start + rows_per_shard, rows), start)
              for i, start in enumerate(range(0, rows, rows_per_shard))]
    manifest = Manifest(ColumnMapping(), rows_per_shard, (InputFile(0, "generated", "generated", "parquet", rows, 0, True,
                                                                    Fingerprint(0, 0, "-")),), tuple(shards))
    manifest_path = run_dir.parent / f"{run_dir.name}-manifest.json"
    atomic_write_json(manifest_path, manifest.as_dict())
    paths = RunPaths(run_dir)
    settings = RunSettings(manifest=str(manifest_path), manifest_sha256=sha256_file(manifest_path), model="generated",
                           model_revision=None, prompt_template_sha256=template_sha256(),
                           columns=ColumnMapping().as_dict(), chunk_rows=chunk_rows)
    for shard in shards:
        record = ProgressRecord.new(shard)
        for start in range(shard.row_id_start, shard.row_id_stop, chunk_rows):
            stop = min(start + chunk_rows, shard.row_id_stop)
            ids = list(range(start, stop))
            picks = [records[i % len(records)] for i in ids]
            urls = [f"https://img.example.com/{rng.randrange(i) if i and rng.random() < dup_rate else i}.jpg"
                    for i in ids]
            table = pa.table({
                "row_id": pa.array(ids, pa.int64()), "image_url": urls,
                "laion_2b": [p["laion_2b"] for p in picks], "laion_coco": [p["laion_coco"] for p in picks],
                "fused_caption": [p["capsfuion_official"] for p in picks], "status": ["ok"] * len(ids),
                "reason": pa.nulls(len(ids), pa.string()), "detail": pa.nulls(len(ids), pa.string()),
                "finish_reason": ["eos"] * len(ids), "prompt_tokens": pa.array([150] * len(ids), pa.int32()),
                "completion_tokens": pa.array([40] * len(ids), pa.int32()),
            })
            record = commit_chunk(paths, record, table, 0.0)
        write_progress(paths.progress(shard.id), record)
    atomic_write_json(paths.run_config, settings.as_dict())  # last: the folder is complete


def parts_current(run_dir: Path) -> bool:
    """Whether the run folder is complete and its parts and records are as the worker writes them now."""
    paths = RunPaths(run_dir)
    first = paths.part(0, 0)
    if not (paths.run_config.exists() and first.exists()):
        return False
    table = pq.read_table(first)
    record = read_progress(paths.progress(0))
    return part_bytes(table) == first.read_bytes() and record.chunks[0].schema_sha256 == schema_fingerprint(table.schema)


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _tree_rss_kb(root: int) -> int:
    """Resident memory of a process and all its descendants, summed (the reducer runs several).
    Walks the tree through /proc/PID/task/TID/children and reads statm: about 0.3 ms a sample,
    so sampling every 50 ms takes under 1% of a core from the engines being timed (scanning
    all of /proc took 7.5 ms, 15% of a core)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # the process ended meanwhile
    return total


def measure(command: list[str]) -> dict:
    """Wall time, and peak resident memory of the child and its descendants together (sampled
    every 50 ms, and the child's own ru_maxrss as a floor)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kb = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, _tree_rss_kb(process.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed: {process.stderr.read().decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(max(peak_kb, usage.ru_maxrss) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    parser.add_argument("--chunk-rows", type=int, default=2048)
    parser.add_argument("--dup-rate", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=Path("/tmp/capsfus-reduce-bench"))
    parser.add_argument("--duckdb-memory", default="2GB")
    parser.add_argument("--repeat", type=int, default=1, help="run the two engines in turn this many times")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    run_dir = args.work / f"run-{args.rows}"
    if not parts_current(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        began = time.perf_counter()
        generate(run_dir, args.rows, args.rows_per_shard, args.chunk_rows, args.dup_rate, seed=0)
        print(f"generated {args.rows} rows in {time.perf_counter() - began:.0f} s into {run_dir}")
    ours_out, duck_out = args.work / "final-ours", args.work / "final-duckdb.parquet"
    parts = sorted(run_dir.glob("shards/*/part-*.parquet"))
    for part in parts:  # into the page cache, so neither engine pays for the first read
        part.read_bytes()
    query = DUCKDB_QUERY.format(memory=args.duckdb_memory, threads=os.cpu_count(),
                                parts=f"{run_dir}/shards/*/part-*.parquet", out=duck_out)
    commands = {"ours": [sys.executable, "-m", "capsfus_hpc", "reduce", str(run_dir), "--final", str(ours_out), "--json"],
                "duckdb": [sys.executable, "-c", f"import duckdb; duckdb.connect().execute({query!r})"]}
    runs = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, command in commands.items():
            shutil.rmtree(ours_out, ignore_errors=True) if name == "ours" else duck_out.unlink(missing_ok=True)
            runs[name].append(measure(command))
            if name == "ours":
                stats = json.loads((ours_out / "stats.json").read_text())
    result = {"rows": args.rows, "machine": f"{os.cpu_count()} cores", "repeat": args.repeat,
              "ours_rows_out": stats["rows_out"], "ours_rejected": stats["rejected_total"],
              "ours_duplicates": stats["duplicates"]}
    for name, measured in runs.items():
        walls = sorted(m["wall_s"] for m in measured)
        result[name] = {"wall_s": walls[0], "median_wall_s": walls[len(walls) // 2], "runs_wall_s": [m["wall_s"] for m in measured],
                        "peak_rss_mb": max(m["peak_rss_mb"] for m in measured), "rows_per_s": round(args.rows / walls[0])}
    result["ratio_wall"] = round(result["ours"]["wall_s"] / result["duckdb"]["wall_s"], 2)
    result["ratio_median_wall"] = round(result["ours"]["median_wall_s"] / result["duckdb"]["median_wall_s"], 2)
    print(f"{'engine':8} {'best s':>8} {'median s':>9} {'rows/s':>10} {'peak RSS MB':>12}")
    for name in ("ours", "duckdb"):
        r = result[name]
        print(f"{name:8} {r['wall_s']:>8} {r['median_wall_s']:>9} {r['rows_per_s']:>10} {r['peak_rss_mb']:>12}")
    print(f"ratio ours/duckdb (wall): best {result['ratio_wall']}, median {result['ratio_median_wall']} "
          f"over {args.repeat} run(s) each  (target <= 1.0 at <= 2048 MB peak RSS)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
