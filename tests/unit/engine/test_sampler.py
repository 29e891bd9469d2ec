"""deltaserve.engine.sampler: greedy, temperature, top-p/top-k, counter-based seeds, logprobs."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.sampler import SamplingTensors, sample, uniform_noise


def _tensors(
    rows: int,
    vocab: int,
    temperature=1.0,
    top_p=1.0,
    top_k=None,
    seeds=0,
    steps=0,
    banned: list[tuple[int, int]] = (),
    max_logprobs: int = -1,
) -> SamplingTensors:
    """Per-row values may be scalars (broadcast) or lists; top_k None = disabled (vocab)."""

    def col(v, dtype):
        t = torch.as_tensor(v, dtype=dtype)
        return t.expand(rows).clone() if t.dim() == 0 else t

    temp = col(temperature, torch.float32)
    tp = col(top_p, torch.float32)
    tk = col(vocab if top_k is None else top_k, torch.long)
    tk = torch.where(tk > 0, tk, torch.full_like(tk, vocab))
    return SamplingTensors(
        temperature=temp,
        top_p=tp,
        top_k=tk,
        seeds=col(seeds, torch.long),
        steps=col(steps, torch.long),
        banned_rows=torch.tensor([r for r, _ in banned], dtype=torch.long),
        banned_tokens=torch.tensor([t for _, t in banned], dtype=torch.long),
        all_greedy=bool((temp == 0).all()),
        need_filter=bool((tp < 1).any() or (tk < vocab).any()),
        max_logprobs=max_logprobs,
    )


def _logits(rows: int, vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _draws(logits_row: torch.Tensor, n: int, seed: int = 7, **kw) -> torch.Tensor:
    """n samples of one distribution: the same row n times, the step counter as the varying input."""
    logits = logits_row.unsqueeze(0).expand(n, -1).clone()
    return sample(logits, _tensors(n, logits.shape[1], seeds=seed, steps=torch.arange(n), **kw)).token_ids


def _tv(draws: torch.Tensor, probs: torch.Tensor) -> float:
    emp = torch.bincount(draws, minlength=probs.numel()).double() / draws.numel()
    return 0.5 * (emp - probs.double()).abs().sum().item()


def test_greedy_is_argmax():
    logits = _logits(16, 50)
    out = sample(logits, _tensors(16, 50, temperature=0.0))
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None


def test_greedy_rows_in_a_sampled_batch_stay_argmax():
    logits = _logits(8, 50)
    temps = [0.0, 1.0] * 4
    out = sample(logits, _tensors(8, 50, temperature=temps, seeds=list(range(8))))
    assert torch.equal(out.token_ids[::2], logits.argmax(-1)[::2])


def test_top_k_1_is_greedy():
    logits = _logits(64, 50, scale=0.3)  # flat logits: sampling would rarely pick the argmax
    out = sample(logits, _tensors(64, 50, temperature=1.5, top_k=1, seeds=list(range(64))))
    assert torch.equal(out.token_ids, logits.argmax(-1))


def test_seeded_row_is_independent_of_batch_and_position():
    vocab, n = 40, 200
    rows = _logits(n, vocab, seed=1, scale=1.0)
    alone = torch.stack([
        sample(rows[i : i + 1], _tensors(1, vocab, seeds=1000 + i, steps=i % 5)).token_ids[0]
        for i in range(n)
    ])
    others = _logits(3, vocab, seed=2)
    for i in range(0, n, 9):
        # Same row at position 2 of a batch whose other rows filter (top-k / top-p) and are greedy.
        batch = torch.cat([others[:2], rows[i : i + 1], others[2:]])
        t = _tensors(4, vocab, temperature=[0.0, 0.8, 1.0, 1.3], top_p=[1.0, 0.5, 1.0, 1.0],
                     top_k=[-1, 5, -1, -1], seeds=[1, 2, 1000 + i, 3], steps=[9, 9, i % 5, 9])
        assert sample(batch, t).token_ids[2] == alone[i]
    assert alone.unique().numel() > 10, "seeded samples should still be spread over the vocab"


def test_different_seeds_and_steps_give_different_tokens():
    vocab, n = 1000, 64
    logits = torch.zeros(n, vocab)  # uniform: collisions by chance are ~1/1000
    base = sample(logits, _tensors(n, vocab, seeds=5, steps=torch.arange(n))).token_ids
    other_seed = sample(logits, _tensors(n, vocab, seeds=6, steps=torch.arange(n))).token_ids
    other_step = sample(logits, _tensors(n, vocab, seeds=5, steps=torch.arange(n) + n)).token_ids
    again = sample(logits, _tensors(n, vocab, seeds=5, steps=torch.arange(n))).token_ids
    assert torch.equal(base, again)
    assert (base == other_seed).sum() <= 3
    assert (base == other_step).sum() <= 3
    assert base.unique().numel() > 50


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_empirical_distribution_matches_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    draws = _draws(logits, 4000, temperature=temperature)
    assert _tv(draws, torch.softmax(logits / temperature, -1)) < 0.05


def test_seed_as_the_varying_counter_is_also_unbiased():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    n = 4000
    t = _tensors(n, 8, seeds=torch.arange(n) * 7919 + 3, steps=0)
    draws = sample(logits.unsqueeze(0).expand(n, -1).clone(), t).token_ids
    assert _tv(draws, torch.softmax(logits, -1)) < 0.05


def test_top_p_samples_only_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.02, 0.3, 0.1, 0.03])
    logits = probs.log()
    draws = _draws(logits, 3000, top_p=0.7)  # nucleus: 0.5 + 0.3 reaches 0.7
    assert set(draws.unique().tolist()) == {1, 3}
    nucleus = torch.zeros(6)
    nucleus[[1, 3]] = probs[[1, 3]] / 0.8
    assert _tv(draws, nucleus) < 0.05


def test_top_p_keeps_the_top_token_even_when_it_alone_exceeds_p():
    logits = torch.tensor([0.0, 5.0, 0.0, 0.0])
    assert set(_draws(logits, 200, top_p=0.1).tolist()) == {1}


def test_top_k_samples_only_the_k_best():
    logits = _logits(1, 30, seed=3, scale=0.5)[0]
    draws = _draws(logits, 4000, top_k=4)
    best = set(logits.topk(4).indices.tolist())
    assert set(draws.unique().tolist()) == best
    expect = torch.zeros(30)
    idx = logits.topk(4).indices
    expect[idx] = torch.softmax(logits[idx], -1)
    assert _tv(draws, expect) < 0.05


def test_filters_are_per_row():
    vocab, n = 20, 600
    logits = _logits(1, vocab, seed=4, scale=0.5).expand(n, -1).clone()
    top_k = torch.tensor([3, -1] * (n // 2))
    t = _tensors(n, vocab, top_k=top_k, seeds=11, steps=torch.arange(n))
    ids = sample(logits, t).token_ids
    best3 = set(logits[0].topk(3).indices.tolist())
    assert set(ids[0::2].tolist()) <= best3
    assert len(set(ids[1::2].tolist()) - best3) > 0, "unfiltered rows sample the whole vocab"


def test_banned_pairs_are_never_sampled():
    vocab, n = 6, 500
    logits = torch.tensor([3.0, 2.9, 0.0, 0.0, 0.0, 0.0]).expand(n, -1).clone()
    banned = [(r, 0) for r in range(0, n, 2)] + [(r, 1) for r in range(0, n, 2)]
    t = _tensors(n, vocab, seeds=3, steps=torch.arange(n), banned=banned)
    ids = sample(logits, t).token_ids
    assert not set(ids[0::2].tolist()) & {0, 1}
    assert {0, 1} <= set(ids[1::2].tolist()), "unbanned rows keep those tokens"
    greedy = sample(logits[:2], _tensors(2, vocab, temperature=0.0, banned=[(0, 0)]))
    assert greedy.token_ids.tolist() == [1, 0]
    assert logits[0, 0] == 3.0, "the caller's logits are not modified"


def test_logprobs_and_top_logprobs():
    logits = _logits(5, 40, seed=5)
    t = _tensors(5, 40, temperature=[0.0, 1.0, 0.5, 1.0, 0.0], seeds=[1, 2, 3, 4, 5],
                 max_logprobs=4)
    out = sample(logits, t)
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, ref.gather(1, out.token_ids[:, None]).squeeze(1))
    top_lp, top_ids = ref.topk(4, dim=-1)
    assert torch.equal(out.top_ids, top_ids)
    torch.testing.assert_close(out.top_logprobs, top_lp)
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()
    zero = sample(logits, _tensors(5, 40, temperature=0.0, max_logprobs=0))
    assert zero.top_ids is None and zero.top_logprobs is None
    torch.testing.assert_close(zero.logprobs, ref.max(-1).values)


def test_uniform_noise_is_in_open_interval_and_uniform():
    seeds = torch.tensor([0, 1, 2**32 - 1, 123456789])
    steps = torch.tensor([0, 5, 2**20, 7])
    u = uniform_noise(seeds, steps, torch.arange(50_000))
    assert u.shape == (4, 50_000)
    assert (u > 0).all() and (u < 1).all()
    for row in u:
        hist = torch.histc(row.float(), bins=10, min=0.0, max=1.0) / row.numel()
        assert (hist - 0.1).abs().max() < 0.01
        assert abs(row.mean().item() - 0.5) < 0.01
    # rows with different (seed, step) are not correlated copies of each other
    assert abs(torch.corrcoef(u)[0, 1].item()) < 0.02
    assert torch.equal(u, uniform_noise(seeds, steps, torch.arange(50_000)))
