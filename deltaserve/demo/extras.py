"""The demo's adapters of the other kinds: sparse_delta, mix (registered and fitted), proxy.

Each one does something no LoRA of the demo was trained for, so its answers differ visibly:
- `shout` (sparse_delta): a full fine-tune of the base's projections (embeddings, norms and
  lm_head frozen) on "leet, then upper-case" ("hello" → "H3LL0"), compressed with DARE by
  `deltaserve.adapter_store.compression.compress` (what `deltaserve compress` runs).
- `upper-caesar` (mix): the uniform mix of the two equal-shape LoRAs `caesar` and `upper8`
  (rank 8 on q/k/v/o); `upper-caesar-fit` (mix): the same inventory with its routing fitted by
  `deltaserve.router.fit` (what `deltaserve mix fit` runs) on examples of "caesar, then
  upper-case" ("hello" → "IFMMP"), a task neither member was trained for.
- `vowels` (proxy): a smaller model trained like the base (the anti-expert), and its expert,
  that small model fully fine-tuned to mask vowels ("hello" → "h*ll*"); the base never saw it.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from deltaserve.demo.prompt import EOS, EOS_ID, demo_prompt, prompt_ids
from deltaserve.demo.quiet import no_hf_progress_bars
from deltaserve.demo.tasks import TASKS, collate, encode_example, sample_text
from deltaserve.demo.train import ATTENTION, AdapterSpec, Batch, base_config, fit, train_base

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ExtraTask:
    """A task only the non-LoRA adapters do: `text` → `transform(text)`."""

    name: str
    transform: Callable[[str], str]
    description: str


def _vowel_mask(text: str) -> str:
    return "".join("*" if ch in "aeiou" else ch for ch in text)


EXTRA_TASKS: dict[str, ExtraTask] = {
    t.name: t
    for t in (
        ExtraTask(
            "shout_leet",
            lambda s: TASKS["leet"].transform(s).upper(),
            "writes a, e, i, o, s, t as 4, 3, 1, 0, 5, 7, then upper-cases the text",
        ),
        ExtraTask(
            "upper_caesar",
            lambda s: TASKS["caesar"].transform(s).upper(),
            "shifts each letter one place, then upper-cases the text",
        ),
        ExtraTask("vowel_mask", _vowel_mask, "replaces each vowel (a, e, i, o, u) with *"),
    )
}

# sparse_delta
SPARSE_NAME = "shout"
SPARSE_TASK = "shout_leet"
SPARSE_STEPS = 60
SPARSE_LR = 2e-3
SPARSE_METHOD = "dare"
SPARSE_DENSITY = 0.3

# mix
MIX_MEMBER = "upper8"
"""The second mix member, shaped like `caesar` (rank 8, alpha 16, q/k/v/o)."""
MIX_MEMBER_SPEC = AdapterSpec(MIX_MEMBER, "upper", rank=8, target_modules=ATTENTION, steps=40)
MIX_INVENTORY = ("caesar", MIX_MEMBER)
MIX_NAME = "upper-caesar"
MIX_FIT_NAME = "upper-caesar-fit"
MIX_FIT_TASK = "upper_caesar"
MIX_HEADS = 4
MIX_FIT_EXAMPLES = 32
MIX_FIT_STEPS = 30
MIX_FIT_LR = 0.2

# proxy
PROXY_NAME = "vowels"
PROXY_TASK = "vowel_mask"
PROXY_BASE_STEPS = 150
PROXY_EXPERT_STEPS = 60
PROXY_EXPERT_LR = 3e-3
PROXY_ALPHA = 1.0
BATCH_SIZE = 64


def small_config() -> LlamaConfig:
    """The proxy's small model: the base's vocabulary and shape rules, 2 layers of hidden 64."""
    cfg = base_config()
    cfg.hidden_size = 64
    cfg.intermediate_size = 176
    cfg.num_hidden_layers = 2
    cfg.num_attention_heads = 2
    cfg.num_key_value_heads = 1
    return cfg


def _plain_batches(task: ExtraTask, rng: random.Random) -> Callable[[int], Batch]:
    def next_batch(step: int) -> Batch:
        rows = []
        for _ in range(BATCH_SIZE):
            text = sample_text(rng)
            rows.append(encode_example(text, task.transform(text)))
        return collate(rows)

    return next_batch


def _finetune(
    model: LlamaForCausalLM, task: ExtraTask, *, seed: int, steps: int, lr: float,
    only: Sequence[str] | None, desc: str, progress: bool,
) -> float:
    """Fine-tune `model` in place on plain prompts of `task` (only the `only` projections)."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        p.requires_grad_(only is None or name.rsplit(".", 2)[-2] in only)
    try:
        return fit(model, _plain_batches(task, random.Random(seed)), steps=steps, lr=lr,
                   desc=desc, progress=progress)  # fmt: skip
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


@torch.no_grad()
def task_match(answer: Callable[[str], str], task: ExtraTask, *, seed: int, n: int = 32) -> float:
    """Share of `n` fresh texts whose greedy answer is exactly `task`'s."""
    rng = random.Random(seed)
    texts = [sample_text(rng) for _ in range(n)]
    return sum(answer(t) == task.transform(t) for t in texts) / n


@torch.no_grad()
def greedy_with(logits_of: Callable[[torch.Tensor], torch.Tensor], text: str,
                max_new_tokens: int = 32) -> str:  # fmt: skip
    """Greedy answer to `demo_prompt(text)` given next-token logits for ids [1, T]."""
    ids = torch.tensor([prompt_ids(text)])
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits_of(ids).argmax())
        if nxt == EOS_ID:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return bytes(t for t in out if t < 256).decode("utf-8", errors="replace")


def _last_logits(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda ids: model(input_ids=ids).logits[0, -1]


def build_sparse_delta(
    base: LlamaForCausalLM, base_dir: Path, out: Path, model_id: str, *, seed: int,
    scale_steps: Callable[[int], int], texts: Sequence[str], progress: bool,
) -> dict:
    """Full fine-tune of the projections → `deltaserve compress` (DARE) → adapters/shout."""
    from deltaserve.adapter_store.compression import compress

    task = EXTRA_TASKS[SPARSE_TASK]
    model = copy.deepcopy(base)
    loss = _finetune(model, task, seed=seed, steps=scale_steps(SPARSE_STEPS), lr=SPARSE_LR,
                     only=PROJECTIONS, desc=SPARSE_NAME, progress=progress)  # fmt: skip
    ft_match = task_match(lambda t: greedy_with(_last_logits(model), t), task, seed=seed)
    path = out / "adapters" / SPARSE_NAME
    if path.exists():
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(base_dir / "tokenizer.json", Path(tmp) / "tokenizer.json")
        res = compress(base_dir, Path(tmp), path, SPARSE_METHOD, SPARSE_DENSITY, seed=seed,
                       base_model_id=model_id, progress=False)  # fmt: skip
    # What the server computes: W_base + the stored sparse delta.
    state = dict(base.state_dict())
    from safetensors.torch import load_file

    delta = load_file(str(path / "delta.safetensors"))
    for key, values in delta.items():
        if key.endswith(".values"):
            name = key[: -len(".values")]
            w = state[name].clone().flatten()
            w[delta[name + ".indices"].long()] += values.float()
            state[name] = w.view_as(state[name])
    model.load_state_dict(state)
    sparse_match = task_match(lambda t: greedy_with(_last_logits(model), t), task, seed=seed)
    answers = [greedy_with(_last_logits(model), t) for t in texts]
    return {
        "name": SPARSE_NAME, "kind": "sparse_delta", "task": SPARSE_TASK,
        "method": SPARSE_METHOD, "density": SPARSE_DENSITY, "kept": res.kept, "total": res.total,
        "final_loss": round(loss, 6), "finetune_exact_match": ft_match,
        "exact_match": sparse_match, "path": f"adapters/{SPARSE_NAME}", "examples": answers,
    }  # fmt: skip


def build_mixes(
    base: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, *, seed: int,
    scale_steps: Callable[[int], int], texts: Sequence[str], progress: bool,
) -> list[dict]:
    """The registered uniform mix and the fitted one, over `caesar` + `upper8`."""
    from deltaserve.router.fit import RoutedLoRA, encode, fit_routing, write_mix
    from deltaserve.router.mix import uniform
    from deltaserve.router.peft_io import read_peft

    members = [read_peft(out / "adapters" / n, n) for n in MIX_INVENTORY]
    routed = RoutedLoRA(copy.deepcopy(base).eval(), members, list(MIX_INVENTORY))
    model = routed.model

    def answers_under(weights: torch.Tensor) -> Callable[[str], str]:
        def answer(text: str) -> str:
            with routed.routed(weights):
                return greedy_with(_last_logits(model), text)

        return answer

    task = EXTRA_TASKS[MIX_FIT_TASK]
    entries = []
    routing = uniform(len(MIX_INVENTORY), MIX_HEADS)
    path = out / "adapters" / MIX_NAME
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    cfg = {"kind": "mix", "inventory": list(MIX_INVENTORY), "heads": MIX_HEADS, "routing": routing}
    (path / "deltaserve_adapter.json").write_text(json.dumps(cfg, indent=2) + "\n")
    answer = answers_under(torch.tensor(routing))
    entries.append({
        "name": MIX_NAME, "kind": "mix", "task": None, "inventory": list(MIX_INVENTORY),
        "heads": MIX_HEADS, "routing": routing, "path": f"adapters/{MIX_NAME}",
        "exact_match": task_match(answer, task, seed=seed),
        "examples": [answer(t) for t in texts],
    })  # fmt: skip

    rng = random.Random(seed)
    rows = []
    for _ in range(MIX_FIT_EXAMPLES):
        text = sample_text(rng)
        rows.append({"prompt": demo_prompt(text), "completion": task.transform(text) + EOS})
    torch.manual_seed(seed)
    result = fit_routing(routed, encode(tokenizer, rows), MIX_HEADS, scale_steps(MIX_FIT_STEPS),
                         MIX_FIT_LR)  # fmt: skip
    path = out / "adapters" / MIX_FIT_NAME
    if path.exists():
        shutil.rmtree(path)
    write_mix(path, list(MIX_INVENTORY), result,
              {"steps": scale_steps(MIX_FIT_STEPS), "lr": MIX_FIT_LR, "examples": len(rows),
               "task": MIX_FIT_TASK})  # fmt: skip
    fitted = json.loads((path / "deltaserve_adapter.json").read_text())["routing"]
    answer = answers_under(torch.tensor(fitted))
    entries.append({
        "name": MIX_FIT_NAME, "kind": "mix", "task": MIX_FIT_TASK,
        "inventory": list(MIX_INVENTORY), "heads": MIX_HEADS, "routing": fitted,
        "loss_before": round(result.losses[0], 6), "loss_after": round(result.losses[-1], 6),
        "path": f"adapters/{MIX_FIT_NAME}", "exact_match": task_match(answer, task, seed=seed),
        "examples": [answer(t) for t in texts],
    })  # fmt: skip
    return entries


def build_proxy(
    base: LlamaForCausalLM, tokenizer_dir: Path, out: Path, *, seed: int,
    scale_steps: Callable[[int], int], texts: Sequence[str], progress: bool,
) -> dict:
    """A small model trained like the base (anti-expert) and its fine-tune (expert)."""
    cfg = small_config()
    anti, anti_loss = train_base(seed=seed, steps=scale_steps(PROXY_BASE_STEPS),
                                 progress=progress, config=cfg, desc="proxy base")  # fmt: skip
    expert = copy.deepcopy(anti)
    task = EXTRA_TASKS[PROXY_TASK]
    loss = _finetune(expert, task, seed=seed + 1, steps=scale_steps(PROXY_EXPERT_STEPS),
                     lr=PROXY_EXPERT_LR, only=None, desc="proxy expert",
                     progress=progress)  # fmt: skip
    path = out / "adapters" / PROXY_NAME
    if path.exists():
        shutil.rmtree(path)
    for sub, m in (("anti", anti), ("expert", expert)):
        with no_hf_progress_bars():
            m.save_pretrained(str(path / sub))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_dir / f, path / sub / f)
    cfg_json = {"kind": "proxy", "expert": "expert", "anti_expert": "anti", "alpha": PROXY_ALPHA}
    (path / "deltaserve_adapter.json").write_text(json.dumps(cfg_json, indent=2) + "\n")

    def logits(ids: torch.Tensor) -> torch.Tensor:
        s = [m(input_ids=ids).logits[0, -1] for m in (base, expert, anti)]
        return s[0] + PROXY_ALPHA * (s[1] - s[2])

    expert_match = task_match(lambda t: greedy_with(_last_logits(expert), t), task, seed=seed)
    return {
        "name": PROXY_NAME, "kind": "proxy", "task": PROXY_TASK, "alpha": PROXY_ALPHA,
        "small_model": {"num_hidden_layers": cfg.num_hidden_layers,
                        "hidden_size": cfg.hidden_size, "final_loss": round(anti_loss, 6)},
        "final_loss": round(loss, 6), "expert_exact_match": expert_match,
        "exact_match": task_match(lambda t: greedy_with(logits, t), task, seed=seed),
        "path": f"adapters/{PROXY_NAME}",
        "examples": [greedy_with(logits, t) for t in texts],
    }  # fmt: skip
