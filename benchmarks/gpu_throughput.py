"""Fusion throughput: the reference recipe, our faithful mode and our fast mode, side by side,
against the hardware's limit; and what everything but the model costs per row.

On a GPU it builds a random-weight model of CapsFus-LLaMA's shape (LLaMA-2-13B: 40 layers,
hidden 5120, 40 heads, intermediate 13824, vocab 32001) directly on the device in bf16, no
download. Prompts are token ids with the lengths real ones would have: the fixed instruction is
about 100 tokens and LLaMA's tokenizer gives about one token per 4 characters of the two
captions of each record in ../shared/data/capsfusion_example_5k.json. Random weights never stop
on their own, so every mode generates exactly 40 tokens (min_new_tokens = max_new_tokens = 40),
about the mean length of the official fused captions: the reference's max_new_tokens=80 only
matters with real weights.

  (a) reference: capsfusion_inference.py's recipe: batches of 4 in input order, padded to 256
      tokens, num_beams=3
  (b) faithful:  our engine (length-sorted batches, no fixed padding, the instruction's KV cache
      computed once), num_beams=3
  (c) fast:      our engine, greedy
and, to show what the instruction's KV cache buys, faithful and fast without it. Every prompt
starts with the same instruction tokens, as real ones do.

The limit: each mode's FLOPs at the GPU's measured bf16 matmul TFLOP/s, or its weight reads
(once per decoding step of a batch) at the measured copy bandwidth, whichever takes longer.

    python benchmarks/gpu_throughput.py --json results.json          # on a GPU
    python benchmarks/gpu_throughput.py --smoke --json results.json  # on CPU, the smoke model's shape (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.engine import EOS as FINISHED
from capsfus_hpc.engine import FusionEngine
from capsfus_hpc.manifest import build_manifest
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.prompt import PromptBuilder
from capsfus_hpc.settings import load_run, open_or_create, requested_settings
from capsfus_hpc.smoke import build_smoke_model
from capsfus_hpc.worker import run_shard

EXAMPLES = Path(os.environ.get("CAPSFUS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / \
    "capsfusion_example_5k.json"
SHAPE_13B = dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=40,
                 intermediate_size=13824, vocab_size=32001)
SHAPE_SMOKE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=176, vocab_size=1024)
INSTRUCTION_TOKENS = 100
CHARS_PER_TOKEN = 4
MAX_PROMPT_TOKENS = 256
NEW_TOKENS = 40
BOS, EOS, PAD = 1, 2, 0


def prompt_lengths(records: list[dict], count: int) -> list[int]:
    return [min(MAX_PROMPT_TOKENS, INSTRUCTION_TOKENS + 1 + (len(r["laion_2b"]) + len(r["laion_coco"])) // CHARS_PER_TOKEN)
            for r in records[:count]]


def random_prompts(lengths: list[int], vocab: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Prompts of these lengths that all start with the same instruction, and the instruction."""
    rng = random.Random(seed)
    instruction = [BOS] + [rng.randrange(3, vocab) for _ in range(INSTRUCTION_TOKENS - 1)]
    return [instruction + [rng.randrange(3, vocab) for _ in range(n - INSTRUCTION_TOKENS)] for n in lengths], instruction


def build_model(shape: dict, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(**shape, max_position_embeddings=512, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


class _Ids:
    """The engine's tokenizer, for prompts that are token ids already: it only decodes, and the
    text of random tokens is nobody's business, so it decodes to the empty string."""

    eos_token_id, pad_token_id = EOS, PAD

    def decode(self, tokens, skip_special_tokens=True) -> str:
        return ""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def reference_recipe(model, prompts: list[list[int]], device: str) -> None:
    for begin in range(0, len(prompts), 4):
        batch = prompts[begin:begin + 4]
        input_ids = torch.full((len(batch), MAX_PROMPT_TOKENS), PAD, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, MAX_PROMPT_TOKENS - len(ids):] = torch.tensor(ids)
            mask[row, MAX_PROMPT_TOKENS - len(ids):] = 1
        model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), num_beams=3,
                       max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD,
                       eos_token_id=EOS)


def engine_mode(model, prompts: list[list[int]], beams: int, batch_size: int, batch_tokens: int | None,
                prefix: list[int] | None) -> None:
    engine = FusionEngine(model, _Ids(), beams, NEW_TOKENS, MAX_PROMPT_TOKENS, batch_size, batch_tokens, prefix)
    engine.min_new_tokens = NEW_TOKENS
    engine.fuse_encoded(prompts)


def timed(run, device: str) -> float:
    _sync(device)
    began = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - began


def hardware(device: str, dtype: torch.dtype, smoke: bool) -> dict:
    """Measured matmul TFLOP/s in the model's dtype and copy bandwidth in GB/s."""
    n = 1024 if smoke else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    repeats = 3 if smoke else 20
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device) / repeats
    tflops = 2 * n ** 3 / seconds / 1e12
    block = torch.empty((64 if smoke else 1024) * 2**20, dtype=torch.uint8, device=device)
    block.clone()
    seconds = timed(lambda: [block.clone() for _ in range(repeats)], device) / repeats
    return {"matmul_tflops": round(tflops, 2), "copy_gb_s": round(2 * block.numel() / seconds / 1e9, 1)}


def limit_samples_per_s(params: int, weight_bytes: int, prompt_tokens: float, beams: int, batch: int,
                        hw: dict, padded_to: int | None = None) -> float:
    """Samples/s if the mode ran at the matmul rate, or at the copy rate for its weight reads.
    prompt_tokens are those the mode computes: without the instruction where its cache is reused."""
    prompt = padded_to or prompt_tokens
    flops = 2 * params * (prompt * beams + NEW_TOKENS * beams)  # beams widen the prompt too, as generate does
    compute_s = flops / (hw["matmul_tflops"] * 1e12)
    memory_s = weight_bytes * NEW_TOKENS / batch / (hw["copy_gb_s"] * 1e9)
    return 1 / max(compute_s, memory_s)


def overhead_us_per_row(rows: int) -> float:
    """Reading, validating, tokenising (the smoke model's BPE tokenizer standing in for LLaMA's),
    building and committing parts: a whole shard through the worker, the model answering at once."""
    records = json.loads(EXAMPLES.read_text())
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = build_smoke_model(folder / "model")
        table = pa.Table.from_pylist([{"image_url": f"https://example.org/{i}.jpg",
                                       "laion_2b": records[i % len(records)]["laion_2b"],
                                       "laion_coco": records[i % len(records)]["laion_coco"]} for i in range(rows)])
        pq.write_table(table, folder / "in.parquet")
        build_manifest([folder / "in.parquet"], folder / "m.json", rows, ColumnMapping())
        paths = RunPaths(folder / "run")
        open_or_create(paths, requested_settings(folder / "m.json", str(model), None), set())
        settings, manifest = load_run(paths)
        prompts = PromptBuilder(AutoTokenizer.from_pretrained(model), settings.max_prompt_tokens)

        class Instant:
            def fuse(self, pairs, before_batch=None):
                prompts.encode(pairs)
                return [SimpleNamespace(fused_caption="A fused caption.", finish_reason=FINISHED,
                                        prompt_tokens=150, completion_tokens=40) for _ in pairs]

        engine = Instant()
        began = time.perf_counter()
        run_shard(paths, settings, manifest, 0, lambda: engine)
        return (time.perf_counter() - began) / rows * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the smoke model's shape on CPU, small sizes")
    parser.add_argument("--samples", type=int, help="prompts per mode (default: 512 on GPU, 24 with --smoke)")
    parser.add_argument("--faithful-batch", type=int, help="(default: 64 on GPU, 8 with --smoke)")
    parser.add_argument("--fast-batch", type=int, help="(default: 256 on GPU, 16 with --smoke)")
    parser.add_argument("--batch-tokens", type=int, help="token budget per batch for faithful and fast (default: off)")
    parser.add_argument("--overhead-rows", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = SHAPE_SMOKE if args.smoke else SHAPE_13B
    samples = args.samples or (24 if args.smoke else 512)
    faithful_batch = args.faithful_batch or (8 if args.smoke else 64)
    fast_batch = args.fast_batch or (16 if args.smoke else 256)

    lengths = prompt_lengths(json.loads(EXAMPLES.read_text()), samples)
    prompts, instruction = random_prompts(lengths, shape["vocab_size"])
    model = build_model(shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    hw = hardware(device, dtype, args.smoke)
    warm = prompts[:4]
    reference_recipe(model, warm, device)
    # name: (run, beams, batch, padded to, the instruction's KV cache reused)
    modes = {
        "reference": (lambda: reference_recipe(model, prompts, device), 3, 4, MAX_PROMPT_TOKENS, False),
        "faithful": (lambda: engine_mode(model, prompts, 3, faithful_batch, args.batch_tokens, instruction), 3,
                     faithful_batch, None, True),
        "fast": (lambda: engine_mode(model, prompts, 1, fast_batch, args.batch_tokens, instruction), 1, fast_batch,
                 None, True),
        "faithful-noprefix": (lambda: engine_mode(model, prompts, 3, faithful_batch, args.batch_tokens, None), 3,
                              faithful_batch, None, False),
        "fast-noprefix": (lambda: engine_mode(model, prompts, 1, fast_batch, args.batch_tokens, None), 1, fast_batch,
                          None, False),
    }
    mean_prompt = sum(lengths) / len(lengths)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
              "date": datetime.date.today().isoformat(), "shape": "smoke" if args.smoke else "LLaMA-2-13B",
              "dtype": str(dtype).replace("torch.", ""), "params": params, "samples": samples,
              "mean_prompt_tokens": round(mean_prompt, 1), "new_tokens": NEW_TOKENS, "batch_tokens": args.batch_tokens,
              "hardware": hw, "modes": {}}
    for name, (run, beams, batch, padded, reused) in modes.items():
        seconds = timed(run, device)
        rate = samples / seconds
        computed = mean_prompt - len(instruction) if reused else mean_prompt
        limit = limit_samples_per_s(params, weight_bytes, computed, beams, batch, hw, padded)
        result["modes"][name] = {"batch": batch, "beams": beams, "seconds": round(seconds, 2),
                                 "samples_per_s": round(rate, 2), "tokens_per_s": round(rate * NEW_TOKENS, 1),
                                 "limit_samples_per_s": round(limit, 2), "fraction_of_limit": round(rate / limit, 3)}
    reference = result["modes"]["reference"]["samples_per_s"]
    for name in modes.keys() - {"reference"}:
        result["modes"][name]["vs_reference"] = round(result["modes"][name]["samples_per_s"] / reference, 2)
    result["overhead_us_per_row"] = round(overhead_us_per_row(args.overhead_rows), 1)

    print(f"{result['device']}, {result['shape']} ({params / 1e9:.2f}B parameters, {result['dtype']}), "
          f"{samples} prompts of {mean_prompt:.0f} tokens on average, {NEW_TOKENS} new tokens each")
    print(f"hardware: {hw['matmul_tflops']} TFLOP/s matmul, {hw['copy_gb_s']} GB/s copy")
    print(f"{'mode':17} {'batch':>5} {'beams':>5} {'samples/s':>10} {'tokens/s':>10} {'limit':>9} {'of limit':>8} "
          f"{'vs ref':>7}")
    for name, m in result["modes"].items():
        print(f"{name:17} {m['batch']:>5} {m['beams']:>5} {m['samples_per_s']:>10} {m['tokens_per_s']:>10} "
              f"{m['limit_samples_per_s']:>9} {m['fraction_of_limit']:>8} {m.get('vs_reference', 1.0):>7}")
    print(f"everything but the model: {result['overhead_us_per_row']} us per row (target <= 200)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
