import json

from capsfus_hpc import ledger


def test_submissions_append_and_read_back_skipping_a_torn_line(tmp_path):
    path = tmp_path / "jobs.jsonl"
    ledger.append(path, "40", ledger.FUSE, [("40_0", [0, 1]), ("40_1", [2])])
    ledger.append(path, "41", ledger.FUSE, [("41", [1])])
    with open(path, "a") as handle:
        handle.write('{"job_id": "42", "ki')
    entries = ledger.read(path)
    assert [e.job_id for e in entries] == ["40", "41"]
    assert entries[0].tasks == (("40_0", (0, 1)), ("40_1", (2,)))
    assert ledger.latest_task_of_shard(entries) == {0: "40_0", 1: "41", 2: "40_1"}
    ledger.append(path, "43", ledger.FUSE, [("43", [2])])  # after the torn line, on a line of its own
    assert [e.job_id for e in ledger.read(path)] == ["40", "41", "43"]


def test_a_reduce_entry_keeps_its_final_folder_and_stage_and_fusion_lines_stay_as_they_were(tmp_path):
    path = tmp_path / "jobs.jsonl"
    ledger.append(path, "40", ledger.FUSE, [("40_0", [0])])
    ledger.append(path, "41", ledger.REDUCE, [("41", [])], final="/data/final")
    ledger.append(path, "42", ledger.REDUCE, [("42_0", [])], final="/data/final", stage="keys")
    fuse, whole, stage = ledger.read(path)
    assert (whole.final, whole.stage, stage.final, stage.stage) == ("/data/final", None, "/data/final", "keys")
    assert set(json.loads(path.read_text().splitlines()[0])) == {"job_id", "kind", "submitted_at", "tasks", "slurm"}


def test_a_task_id_names_its_job():
    assert [ledger.job_of(task) for task in ("40_3", "40", "40_12")] == ["40", "40", "40"]
