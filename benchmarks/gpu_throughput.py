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
and, to show what the instruction's KV cache buys, faithful and fast without it; to show what
allocating each batch's KV cache once buys (capsfus_hpc/kv_cache.py), faithful and fast on
transformers' DynamicCache (-dynamic). Every prompt starts with the same instruction tokens, as
real ones do. Two candidates for the fast mode that
the engine does not use, to decide whether it should:
  fast-continuous: transformers' continuous batching (paged attention, pages of 32 tokens so the
      instruction's pages are shared, CUDA graphs on a GPU), greedy
  fast-static:     generate with a static KV cache (torch.compile of the decoding step on a GPU),
      greedy, no prefix reuse, a fixed batch size and cache length so it compiles once; the
      compilation is timed apart
On a GPU the engine's batches follow a token budget, what fits in 80% of the memory free once
the model is built (capsfus_hpc/batching.py), as `submit` does by default; the batch column is
then the mean batch. The JSON file is rewritten after each mode, so a run cut short keeps what
it measured.

The limit: each mode's FLOPs at the GPU's measured bf16 matmul TFLOP/s, or its weight reads
(once per decoding step of a batch) at the measured copy bandwidth, whichever takes longer.

    python benchmarks/gpu_throughput.py --json results.json          # on a GPU
    python benchmarks/gpu_throughput.py --smoke --json results.json  # on CPU, the smoke model's shape (CI)
    python benchmarks/gpu_throughput.py --modes fast,fast-static --json results.json
    python benchmarks/gpu_throughput.py --shape mid --samples 64 --faithful-batch 16 --fast-batch 64 \
        --modes faithful,faithful-dynamic,fast,fast-dynamic                  # KV-cache copies, on CPU
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import StaticCache
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from capsfus_hpc.batching import batch_size_at, gpu_batch_tokens
from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.engine import FusionEngine
from capsfus_hpc.kv_cache import CACHE_KEYWORD
from capsfus_hpc.manifest import build_manifest
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.settings import load_run, open_or_create, requested_settings
from capsfus_hpc.smoke import build_smoke_model
from capsfus_hpc.worker import run_shard

EXAMPLES = Path(os.environ.get("CAPSFUS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / \
    "capsfusion_example_5k.json"
SHAPE_13B = dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=40,
                 intermediate_size=13824, vocab_size=32001)
# A CPU can measure what does not depend on a GPU's speed, such as copies of the KV cache, at this size.
SHAPE_MID = dict(num_hidden_layers=8, hidden_size=1024, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=4096)
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
    """Prompts of these lengths that all start with the same instruction (whatever the seed), and
    the instruction."""
    instruction_rng, rng = random.Random(0), random.Random(seed + 1)
    instruction = [BOS] + [instruction_rng.randrange(3, vocab) for _ in range(INSTRUCTION_TOKENS - 1)]
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

    def batch_decode(self, sequences, skip_special_tokens=True) -> list[str]:
        return [""] * len(sequences)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _left_padded(batch: list[list[int]], width: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(batch), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def reference_recipe(model, prompts: list[list[int]], device: str) -> None:
    for begin in range(0, len(prompts), 4):
        input_ids, mask = _left_padded(prompts[begin:begin + 4], MAX_PROMPT_TOKENS, device)
        model.generate(input_ids=input_ids, attention_mask=mask, num_beams=3, max_new_tokens=NEW_TOKENS,
                       min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)


def engine_mode(model, prompts: list[list[int]], beams: int, batch_size: int, batch_tokens: int | None,
                prefix: list[int] | None, preallocate: bool = True) -> dict:
    engine = FusionEngine(model, _Ids(), beams, NEW_TOKENS, MAX_PROMPT_TOKENS, batch_size, batch_tokens, prefix)
    engine.min_new_tokens = NEW_TOKENS
    engine.preallocate = preallocate
    engine.fuse_encoded(prompts)
    return {"batch_tokens_after_oom": engine.fitted_tokens} if engine.fitted_tokens is not None else {}


def mean_batch(lengths: list[int], cap: int, budget: int | None, beams: int) -> float:
    """The engine's mean batch over these prompts (out of memory aside)."""
    ordered, batches, begin = sorted(lengths), 0, 0
    while begin < len(ordered):
        begin += batch_size_at(ordered, begin, cap, budget, beams, NEW_TOKENS)
        batches += 1
    return len(ordered) / batches


class StaticCacheMode:
    """Greedy generate on one static cache, reset between batches, longest prompts first, every
    batch `batch` rows (the last padded with repeats), the cache MAX_PROMPT_TOKENS + NEW_TOKENS
    long: one shape at one address, so on a GPU torch.compile compiles the decoding step and
    records its CUDA graphs once (in the warm-up)."""

    def __init__(self, model, batch: int, device: str):
        self.model, self.batch, self.device = model, max(1, batch), device
        self.cache = StaticCache(config=model.config, max_cache_len=MAX_PROMPT_TOKENS + NEW_TOKENS)

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]]) -> dict:
        ordered = sorted(prompts, key=len, reverse=True)
        for begin in range(0, len(ordered), self.batch):
            rows = ordered[begin:begin + self.batch]
            rows += [rows[-1]] * (self.batch - len(rows))
            input_ids, mask = _left_padded(rows, len(rows[0]), self.device)
            self.cache.reset()
            self.model.generate(input_ids=input_ids, attention_mask=mask, **{CACHE_KEYWORD: self.cache},
                                max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=PAD, eos_token_id=EOS)
        return {}


def continuous_batching(model, prompts: list[list[int]]) -> dict:
    """transformers' continuous batching, greedy; the manager stays for the next call (warm-up and
    CUDA graphs are paid once, as a task would), pages of 32 tokens so the instruction's are shared.
    Not in inference mode: the manager's thread runs outside it and updates tensors made here."""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=PAD)
    outputs = model.generate_batch(prompts, generation_config=config, persistent_manager=True,
                                   continuous_batching_config=ContinuousBatchingConfig(page_size=32))
    generated = sorted({len(output.generated_tokens) for output in outputs.values()})
    if len(outputs) != len(prompts) or generated != [NEW_TOKENS]:
        raise RuntimeError(f"continuous batching gave {len(outputs)} outputs of {generated} tokens for "
                           f"{len(prompts)} prompts of {NEW_TOKENS}")
    return {}


def timed(run, device: str) -> float:
    _sync(device)
    began = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - began


def hardware(device: str, dtype: torch.dtype, small: bool) -> dict:
    """Measured matmul TFLOP/s in the model's dtype and copy bandwidth in GB/s."""
    n = 1024 if small else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    repeats = 3 if small else 20
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device) / repeats
    tflops = 2 * n ** 3 / seconds / 1e12
    block = torch.empty((64 if small else 1024) * 2**20, dtype=torch.uint8, device=device)
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
    """Everything but the model: reading, validating, tokenising (the smoke model's BPE tokenizer
    standing in for LLaMA's), laying out and padding batches, decoding captions, building and
    committing parts. A whole shard goes through the worker and the engine, whose model answers
    at once with the tokens of an official caption, 40 of them; the model's KV cache (the
    instruction's, copied to every row: memory on the GPU) is not made."""
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
        engine = FusionEngine.load(settings)
        official = " ".join(r["capsfuion_official"] for r in records[:4])
        caption = engine.tokenizer(official, add_special_tokens=False).input_ids[: NEW_TOKENS - 1] + [engine.eos_id]
        answer = torch.tensor([caption])

        def generate(input_ids, **_):
            return torch.cat([input_ids, answer.expand(len(input_ids), -1)], dim=1)

        engine.model.generate = generate
        if engine.prefix is not None:
            engine.prefix.for_rows = lambda rows, capacity=None: None
        began = time.perf_counter()
        run_shard(paths, settings, manifest, 0, lambda: engine)
        return (time.perf_counter() - began) / rows * 1e6


ENGINE_MODES = ("reference", "faithful", "fast", "faithful-noprefix", "fast-noprefix", "faithful-dynamic", "fast-dynamic")
CANDIDATES = ("fast-static", "fast-continuous")  # a failure is recorded, not raised: they are not ours


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the smoke model's shape on CPU, small sizes")
    parser.add_argument("--shape", choices=("13b", "mid"), default="13b",
                        help="without --smoke: LLaMA-2-13B, or 8 layers of hidden 1024 for a CPU (default: 13b)")
    parser.add_argument("--modes", default=",".join(ENGINE_MODES + CANDIDATES),
                        help="comma-separated, measured in this order (default: all)")
    parser.add_argument("--samples", type=int, help="prompts per mode (default: 512 on GPU, 24 with --smoke)")
    parser.add_argument("--reference-samples", type=int,
                        help="prompts for the reference, the slowest by far (default: 128 on GPU, --samples with --smoke)")
    parser.add_argument("--faithful-batch", type=int, help="most prompts a batch (default: 256 on GPU, 8 with --smoke)")
    parser.add_argument("--fast-batch", type=int, help="(default: 512 on GPU, 16 with --smoke)")
    parser.add_argument("--batch-tokens", type=int,
                        help="token budget a batch (default: on GPU what fits in 80%% of free memory, none with --smoke)")
    parser.add_argument("--overhead-rows", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    unknown = set(modes) - set(ENGINE_MODES + CANDIDATES)
    if unknown:
        parser.error(f"unknown modes {', '.join(sorted(unknown))} (known: {', '.join(ENGINE_MODES + CANDIDATES)})")
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape_name = "smoke" if args.smoke else {"13b": "LLaMA-2-13B", "mid": "mid"}[args.shape]
    shape = {"smoke": SHAPE_SMOKE, "LLaMA-2-13B": SHAPE_13B, "mid": SHAPE_MID}[shape_name]
    samples = args.samples or (24 if args.smoke else 512)
    reference_samples = args.reference_samples or (samples if args.smoke else 128)
    faithful_batch = args.faithful_batch or (8 if args.smoke else 256)
    fast_batch = args.fast_batch or (16 if args.smoke else 512)

    records = json.loads(EXAMPLES.read_text())
    lengths = prompt_lengths(records, samples)
    prompts, instruction = random_prompts(lengths, shape["vocab_size"])
    warm_prompts, _ = random_prompts(lengths, shape["vocab_size"], seed=1)  # the same instruction
    model = build_model(shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    hw = hardware(device, dtype, small=device == "cpu")
    budget = args.batch_tokens
    if device == "cuda":
        torch.cuda.empty_cache()
        budget = gpu_batch_tokens(model, budget)  # as the engine sets it when a task loads the model
    static_batch = max(1, min(fast_batch, budget // (MAX_PROMPT_TOKENS + NEW_TOKENS))) if budget else fast_batch
    reference_recipe(model, warm_prompts[:4], device)
    # name: (run, prompts, beams, batch for the limit, padded to, the instruction's KV cache reused)
    table = {
        "reference": (lambda: reference_recipe(model, prompts[:reference_samples], device), reference_samples, 3, 4,
                      MAX_PROMPT_TOKENS, False),
        "faithful": (lambda: engine_mode(model, prompts, 3, faithful_batch, budget, instruction), samples, 3,
                     mean_batch(lengths, faithful_batch, budget, 3), None, True),
        "fast": (lambda: engine_mode(model, prompts, 1, fast_batch, budget, instruction), samples, 1,
                 mean_batch(lengths, fast_batch, budget, 1), None, True),
        "faithful-noprefix": (lambda: engine_mode(model, prompts, 3, faithful_batch, budget, None), samples, 3,
                              mean_batch(lengths, faithful_batch, budget, 3), None, False),
        "fast-noprefix": (lambda: engine_mode(model, prompts, 1, fast_batch, budget, None), samples, 1,
                          mean_batch(lengths, fast_batch, budget, 1), None, False),
        "faithful-dynamic": (lambda: engine_mode(model, prompts, 3, faithful_batch, budget, instruction, False),
                             samples, 3, mean_batch(lengths, faithful_batch, budget, 3), None, True),
        "fast-dynamic": (lambda: engine_mode(model, prompts, 1, fast_batch, budget, instruction, False), samples, 1,
                         mean_batch(lengths, fast_batch, budget, 1), None, True),
        "fast-static": (lambda: static_mode(prompts), samples, 1, static_batch, None, False),
        # counted at the fast mode's batch, and as if it computed every prompt token
        "fast-continuous": (lambda: continuous_batching(model, prompts), samples, 1,
                            mean_batch(lengths, fast_batch, budget, 1), None, False),
    }
    static_mode = StaticCacheMode(model, static_batch, device)
    warm_ups = {"fast-static": lambda: static_mode(warm_prompts[:static_batch]),
                "fast-continuous": lambda: continuous_batching(model, warm_prompts)}
    mean_prompt = sum(lengths) / len(lengths)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
              "date": datetime.date.today().isoformat(), "shape": shape_name,
              "dtype": str(dtype).replace("torch.", ""), "params": params, "samples": samples,
              "reference_samples": reference_samples, "mean_prompt_tokens": round(mean_prompt, 1),
              "new_tokens": NEW_TOKENS, "batch_tokens": budget, "hardware": hw,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "modes": {}}
    print(f"{result['device']}, {result['shape']} ({params / 1e9:.2f}B parameters, {result['dtype']}), "
          f"{samples} prompts of {mean_prompt:.0f} tokens on average, {NEW_TOKENS} new tokens each; "
          f"token budget {budget}", flush=True)
    print(f"hardware: {hw['matmul_tflops']} TFLOP/s matmul, {hw['copy_gb_s']} GB/s copy", flush=True)
    print(f"{'mode':17} {'batch':>6} {'beams':>5} {'samples/s':>10} {'tokens/s':>10} {'limit':>9} {'of limit':>8} "
          f"{'vs ref':>7}", flush=True)
    for name in modes:
        run, count, beams, batch, padded, reused = table[name]
        entry = {"batch": round(float(batch), 1), "beams": beams, "samples": count}
        try:
            if name in warm_ups:
                entry["warm_up_seconds"] = round(timed(warm_ups[name], device), 2)
            seconds, extra = timed_with(run, device)
        except Exception as exc:  # noqa: BLE001 - a candidate's failure is a finding
            _release(name, model, device)
            if name not in CANDIDATES:
                raise
            result["modes"][name] = {**entry, "error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"{name:17} failed: {result['modes'][name]['error']}", flush=True)
            _write(args.json, result)
            continue
        _release(name, model, device)
        rate = count / seconds
        computed = mean_prompt - len(instruction) if reused else mean_prompt
        limit = limit_samples_per_s(params, weight_bytes, computed, beams, batch, hw, padded)
        entry.update(extra, seconds=round(seconds, 2), samples_per_s=round(rate, 2),
                     tokens_per_s=round(rate * NEW_TOKENS, 1), limit_samples_per_s=round(limit, 2),
                     fraction_of_limit=round(rate / limit, 3))
        if "reference" in result["modes"] and "samples_per_s" in result["modes"]["reference"]:
            entry["vs_reference"] = round(rate / result["modes"]["reference"]["samples_per_s"], 2)
        result["modes"][name] = entry
        print(f"{name:17} {entry['batch']:>6} {beams:>5} {entry['samples_per_s']:>10} {entry['tokens_per_s']:>10} "
              f"{entry['limit_samples_per_s']:>9} {entry['fraction_of_limit']:>8} {entry.get('vs_reference', '-'):>7}",
              flush=True)
        _write(args.json, result)
    result["overhead_us_per_row"] = round(overhead_us_per_row(args.overhead_rows), 1)
    print(f"everything but the model: {result['overhead_us_per_row']} us per row (target <= 200)")
    _write(args.json, result)
    return result


def timed_with(run, device: str) -> tuple[float, dict]:
    extra = {}
    seconds = timed(lambda: extra.update(run() or {}), device)
    return seconds, extra


def _release(mode: str, model, device: str) -> None:
    """Give back what a mode holds, so the next one has the memory the budget was measured with."""
    if mode == "fast-continuous":
        model.destroy_cached_continuous_batching_manager()
    if mode == "fast-static":
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _write(path: Path | None, result: dict) -> None:
    if path:
        path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
