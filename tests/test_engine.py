import json
import shutil
import warnings

import pytest

from capsfus_hpc.engine import EOS, LENGTH, FusionEngine
from capsfus_hpc.faults import FAULT_ENV

from .conftest import load_engine


def test_smoke_model_loads_through_from_pretrained_and_fuses_in_input_order(smoke_model, pairs):
    engine = load_engine(smoke_model, batch_size=5, max_new_tokens=20)
    fusions = engine.fuse(pairs)
    assert len(fusions) == len(pairs)
    prompt_lengths = [len(ids) for ids in engine.prompts.encode(pairs)]
    assert [f.prompt_tokens for f in fusions] == prompt_lengths
    for fusion in fusions:
        assert fusion.fused_caption == fusion.fused_caption.strip()
        assert fusion.finish_reason in (EOS, LENGTH)
        if fusion.finish_reason == LENGTH:
            assert fusion.completion_tokens == 20
        else:
            assert 1 <= fusion.completion_tokens <= 20
    assert {f.finish_reason for f in fusions} == {EOS, LENGTH}, "the smoke model should exercise both"


def test_generation_is_deterministic(smoke_model, pairs):
    engine = load_engine(smoke_model, batch_size=8, max_new_tokens=16)
    assert engine.fuse(pairs) == engine.fuse(pairs)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_ignores_the_sampling_a_checkpoint_s_generation_config_asks_for(smoke_model, pairs, tmp_path, beams):
    """LLaMA-2's own generation_config.json says do_sample with temperature 0.6 and top_p 0.9; a
    fine-tune saved from it carries that along. Decoding stays greedy or beam search: the same
    captions under any seed, and the same as a checkpoint that asks for nothing."""
    import torch

    sampling = tmp_path / "sampling"
    shutil.copytree(smoke_model, sampling)
    config = json.loads((sampling / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.6, top_p=0.9, top_k=5)
    (sampling / "generation_config.json").write_text(json.dumps(config))
    engine = load_engine(sampling, batch_size=8, max_new_tokens=12, num_beams=beams)
    assert engine.model.generation_config.do_sample  # the checkpoint's request did arrive
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(engine.fuse(pairs[:8]))
    assert runs[0] == runs[1] == load_engine(smoke_model, batch_size=8, max_new_tokens=12, num_beams=beams).fuse(pairs[:8])


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("beams", [1, 3])
def test_generation_uses_no_deprecated_argument_of_the_installed_transformers(smoke_model, pairs, prefix_cache,
                                                                               beams, monkeypatch):
    from transformers.utils import generic

    said = []  # transformers' own deprecation notes (its logger, once a process): none may come from us
    monkeypatch.setattr(generic.logger, "warning_once", lambda message, *args: said.append(message))
    engine = load_engine(smoke_model, batch_size=8, max_new_tokens=8, num_beams=beams, prefix_cache=prefix_cache)
    with warnings.catch_warnings():  # a deprecated argument warns on every batch, in every task's log
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        assert len(engine.fuse(pairs[:8])) == 8
    assert said == []


def test_reference_defaults_and_cpu_dtype(smoke_model):
    engine = load_engine(smoke_model)
    assert (engine.num_beams, engine.max_new_tokens, engine.prompts.max_tokens) == (3, 80, 256)
    assert str(engine.model.dtype) == "torch.float32"
    assert engine.tokenizer.padding_side == "left"


def test_a_tokenizer_without_pad_token_pads_with_eos(smoke_model, pairs):
    engine = load_engine(smoke_model, num_beams=1, max_new_tokens=8)
    engine.tokenizer.pad_token = None
    fallback = FusionEngine(engine.model, engine.tokenizer, 1, 8, 256, 4)
    assert fallback.pad_id == engine.tokenizer.eos_token_id
    assert len(fallback.fuse(pairs[:6])) == 6


def test_the_engine_batches_by_its_token_budget(smoke_model, pairs):
    engine = load_engine(smoke_model, num_beams=1, max_new_tokens=8, batch_size=64,
                                         batch_tokens=1_500)
    sizes, generate = [], engine._generate
    engine._generate = lambda prompts: (sizes.append((len(prompts), max(map(len, prompts)))), generate(prompts))[1]
    assert len(engine.fuse(pairs)) == len(pairs)
    assert sum(n for n, _ in sizes) == len(pairs) and len(sizes) > 1
    assert all(n * (longest + 8) <= 1_500 or n == 1 for n, longest in sizes)
    assert sizes[0][0] > sizes[-1][0]  # short prompts first, more of them to a batch


def test_out_of_memory_halves_the_token_budget_and_short_prompts_keep_large_batches(smoke_model, pairs, monkeypatch):
    engine = load_engine(smoke_model, num_beams=1, max_new_tokens=4, batch_size=64)
    encoded = engine.prompts.encode(pairs)
    longest = sorted(encoded, key=len)[-4:]
    shortest = sorted(encoded, key=len)[:32]
    plain = engine.fuse_encoded(longest)
    monkeypatch.setenv(FAULT_ENV, f"oom_above:{2 * (len(longest[-1]) + 4)}")  # two long prompts fit, four do not
    sizes, generate = [], engine._generate
    engine._generate = lambda prompts: (sizes.append((len(prompts), max(map(len, prompts)))), generate(prompts))[1]
    assert engine.fuse_encoded(longest) == plain  # the same fusions, in input order
    assert [n for n, _ in sizes] == [4, 2, 2] and engine.fitted_tokens == 2 * (len(longest[-1]) + 4)
    sizes.clear()
    engine.fuse_encoded(shortest)
    assert sizes[0][0] > 2  # a budget, not a count: short prompts still go more than two to a batch
    assert all(n * (longest + 4) <= engine.fitted_tokens for n, longest in sizes)


def test_cublas_and_raw_cuda_allocation_failures_halve_the_budget_too_and_other_errors_do_not(smoke_model, pairs):
    # cuBLAS and raw CUDA allocations fail as plain RuntimeErrors; none can be caused on a CPU.
    engine = load_engine(smoke_model, num_beams=1, max_new_tokens=4, batch_size=64)
    longest = sorted(engine.prompts.encode(pairs), key=len)[-4:]
    plain, generate = engine.fuse_encoded(longest), engine._generate
    for message in ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"):
        engine.batch_tokens = engine.fitted_tokens = None
        sizes = []

        def failing(prompts, message=message):
            sizes.append(len(prompts))
            if len(prompts) > 2:
                raise RuntimeError(message)
            return generate(prompts)

        engine._generate = failing
        assert engine.fuse_encoded(longest) == plain
        assert sizes == [4, 2, 2] and engine.fitted_tokens == 2 * (len(longest[-1]) + 4)
    engine._generate = lambda prompts: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        engine.fuse_encoded(longest)
