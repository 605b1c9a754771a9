"""The command line as a user meets it: real subprocesses, exit codes and messages."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

import pyarrow.parquet as pq
import pytest

from capsfus_hpc import ledger
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE
from capsfus_hpc.reduce_lock import hold_final
from capsfus_hpc.slurm import SlurmOptions

from .conftest import make_run, with_urls, write_parquet


def capsfus(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "capsfus_hpc", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_column_is_one_line_naming_column_and_file(tmp_path, real_records):
    source = write_parquet(tmp_path / "nococo.parquet", [{"laion_2b": r["laion_2b"]} for r in real_records[:5]])
    result = capsfus("manifest", "build", source, "-o", tmp_path / "m.json", check=False)
    assert_one_line_error(result, str(source), "'laion_coco'")


def test_corrupt_input_is_named_at_manifest_time(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet PAR1")
    assert_one_line_error(capsfus("manifest", "build", broken, "-o", tmp_path / "m.json", check=False), str(broken))
    bad_json = tmp_path / "list.json"
    bad_json.write_text('[{"laion_2b": "a", "laion_coco": "b"},')
    assert_one_line_error(capsfus("manifest", "build", bad_json, "-o", tmp_path / "m.json", check=False), str(bad_json))


def test_manifest_json_output_is_machine_readable(tmp_path, real_records):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:100]), row_group_rows=25)
    result = capsfus("manifest", "build", source, "-o", tmp_path / "m.json", "--rows-per-shard", 50, "--json")
    summary = json.loads(result.stdout)
    assert summary["rows"] == 100 and summary["shards"] == 2 and summary["columns"]["key"] == "image_url"
    again = capsfus("manifest", "build", source, "-o", tmp_path / "m.json", "--rows-per-shard", 25, check=False)
    assert_one_line_error(again, "m.json: exists already", "--force")
    assert json.loads((tmp_path / "m.json").read_text())["rows_per_shard"] == 50
    capsfus("manifest", "build", source, "-o", tmp_path / "m.json", "--rows-per-shard", 25, "--force")
    assert json.loads((tmp_path / "m.json").read_text())["rows_per_shard"] == 25


def test_submit_status_reduce_through_the_cli(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:40], duplicate_every=10), row_group_rows=10)
    manifest, run, final = tmp_path / "m.json", tmp_path / "run", tmp_path / "final"
    capsfus("manifest", "build", source, "-o", manifest, "--rows-per-shard", 20)
    submitted = capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--greedy",
                        "--max-new-tokens", 8, "--workers", 2, "--json")
    assert sorted(json.loads(submitted.stdout)["shards_run"]) == [0, 1]
    status = json.loads(capsfus("status", run, "--json").stdout)
    assert status["counts"]["done"] == 2 and status["rows_done"] == 40
    watched = capsfus("status", run, "--watch", 1)  # a finished run: one refresh, then it returns
    assert "40/40 rows" in watched.stderr
    stats = json.loads(capsfus("reduce", run, "--final", final, "--json").stdout)
    assert stats["rows_in"] == 40 and stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] == 40
    # the smoke model writes gibberish: the caption rules reject much of it, with reasons
    assert stats["rejected_total"] > 0 and all(reason.startswith("caption_") for reason in stats["rejected"])
    # A second submit finds nothing to do; different settings are refused naming the field.
    again = capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--json")
    assert json.loads(again.stdout)["shards_run"] == []
    refused = capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--num-beams", 3, check=False)
    assert refused.returncode == 1 and "num_beams: run has 1, this command asks for 3" in refused.stderr
    refused = capsfus("resume", run, "--local", "--max-new-tokens", 20, check=False)
    assert refused.returncode == 1 and "max_new_tokens: run has 8, this command asks for 20" in refused.stderr
    assert json.loads(capsfus("resume", run, "--local", "--json").stdout)["shards_run"] == []
    assert capsfus("resume", run, "--local").stderr.strip().endswith("nothing to run: every shard is done, running or queued")


def test_a_failed_task_is_reported_with_its_shard_and_file(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))
    manifest, run = tmp_path / "m.json", tmp_path / "run"
    capsfus("manifest", "build", source, "-o", manifest)
    write_parquet(source, with_urls(real_records[:11]))
    result = capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", check=False)
    assert result.returncode == 1 and "1 task(s) failed" in result.stderr and str(source) in result.stderr
    watched = subprocess.run([sys.executable, "-m", "capsfus_hpc", "status", run, "--watch", "1"], capture_output=True,
                             text=True, timeout=60)  # nothing is left to happen: the watch ends, and says why
    assert watched.returncode == 1 and "1 shard(s) failed or damaged" in watched.stderr
    status = json.loads(capsfus("status", run, "--json").stdout)
    assert status["shards"][0]["state"] == "failed" and f"input {source} changed" in status["shards"][0]["error"]


@pytest.mark.parametrize("terminal", [True, False])
def test_work_shows_a_progress_bar_on_a_terminal_and_timestamped_log_lines_elsewhere(tmp_path, real_records,
                                                                                   smoke_model, terminal):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:24]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=12, chunk_rows=4)
    environment = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    if terminal:
        environment.update(FORCE_COLOR="1", COLUMNS="120")
    result = subprocess.run([sys.executable, "-m", "capsfus_hpc", "work", str(paths.root), "--shard", "0",
                             "--shard", "1"], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    assert ("24/24" in plain) is terminal and ("fusing" in plain) is terminal  # the bar ends at every row
    assert "shard 1 chunk 2: rows " in plain  # the log lines are kept: above the bar, or alone
    timestamped = re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO shard 0 chunk 0", plain, re.MULTILINE)
    assert bool(timestamped) is not terminal
    assert plain.strip().splitlines()[-1] == "done: shard 0 (12 rows), shard 1 (12 rows)"


def test_a_watch_of_a_run_with_shards_no_task_will_run_ends_and_says_to_resume(tmp_path, real_records, smoke_model):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:8]))], smoke_model, 4)
    watched = subprocess.run([sys.executable, "-m", "capsfus_hpc", "status", str(paths.root), "--watch", "1"],
                             capture_output=True, text=True, timeout=60)  # a submit interrupted before any task
    assert watched.returncode == 1, watched.stderr
    assert f"2 shard(s) pending with no task queued to run them; 'capsfus-hpc resume {paths.root}'" in watched.stderr


@pytest.mark.parametrize("after_slurm", [False, True], ids=["local-run", "local-resume-of-a-failed-slurm-task"])
def test_shards_a_local_submit_has_yet_to_start_are_pending_in_its_queue(tmp_path, real_records, smoke_model,
                                                                         after_slurm):
    """One worker, three shards: the two waiting read as pending in the driver's queue, a second
    submit leaves them to it, and a watch follows the run to its end. Where a SLURM task of the
    shards failed before, the live local run is what status shows, not the old task."""
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:24]))], smoke_model, 8,
                     max_new_tokens=8)
    if after_slurm:  # a task SLURM never ran, as one cancelled while pending: it reads as failed
        ledger.append(paths.ledger, "987654321", ledger.FUSE, [("987654321_0", [0, 1, 2])], {})
        assert json.loads(capsfus("status", paths.root, "--json").stdout)["counts"]["failed"] == 3
    driver = subprocess.Popen([sys.executable, "-m", "capsfus_hpc", "resume", str(paths.root), "--local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (status := json.loads(capsfus("status", paths.root, "--json").stdout))["counts"]["running"]:
            assert driver.poll() is None and time.time() < deadline, "the first task never started"
            time.sleep(0.5)
        waiting = [s for s in status["shards"] if s["state"] == "pending"]
        assert waiting and all(s["job_id"] == f"local:{driver.pid}" and s["queued"] for s in waiting), status["shards"]
        again = json.loads(capsfus("resume", paths.root, "--local", "--json").stdout)
        assert again["shards_run"] == []  # all three are the driver's
        watched = subprocess.run([sys.executable, "-m", "capsfus_hpc", "status", str(paths.root), "--watch", "1"],
                                 capture_output=True, text=True, timeout=300)
        assert watched.returncode == 0, watched.stderr
        assert driver.wait(timeout=60) == 0
    finally:
        driver.kill()
    final = json.loads(capsfus("status", paths.root, "--json").stdout)
    assert final["counts"]["done"] == 3 and not list(paths.local_queues.iterdir())


def test_submit_names_a_missing_manifest(tmp_path):
    result = capsfus("submit", tmp_path / "nothere.json", "-o", tmp_path / "run", "--model", "x", "--dry-run",
                     check=False)
    assert_one_line_error(result, "nothere.json: no such manifest")


@pytest.mark.parametrize("option, value, named", [("--batch-size", "0", "batch_size"), ("--num-beams", "-1", "num_beams"),
                                                  ("--max-new-tokens", "0", "max_new_tokens"), ("--dtype", "fp8", "dtype"),
                                                  ("--max-prompt-tokens", "0", "max_prompt_tokens")])
def test_a_setting_no_task_could_run_with_is_refused_before_anything_is_written(tmp_path, real_records, option, value,
                                                                                 named):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))
    capsfus("manifest", "build", source, "-o", tmp_path / "m.json")
    result = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--local", option, value,
                     check=False)
    assert_one_line_error(result, named, value, option)
    assert not (tmp_path / "run").exists()


def test_resume_starts_from_the_latest_submission_s_slurm_options(tmp_path, real_records, smoke_model):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))], smoke_model, 10)
    earlier = SlurmOptions(partition="debug", account="proj", mem="3G", time="30", array_parallelism=2,
                           signal_delay_s=60, max_requeues=2, extra=("--comment=fusion",))
    ledger.append(paths.ledger, "900", ledger.FUSE, [("900_0", [0])], asdict(earlier))
    plan = json.loads(capsfus("resume", paths.root, "--dry-run", "--json", "--mem", "4G").stdout)
    script = plan["scripts"][0]
    for line in ("--partition=debug", "--account=proj", "--time=30", "--mem=4G", "--signal=USR2@60", "--comment=fusion"):
        assert f"#SBATCH {line}\n" in script, line
    assert "CAPSFUS_MAX_REQUEUES=2" in script


def test_user_mistakes_end_in_one_line_that_names_them(tmp_path, real_records):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:4]))
    capsfus("manifest", "build", source, "-o", tmp_path / "m.json")
    result = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--partition", "nosuch",
                     check=False)
    assert_one_line_error(result, "sbatch --test-only refused array 0: ", "Invalid partition name specified")
    assert not (tmp_path / "run").exists()  # nothing written: the corrected command is not refused for its settings
    capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--greedy", "--dry-run")
    dry = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--partition", "nosuch",
                  "--dry-run", check=False)
    assert dry.returncode == 1 and "#SBATCH --partition=nosuch" in dry.stdout  # the script, and why it was refused
    assert "# sbatch --test-only REFUSED: sbatch: error: invalid partition" in dry.stdout
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    busy = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--then-reduce",
                   tmp_path / "elsewhere", "--dry-run", check=False)
    assert_one_line_error(busy, "elsewhere is not empty and holds no earlier reduce output")
    with hold_final(tmp_path / "being-written"):  # a local reduce into it, running now
        held = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", "--then-reduce",
                       tmp_path / "being-written", "--dry-run", check=False)
    assert_one_line_error(held, "being-written right now (its lock", "wait for it to end")
    typo = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run2", "--model", "./smoke-modle", "--local",
                   check=False)  # a path, which must not be taken for a hub id
    assert_one_line_error(typo, "--model ./smoke-modle: no such folder")
    named = capsfus("status", tmp_path / "m.json", check=False)  # a file, not a run folder
    assert_one_line_error(named, "m.json: not a run folder")


def test_a_final_folder_that_is_a_file_or_a_link_to_nothing_is_refused_by_name(tmp_path, real_records, smoke_model):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:4]))], smoke_model, 4)
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "notes.txt").write_text("mine")
    for final, named in ((tmp_path / "dangling", "dangling is a link to "),
                         (tmp_path / "notes.txt" / "final", "notes.txt is a file, not a folder")):
        for command in (("reduce", paths.root, "--final", final),
                        ("submit", tmp_path / "run-manifest.json", "-o", tmp_path / "run2", "--model", "x",
                         "--then-reduce", final, "--dry-run")):
            assert_one_line_error(capsfus(*command, check=False), f"final folder {final}: ", named)
    assert not (tmp_path / "gone").exists() and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("options, named", [
    (["--partition", "cpu"], "--partition is for --slurm"),
    (["--mem", "8G", "--time", "60"], "--time, --mem are for --slurm"),
    (["--wait"], "--wait is for --slurm"),
    (["--target-file-mb", "0"], "Invalid value for '--target-file-mb'"),
    (["--slurm", "--workers", "0"], "--workers must be at least 1"),  # not taken for 1 and submitted
])
def test_reduce_refuses_options_it_would_ignore(tmp_path, real_records, smoke_model, options, named):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:4]))], smoke_model, 4)
    result = capsfus("reduce", paths.root, "--final", tmp_path / "final", *options, check=False)
    assert result.returncode in (1, 2) and named in result.stderr, result.stderr
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize("options, named", [
    (["--local", "--dry-run"], "--dry-run is for SLURM submissions; drop --local"),
    (["--local", "--then-reduce", "final"], "--then-reduce is for SLURM submissions"),
    (["--local", "--partition", "gpu", "--time", "60", "--sbatch-arg=--exclude=node7"],
     "--time, --partition, --sbatch-arg are for SLURM submissions"),
    (["--local", "--gpus", "2", "--max-requeues", "1", "--samples-per-s", "9"], "--gpus, --max-requeues, --samples-per-s are"),
    (["--dry-run", "--workers", "4"], "--workers is for --local"),  # SLURM runs as many as the array allows
])
def test_an_option_the_target_would_ignore_is_refused(tmp_path, real_records, smoke_model, options, named):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))], smoke_model, 10)
    for command in (("submit", tmp_path / "run-manifest.json", "-o", tmp_path / "new", "--model", smoke_model),
                    ("resume", paths.root)):
        assert_one_line_error(capsfus(*command, *options, check=False), named)
    assert not (tmp_path / "new").exists() and not paths.progress(0).exists()


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(capsfus("status", tmp_path, check=False), "not a run folder")


@pytest.mark.parametrize("command", [[], ["manifest", "build"], ["submit"], ["resume"], ["work"], ["status"],
                                     ["reduce"], ["smoke-model"], ["demo"]])
def test_every_command_has_help_with_an_example(command):
    result = capsfus(*command, "--help")
    assert "Example" in result.stdout


def test_smoke_model_help_says_it_writes_gibberish():
    assert "gibberish" in capsfus("smoke-model", "--help").stdout


MARKED_LLAMA = """import os
from pathlib import Path

from transformers import LlamaForCausalLM


class MarkedLlama(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        Path(os.environ["CAPSFUS_TEST_MARK"]).write_text("the checkpoint's own code ran")
"""


def test_the_run_options_a_user_gives_are_frozen_and_act_in_the_tasks(tmp_path, real_records, monkeypatch):
    """The model smoke-model writes runs; --max-caption-chars, --max-prompt-tokens, --no-prefix-cache,
    --trust-remote-code and --revision reach run.json, and the tasks do what they say."""
    model = tmp_path / "model"
    assert "gibberish" in capsfus("smoke-model", model).stderr  # messages go to stderr, --json to stdout
    assert_one_line_error(capsfus("smoke-model", model, check=False), "model: exists and is not an empty folder")
    records = real_records[:12]
    limit = 75
    too_long = {i for i, r in enumerate(records) if len(r["laion_2b"]) > limit or len(r["laion_coco"]) > limit}
    assert 0 < len(too_long) < len(records)
    capsfus("manifest", "build", write_parquet(tmp_path / "a.parquet", with_urls(records)), "-o", tmp_path / "m.json")
    common = ("--local", "--greedy", "--max-new-tokens", 4)

    capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "cut", "--model", model, *common,
            "--max-caption-chars", limit, "--max-prompt-tokens", 160, "--no-prefix-cache")
    frozen = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (frozen["max_caption_chars"], frozen["max_prompt_tokens"], frozen["prefix_cache"]) == (limit, 160, False)
    capsfus("reduce", tmp_path / "cut", "--final", tmp_path / "cut-final")
    rows = _final_rows(tmp_path / "cut-final")
    input_rejects = {r["row_id"] for r in rows if r["reject_reason"] in ("raw_caption_too_long", "synthetic_caption_too_long")}
    assert input_rejects == too_long
    fused = [r["prompt_tokens"] for r in rows if r["row_id"] not in too_long]
    assert len(fused) == len(records) - len(too_long) and max(fused) <= 160  # cut, not rejected
    refused = capsfus("resume", tmp_path / "cut", "--local", "--prefix-cache", check=False)
    assert refused.returncode == 1 and "prefix_cache: run has False, this command asks for True" in refused.stderr

    # A checkpoint with its own modelling code: run only when asked to.
    remote = tmp_path / "remote"
    shutil.copytree(model, remote)
    (remote / "marked_llama.py").write_text(MARKED_LLAMA)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "marked_llama.MarkedLlama"}}))
    mark = tmp_path / "mark"
    monkeypatch.setenv("CAPSFUS_TEST_MARK", str(mark))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "untrusted", "--model", remote, *common)
    assert not mark.exists() and json.loads((tmp_path / "untrusted" / "run.json").read_text())["trust_remote_code"] is False
    capsfus("reduce", tmp_path / "untrusted", "--final", tmp_path / "untrusted-final")
    assert max(r["prompt_tokens"] for r in _final_rows(tmp_path / "untrusted-final")) > 160  # the default cut is 256
    capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "trusted", "--model", remote, *common, "--trust-remote-code")
    assert mark.exists() and json.loads((tmp_path / "trusted" / "run.json").read_text())["trust_remote_code"] is True

    # A revision is a hub id's; a local folder is identified by its files.
    assert_one_line_error(capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "rev", "--model", model, "--revision",
                                  "v1", *common, check=False), "--revision v1: --model ", "is a local folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the task fails to fetch it, after run.json is written
    hub = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "hub", "--model", "capsfus-test/absent", "--revision",
                  "v1", *common, check=False)
    assert hub.returncode == 1 and "1 task(s) failed" in hub.stderr
    assert json.loads((tmp_path / "hub" / "run.json").read_text())["model_revision"] == "v1"
    again = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "hub", "--model", "capsfus-test/absent", "--revision",
                    "v2", *common, check=False)
    assert again.returncode == 1 and "model_revision: run has 'v1', this command asks for 'v2'" in again.stderr


def test_a_hub_id_is_pinned_to_the_commit_of_its_cached_snapshot(tmp_path, real_records, smoke_model, monkeypatch):
    """Without the pin, each task loads whatever the cache's (or the hub's) main names when it starts."""
    commit, later = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--capsfus-test--tiny"
    shutil.copytree(smoke_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsfus("manifest", "build", write_parquet(tmp_path / "a.parquet", with_urls(real_records[:4])), "-o", tmp_path / "m.json")
    common = ("--local", "--greedy", "--max-new-tokens", 4)
    capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "capsfus-test/tiny", *common)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model_revision"] == commit
    assert json.loads(capsfus("status", tmp_path / "run", "--json").stdout)["counts"]["done"] == 1
    # The cache's main moves on (a new download): the run's model is no longer what main names.
    shutil.copytree(smoke_model, repo / "snapshots" / later)
    (repo / "refs" / "main").write_text(later)
    moved = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "capsfus-test/tiny", *common,
                    check=False)
    assert moved.returncode == 1 and f"model_revision: run has '{commit}', this command asks for '{later}'" in moved.stderr
    capsfus("resume", tmp_path / "run", "--local")  # the run's own commit, still in the cache


def _final_rows(final) -> list[dict]:
    """Every row of a final folder: the data (reject_reason None) and the rejects."""
    data = pq.read_table(final / DATA_FILE).to_pylist()
    return [{**r, "reject_reason": None} for r in data] + pq.read_table(final / REJECTS_FILE).to_pylist()


def test_options_given_override_the_profile_and_shards_are_grouped_per_task(tmp_path, real_records, smoke_model):
    """--profile fills what the command line leaves out, in both sbatch resources and generation;
    --shards-per-task packs consecutive shards into one array task; the estimate counts the GPUs."""
    profile = tmp_path / "mine.toml"
    profile.write_text('description = "a test"\n[slurm]\ncpus = 1\nmem = "2G"\ntime = "00:30:00"\n'
                       '[generation]\nbatch_size = 16\nwindow_rows = 32\ndtype = "fp32"\n')
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:80]))
    capsfus("manifest", "build", source, "-o", tmp_path / "m.json", "--rows-per-shard", 10)
    plan = json.loads(capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", smoke_model,
                              "--profile", profile, "--mem", "3G", "--shards-per-task", 3, "--samples-per-s", 4,
                              "--dry-run", "--json").stdout)
    assert plan["arrays"] == [[[0, 1, 2], [3, 4, 5], [6, 7]]]
    script = plan["scripts"][0]
    for line in ("--array=0-2%3", "--cpus-per-task=1", "--mem=3G", "--time=30"):
        assert f"#SBATCH {line}\n" in script, line
    assert plan["estimate"] == {"rows": 80, "samples_per_s": 4.0, "gpus_per_task": 0, "gpu_hours": round(80 / 4 / 3600, 2)}
    assert plan["warnings"] == ["no GPU requested: the tasks get CPUs only; give --gpus N, or a --profile that sets gpus"]
    two = json.loads(capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", smoke_model,
                             "--gpus", 2, "--samples-per-s", 0.01, "--dry-run", "--json", "--mem", "3G",
                             "--sbatch-arg=--comment=fusion", "--then-reduce", tmp_path / "final", check=False).stdout)
    assert two["estimate"]["gpus_per_task"] == 2 and two["estimate"]["gpu_hours"] == round(80 / 0.01 / 3600 * 2, 2)
    assert two["warnings"] == []
    fusion, reduce_script = two["scripts"]  # the reduce job: the fusion jobs' resources, without their GPUs
    assert "#SBATCH --gpus-per-node=2\n" in fusion and "gpus" not in reduce_script
    assert "#SBATCH --requeue\n" in fusion and "requeue" not in reduce_script  # whatever the cluster's JobRequeue
    assert all(f"#SBATCH {line}\n" in reduce_script for line in ("--mem=3G", "--comment=fusion"))

    few = write_parquet(tmp_path / "b.parquet", with_urls(real_records[:4]))
    capsfus("manifest", "build", few, "-o", tmp_path / "few.json")
    capsfus("submit", tmp_path / "few.json", "-o", tmp_path / "local", "--model", smoke_model, "--profile", profile,
            "--batch-size", 4, "--greedy", "--max-new-tokens", 4, "--local")
    frozen = json.loads((tmp_path / "local" / "run.json").read_text())
    assert (frozen["batch_size"], frozen["window_rows"], frozen["dtype"]) == (4, 32, "fp32")


def test_a_slurm_submit_whose_inputs_changed_since_the_manifest_is_refused_before_any_job(tmp_path, real_records):
    kept, lost = (write_parquet(tmp_path / f"{name}.parquet", with_urls(real_records[:8])) for name in ("kept", "lost"))
    capsfus("manifest", "build", kept, lost, "-o", tmp_path / "m.json", "--rows-per-shard", 4)
    lost.unlink()
    for mode in ("--dry-run", "--mem=1G"):
        result = capsfus("submit", tmp_path / "m.json", "-o", tmp_path / "run", "--model", "x", mode, check=False)
        assert_one_line_error(result, "1 input file(s) of the shards to run changed since the manifest was built",
                              f"{lost} was deleted")
    assert not (tmp_path / "run").exists()


def test_with_json_an_error_is_a_json_document_on_stdout_too(tmp_path):
    for command in (["status", tmp_path / "nothere", "--json"], ["reduce", tmp_path / "nothere", "--final",
                                                                  tmp_path / "f", "--json"]):
        result = capsfus(*command, check=False)
        assert_one_line_error(result, "not a run folder")
        assert json.loads(result.stdout) == {"error": result.stderr.strip().removeprefix("error: ")}
    without = capsfus("status", tmp_path / "nothere", check=False)
    assert without.returncode == 1 and without.stdout == ""


def test_a_resume_dry_run_plans_and_counts_a_damaged_shard(tmp_path, real_records):
    from .conftest import run_with_official_captions

    records = real_records[:12]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(records))], "-", 4, chunk_rows=2)
    run_with_official_captions(paths, records)
    paths.part(1, 0).unlink()
    plan = json.loads(capsfus("resume", paths.root, "--dry-run", "--json").stdout)
    assert plan["arrays"] == [[[1]]] and plan["estimate"]["rows"] == 4  # not 0: the shard's rows are fused again
