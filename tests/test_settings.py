import json

import pytest

from capsfus_hpc import __version__
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.manifest import build_manifest
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.settings import load_run, open_or_create, requested_settings

from .conftest import with_urls, write_parquet


@pytest.fixture
def manifest_path(tmp_path, real_records):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:40]))
    path = tmp_path / "m.json"
    build_manifest([source], path, 20)
    return path


def test_first_command_freezes_every_setting(tmp_path, manifest_path, smoke_model):
    paths = RunPaths(tmp_path / "run")
    settings = open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None, batch_size=8), {"batch_size"})
    frozen = json.loads(paths.run_config.read_text())
    assert frozen == settings.as_dict()
    assert frozen["batch_size"] == 8 and frozen["num_beams"] == 3 and frozen["max_new_tokens"] == 80
    assert frozen["model"] == str(smoke_model) and frozen["model_revision"].startswith("local:")
    assert frozen["columns"] == {"raw_caption": "laion_2b", "synthetic_caption": "laion_coco", "key": "image_url"}
    assert len(frozen["prompt_template_sha256"]) == 64 and frozen["package_version"] == __version__
    assert frozen["trust_remote_code"] is False


def test_later_command_with_other_settings_is_refused_naming_each_field(tmp_path, manifest_path, smoke_model):
    paths = RunPaths(tmp_path / "run")
    open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None, batch_size=8), {"batch_size"})
    again = requested_settings(manifest_path, "some/other-model", None, num_beams=1, batch_size=8)
    with pytest.raises(CapsfusError) as refused:
        open_or_create(paths, again, {"num_beams", "batch_size"})
    message = str(refused.value)
    assert "model: run has" in message and "'some/other-model'" in message
    assert "num_beams: run has 3, this command asks for 1" in message
    assert "batch_size" not in message


def test_options_not_given_are_inherited(tmp_path, manifest_path, smoke_model):
    paths = RunPaths(tmp_path / "run")
    open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None, batch_size=8), {"batch_size"})
    settings = open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None), set())
    assert settings.batch_size == 8


def test_a_manifest_changed_after_the_run_started_is_refused(tmp_path, manifest_path, smoke_model, real_records):
    paths = RunPaths(tmp_path / "run")
    open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None), set())
    load_run(paths)
    with pytest.raises(CapsfusError, match="exists already, and runs started from it refuse a changed one"):
        build_manifest([write_parquet(tmp_path / "b.parquet", with_urls(real_records[:10]))], manifest_path, 20)
    load_run(paths)  # untouched
    build_manifest([tmp_path / "b.parquet"], manifest_path, 20, replace=True)
    with pytest.raises(CapsfusError, match=r"changed since the run started \(its sha256 was [0-9a-f]{12}\.\.\.\); "
                                           "put that manifest back"):
        load_run(paths)


def test_a_folder_without_run_json_is_named(tmp_path):
    with pytest.raises(CapsfusError, match="not a run folder"):
        load_run(RunPaths(tmp_path))


def test_a_local_model_is_identified_by_its_weights_not_only_their_sizes(tmp_path, smoke_model):
    import shutil

    from capsfus_hpc.settings import model_revision

    copy = tmp_path / "copy"
    shutil.copytree(smoke_model, copy)
    assert model_revision(str(copy), None) == model_revision(str(smoke_model), None)  # a copy is the same model
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # re-saved weights of the same shape: same size, other values
    weights.write_bytes(bytes(data))
    assert model_revision(str(copy), None) != model_revision(str(smoke_model), None)
    big = copy / "model-00001-of-00002.safetensors"
    big.write_bytes(bytes(8 * 2**20))
    before = model_revision(str(copy), None)
    with big.open("r+b") as handle:
        handle.write(b"\x01")  # a large file is sampled at both ends
    assert model_revision(str(copy), None) != before


def test_a_model_path_that_holds_no_model_is_refused_before_the_run_is_frozen(tmp_path, manifest_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    for model, what in ((tmp_path / "weights.safetensors", "a file"), (tmp_path / "empty", "a folder without config.json")):
        with pytest.raises(CapsfusError, match=rf"--model {model}: {what}, not a model folder"):
            requested_settings(manifest_path, str(model), None)


def test_a_run_json_that_is_not_a_runs_settings_is_named(tmp_path, manifest_path, smoke_model):
    paths = RunPaths(tmp_path / "run")
    open_or_create(paths, requested_settings(manifest_path, str(smoke_model), None), set())
    frozen = json.loads(paths.run_config.read_text())
    del frozen["manifest_sha256"]
    paths.run_config.write_text(json.dumps(frozen))
    with pytest.raises(CapsfusError, match=r"run.json: not a run's settings \(lacks \['manifest_sha256'\]\)"):
        load_run(paths)
    paths.run_config.write_text("[1]")
    with pytest.raises(CapsfusError, match=r"run.json: not a run's settings \(lacks everything: it is not an object\)"):
        load_run(paths)
