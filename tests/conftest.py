"""Shared fixtures: the real CapsFusion captions from ../shared, the smoke model, small runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.manifest import build_manifest
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.prompt import template
from capsfus_hpc.settings import RunSettings, open_or_create, requested_settings
from capsfus_hpc.smoke import build_smoke_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPSFUS_SHARED", REPO.parent / "shared"))
EXAMPLES_5K = SHARED / "data" / "capsfusion_example_5k.json"
PROMPT_FILE = SHARED / "data" / "capsfusion_prompt.txt"


@pytest.fixture(scope="session")
def real_records() -> list[dict]:
    """The 5,000 real records of the CapsFusion release; a missing ../shared is an error, not a skip."""
    assert EXAMPLES_5K.exists(), f"{EXAMPLES_5K} is missing: tests read the shared data set beside the repo"
    return json.loads(EXAMPLES_5K.read_text())


@pytest.fixture(scope="session")
def pairs(real_records) -> list[tuple[str, str]]:
    """24 real (raw, synthetic) caption pairs."""
    return [(r["laion_2b"], r["laion_coco"]) for r in real_records[:24]]


def load_engine(model: Path, **overrides):
    """The engine as a worker loads it, from settings with these overrides."""
    from capsfus_hpc.engine import FusionEngine

    return FusionEngine.load(RunSettings(manifest="m.json", manifest_sha256="-", model=str(model), model_revision=None,
                                         prompt_template_sha256="-", columns={}, **overrides))


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory) -> Path:
    return build_smoke_model(tmp_path_factory.mktemp("smoke") / "model")


@pytest.fixture(scope="session")
def llama_style(real_records):
    """transformers' LLaMA tokenizer (a space added at the start, the whole text one piece, bytes
    for what the vocabulary lacks) over a vocabulary trained, as SentencePiece trains LLaMA's,
    without tokens that span a space; line breaks are left to the byte tokens, as in LLaMA's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaTokenizer

    corpus = [r["laion_2b"] for r in real_records[:400]] + [r["laion_coco"] for r in real_records[:400]]
    corpus += [template()] * 20
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    bpe.train_from_iterator([text.replace("\n", " ") for text in corpus], trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])
    # LLaMA-2's tokenizer.json starts every text with <s>.
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def write_parquet(path: Path, records: list[dict], row_group_rows: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_rows)
    return path


def with_urls(records: list[dict], duplicate_every: int = 0) -> list[dict]:
    """Real caption pairs with an image_url key; every Nth row repeats the URL of the row before."""
    rows = []
    for i, record in enumerate(records):
        source = i - 1 if duplicate_every and i % duplicate_every == duplicate_every - 1 else i
        rows.append({"image_url": f"https://example.org/{source}.jpg", "laion_2b": record["laion_2b"],
                     "laion_coco": record["laion_coco"]})
    return rows


def make_run(tmp_path: Path, inputs: list[Path], model: Path, rows_per_shard: int, name: str = "run",
             **options) -> RunPaths:
    """A manifest and a run folder frozen with the given options (greedy unless told otherwise)."""
    manifest_path = tmp_path / f"{name}-manifest.json"
    build_manifest(inputs, manifest_path, rows_per_shard, ColumnMapping())
    options.setdefault("num_beams", 1)
    paths = RunPaths(tmp_path / name)
    open_or_create(paths, requested_settings(manifest_path, str(model), None, **options), set(options))
    return paths


class ReplayEngine:
    """Answers with the official CapsFusion caption of each pair: real fused captions, as the
    released model wrote them, for tests of what happens to captions after the model."""

    def __init__(self, records: list[dict]):
        self.official = {(r["laion_2b"], r["laion_coco"]): r["capsfuion_official"] for r in records}

    def fuse(self, pairs, before_batch=None):
        from capsfus_hpc.engine import EOS, Fusion

        return [Fusion(self.official[pair], EOS, 100, 30) for pair in pairs]


def run_with_official_captions(paths: RunPaths, records: list[dict]) -> None:
    """Every shard of the run through the real worker and commit path, the model replaced by the release."""
    from capsfus_hpc.settings import load_run
    from capsfus_hpc.worker import run_shard

    settings, manifest = load_run(paths)
    engine = ReplayEngine(records)
    for shard in reversed(manifest.shards):  # finishing order must not matter
        run_shard(paths, settings, manifest, shard.id, lambda: engine)
