"""sparse_delta adapters served by the engine equal transformers running W_base + dense Δ, alone
and inside mixed batches with base rows and LoRA rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltaserve.adapter_store.compression import PROJ_KEY, compress
from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.engine.ops.sparse_delta import delta_dense
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.tiny import make_tokenizer

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=3)


def make_finetune(base_model, out_dir: Path, seed: int, scale: float = 0.3):
    """A 'full fine-tune': every projection weight perturbed (embeddings/norms/lm_head kept)."""
    ft = copy.deepcopy(base_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if PROJ_KEY.match(name):
                p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    ft.save_pretrained(str(out_dir), safe_serialization=True)
    make_tokenizer(str(out_dir))
    return ft


def merged_model(base_model, delta_dir: Path):
    """transformers model with W_base + the stored (pruned, rescaled) delta, densified."""
    model = copy.deepcopy(base_model)
    st = load_file(str(delta_dir / "delta.safetensors"))
    with torch.no_grad():
        for key in st:
            if key.endswith(".indices"):
                name = key.removesuffix(".indices")
                p = model.get_parameter(name)
                p.add_(delta_dense(st[key], st[f"{name}.values"].float(), *p.shape))
    return model


@pytest.fixture(scope="module")
def deltas(llama_dir, tmp_path_factory):
    """Three compressed deltas of two fine-tunes: dare 30%, magnitude 20%, darex-q 30%."""
    model_dir, base = llama_dir
    root = tmp_path_factory.mktemp("deltas")
    ft1 = make_finetune(base, root / "ft1", seed=1)
    make_finetune(base, root / "ft2", seed=2)
    specs = {"dare": ("ft1", "dare", 0.3), "mag": ("ft2", "magnitude", 0.2),
             "darex": ("ft1", "darex-q", 0.3)}
    out = {}
    for name, (ft, method, density) in specs.items():
        compress(Path(model_dir), root / ft, root / name, method, density, seed=3,
                 progress=False)
        out[name] = (root / name, merged_model(base, root / name))
    out["ft1"] = (root / "ft1", ft1)
    return out


def _check(out, prompt, oracle, atol=3e-4):
    gen = out.outputs[0].token_ids
    ref = hf_logprobs(oracle, prompt, gen)
    assert gen == ref.argmax(-1).tolist()
    got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
    want = ref.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def _dreq(name, deltas):
    return AdapterRequest(name=name, path=str(deltas[name][0]), kind="sparse_delta")


def test_mixed_batch_matches_dense_merge(llama_dir, llama_loras, deltas):
    """Base, LoRA and three deltas share steps; every row equals its own oracle."""
    model_dir, base = llama_dir
    lora = AdapterRequest(name="r4-all", path=llama_loras["r4-all"][0])
    plan = [(None, base), ("dare", None), (lora, llama_loras["r4-all"][1]), ("mag", None),
            ("darex", None), (None, base), ("dare", None), (lora, llama_loras["r4-all"][1])]
    prompts, adapters, oracles = [], [], []
    for i, (a, oracle) in enumerate(plan):
        prompts.append(PROMPTS[i % len(PROMPTS)])
        if isinstance(a, str):
            adapters.append(_dreq(a, deltas))
            oracles.append(deltas[a][1])
        else:
            adapters.append(a)
            oracles.append(oracle)
    eng = engine_for(model_dir, max_lora_rank=64)
    outs = eng.generate(prompts, GREEDY, adapters=adapters)
    assert eng.last_batch_adapters == 4  # LoRA + three deltas decoded together
    for prompt, out, oracle in zip(prompts, outs, oracles, strict=True):
        _check(out, prompt, oracle)


def test_delta_changes_output_and_density_one_is_the_finetune(llama_dir, deltas, tmp_path):
    model_dir, base = llama_dir
    res = compress(Path(model_dir), deltas["ft1"][0], tmp_path / "full", "dare", 1.0,
                   progress=False)
    assert res.kept == res.total
    eng = engine_for(model_dir)
    req = AdapterRequest(name="full", path=str(tmp_path / "full"), kind="sparse_delta")
    out = eng.generate([PROMPTS[0]], GREEDY, adapters=[req])[0]
    _check(out, PROMPTS[0], deltas["ft1"][1])
    base_out = eng.generate([PROMPTS[0]], GREEDY)[0]
    assert abs(base_out.outputs[0].logprobs[0].logprob - out.outputs[0].logprobs[0].logprob) > 1e-3


def test_engine_refuses_unservable_tensors(llama_dir, deltas, tmp_path):
    model_dir, _ = llama_dir
    d = tmp_path / "bad"
    d.mkdir()
    (d / "deltaserve_adapter.json").write_text(json.dumps({"kind": "sparse_delta"}))
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight.indices": torch.tensor([0]),
               "model.embed_tokens.weight.values": torch.tensor([1.0])},
              str(d / "delta.safetensors"))
    eng = engine_for(model_dir)
    req = AdapterRequest(name="bad", path=str(d), kind="sparse_delta")
    with pytest.raises(AdapterError, match="embeddings, lm_head"):
        eng.add_request("x", PROMPTS[0], GREEDY, req)
    save_file({"model.layers.0.self_attn.q_proj.weight.indices": torch.tensor([1, 1]),
               "model.layers.0.self_attn.q_proj.weight.values": torch.tensor([1.0, 2.0])},
              str(d / "delta.safetensors"))
    with pytest.raises(AdapterError, match="duplicate"):
        eng.add_request("y", PROMPTS[0], GREEDY, AdapterRequest("bad2", str(d), "sparse_delta"))


def test_pool_counts_delta_bytes(llama_dir, deltas):
    model_dir, _ = llama_dir
    eng = engine_for(model_dir)
    req = _dreq("dare", deltas)
    eng.generate([PROMPTS[1]], GREEDY, adapters=[req])
    ad = eng.pool.peek(req.key)
    assert eng.pool.device_bytes(req.key) == ad.nnz * (8 + 4) > 0
