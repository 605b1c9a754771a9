"""The benchmarks keep running: each is run here at a tiny size. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_reduce_benchmark_runs_both_engines_on_the_same_rows(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "reduce_bench.py"), "--rows", "2000", "--rows-per-shard", "500",
                    "--work", str(tmp_path), "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["rows"] == 2000 and result["ours"]["wall_s"] > 0 and result["duckdb"]["wall_s"] > 0
    assert result["ours_rows_out"] + result["ours_rejected"] + result["ours_duplicates"] == 2000
