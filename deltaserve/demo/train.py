"""Training loops for the demo base model and its LoRA adapters (plain PyTorch, fp32, CPU)."""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from deltaserve.demo.prompt import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, prompt_ids
from deltaserve.demo.tasks import (
    MAX_CHARS,
    TASKS,
    Row,
    Task,
    collate,
    sample_text,
    task_example,
)

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids [B, T], labels [B, T])

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    """One demo LoRA: which task it bakes in and its (deliberately different) shape."""

    name: str
    task: str
    rank: int
    target_modules: tuple[str, ...]
    steps: int = 40
    lr: float = 1e-2

    @property
    def alpha(self) -> int:
        """LoRA alpha: twice the rank, so every adapter's update is scaled by 2."""
        return 2 * self.rank


# Heterogeneous on purpose: ranks 4/8/16, and two of the three touch only some projections.
# Each only has to switch on a task the base already knows: 40 steps give an exact match of
# about 0.97 on fresh texts, except rank 4 on q/v only, which needs a few more steps.
ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("upper", "upper", rank=4, target_modules=("q_proj", "v_proj"), steps=60),
    AdapterSpec("caesar", "caesar", rank=8, target_modules=ATTENTION),
    AdapterSpec("leet", "leet", rank=16, target_modules=ATTENTION + MLP),
)

BASE_STEPS = 250
BASE_LR = 5e-3
BATCH_SIZE = 64
ECHO_FIRST = 0.3
"""Share of base steps that train echo alone, before the other tasks join."""


def base_config() -> LlamaConfig:
    """The tiny Llama: 4 layers, hidden 128, 4 query heads sharing 2 KV heads (head_dim 32)."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        # Tied: copying a token then only needs its embedding carried to the last position.
        tie_word_embeddings=True,
        # 4x the usual 0.02: sharper initial attention shortens the plateau before the copy
        # (induction) heads form; with 0.02 the base learnt markedly slower in our runs.
        initializer_range=0.08,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def _lr_factor(steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def fit(
    model: torch.nn.Module,
    next_batch: Callable[[int], Batch],
    *,
    steps: int,
    lr: float,
    desc: str,
    progress: bool,
) -> float:
    """AdamW over the trainable parameters for `steps` steps; returns the last batch's loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(steps))
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=True, dynamic_ncols=True)
    for step in bar:
        input_ids, labels = next_batch(step)
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # A host sync every step would cost little here, but the bar needs only a few.
        if step % 10 == 0 or step == steps - 1:
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    model.eval()
    return loss_value


def _base_batch(rng: random.Random, steps: int) -> Callable[[int], Batch]:
    """Mixed-task batches with two curricula: echo alone for the first ECHO_FIRST of the
    steps (its copy circuit is what the other tasks reuse), and texts growing from 4 to
    MAX_CHARS characters over the first half (short copies are learnt first, and cheaper)."""
    tasks = list(TASKS.values())
    uniform = [1.0] * len(tasks)
    echo_only = [1.0 if t.name == "echo" else 0.0 for t in tasks]

    def sample_row(step: int) -> Row:
        max_chars = min(MAX_CHARS, 4 + round((MAX_CHARS - 4) * step / max(1, steps // 2)))
        weights = uniform if step >= steps * ECHO_FIRST else echo_only
        task = rng.choices(tasks, weights)[0]
        return task_example(task, sample_text(rng, max_chars), instructed=True)

    return lambda step: collate([sample_row(step) for _ in range(BATCH_SIZE)])


def train_base(
    *, seed: int, steps: int, progress: bool, config: LlamaConfig | None = None, desc: str = "base"
) -> tuple[LlamaForCausalLM, float]:
    """Train the base from scratch on every task (instructed) and echo; returns (model, loss).

    `config` replaces `base_config()` (the proxy adapter's smaller model is trained this way)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config or base_config())
    rng = random.Random(seed)
    loss = fit(
        model, _base_batch(rng, steps), steps=steps, lr=BASE_LR, desc=desc, progress=progress
    )
    return model, loss


def train_adapter(
    base: LlamaForCausalLM, spec: AdapterSpec, *, seed: int, steps: int, progress: bool
) -> tuple[PeftModel, float]:
    """Train one LoRA on plain prompts answered by its task; `base` itself is left untouched."""
    task = TASKS[spec.task]
    torch.manual_seed(seed)
    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            target_modules=list(spec.target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    rng = random.Random(seed)

    def next_batch(step: int) -> Batch:
        rows = [task_example(task, sample_text(rng), instructed=False) for _ in range(BATCH_SIZE)]
        return collate(rows)

    loss = fit(model, next_batch, steps=steps, lr=spec.lr, desc=spec.name, progress=progress)
    return model, loss


@torch.no_grad()
def exact_match(model: torch.nn.Module, task: Task, *, instructed: bool, seed: int) -> float:
    """Share of 64 freshly drawn texts whose whole answer (and EOS) greedy decoding gets right.

    Teacher-forced: if the argmax at every answer position equals the target, greedy decoding
    reproduces the target exactly, so one forward pass [64, T] measures it.
    """
    rng = random.Random(seed)
    input_ids, labels = collate(
        [task_example(task, sample_text(rng), instructed=instructed) for _ in range(64)]
    )
    pred = model(input_ids=input_ids).logits[:, :-1].argmax(-1)  # [B, T-1]
    target = labels[:, 1:]
    return ((pred == target) | (target == -100)).all(dim=1).float().mean().item()


@torch.no_grad()
def greedy_answer(model: torch.nn.Module, text: str, max_new_tokens: int = 32) -> str:
    """Greedy answer to `demo_prompt(text)`, decoded as UTF-8 (no KV cache: a few tokens)."""
    ids = torch.tensor([prompt_ids(text)])  # [1, T]
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        if nxt == EOS_ID:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return bytes(t for t in out if t < 256).decode("utf-8", errors="replace")


def greedy_answers(model: torch.nn.Module, texts: Sequence[str]) -> list[str]:
    """`greedy_answer` for each text."""
    return [greedy_answer(model, t) for t in texts]
