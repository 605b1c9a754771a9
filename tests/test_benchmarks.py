"""The benchmarks keep running: each is run here at a tiny size. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_reduce_benchmark_runs_both_engines_on_the_same_rows(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "reduce_bench.py"), "--rows", "2000", "--rows-per-shard", "500",
                    "--work", str(tmp_path), "--repeat", "2", "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["rows"] == 2000 and result["ours"]["wall_s"] > 0 and result["duckdb"]["wall_s"] > 0
    assert len(result["ours"]["runs_wall_s"]) == len(result["duckdb"]["runs_wall_s"]) == 2
    assert result["ours_rows_out"] + result["ours_rejected"] + result["ours_duplicates"] == 2000


def test_gpu_throughput_benchmark_runs_on_cpu_with_the_smoke_shape(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--smoke", "--samples", "8",
                    "--overhead-rows", "256", "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert list(result["modes"]) == ["reference", "faithful", "fast", "faithful-noprefix", "fast-noprefix",
                                     "faithful-dynamic", "fast-dynamic", "fast-static", "fast-continuous"]
    for name, mode in result["modes"].items():
        assert "error" not in mode, (name, mode.get("error"))
        assert mode["samples_per_s"] > 0 and 0 < mode["fraction_of_limit"]
    assert result["overhead_us_per_row"] > 0 and result["hardware"]["matmul_tflops"] > 0


def test_gpu_throughput_benchmark_names_an_unknown_mode():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--smoke", "--modes", "fast,fastest"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown modes fastest" in done.stderr
