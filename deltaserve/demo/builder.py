"""`deltaserve demo --out DIR`: train and write the demo base model and LoRA adapters.

Layout written (`.complete` last, so a directory holding it is a finished build):

    DIR/base/                 HF Llama directory: config.json, model.safetensors (fp32),
                              generation_config.json, tokenizer.json, tokenizer_config.json
    DIR/adapters/<name>/      PEFT LoRA: adapter_config.json, adapter_model.safetensors,
                              README.md (`upper8`: a fourth LoRA, the mix's second member)
    DIR/adapters/shout/       sparse_delta (deltaserve compress, DARE) of a full fine-tune
    DIR/adapters/upper-caesar[-fit]/  mix of caesar + upper8: uniform, and fitted (mix fit)
    DIR/adapters/vowels/      proxy: anti/ (a small model trained like the base), expert/
                              (see deltaserve/demo/extras.py)
    DIR/README.md             what each adapter does, example prompts and outputs
    DIR/demo.json             machine-readable summary: specs, metrics, examples, sha256s
    DIR/.complete
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from deltaserve.demo.extras import (
    EXTRA_TASKS,
    MIX_MEMBER_SPEC,
    PROXY_NAME,
    SPARSE_NAME,
    build_mixes,
    build_proxy,
    build_sparse_delta,
)
from deltaserve.demo.prompt import BOS_ID, EOS_ID, PAD_ID, demo_prompt, prompt_ids
from deltaserve.demo.quiet import no_hf_progress_bars
from deltaserve.demo.readme import render_adapter_card, render_other_card, render_readme
from deltaserve.demo.tasks import TASKS
from deltaserve.demo.tokenizer import build_tokenizer, save_tokenizer
from deltaserve.demo.train import (
    ADAPTERS,
    BASE_STEPS,
    AdapterSpec,
    exact_match,
    greedy_answers,
    train_adapter,
    train_base,
)

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
DEMO_MODEL_NAME = "demo"
"""Base model id written into each adapter's `base_model_name_or_path` (`make run` serves the
base under this name)."""
EXAMPLE_TEXTS: tuple[str, ...] = ("hello world", "the big fox")
MAX_NEW_TOKENS = 32
# One intra-op thread, always. The results depend on the thread count (so it must be fixed for
# same-seed builds to be byte-identical), and on a 2-core machine shared with other work two
# threads ran 4-15x *slower* per step than one (each waits on the other at every op barrier),
# while on an idle machine they were at best about 1.8x faster.
_THREADS = 1


def build(out_dir: str | Path, *, progress: bool = True, seed: int = 0, scale: float = 1.0) -> Path:
    """Train the demo base model and adapters and write them under `out_dir`; returns its path.

    Offline and deterministic: the same `seed` on the same machine gives byte-identical
    weights (training runs on one CPU thread, see `_THREADS`); takes about 1.5 minutes. `scale`
    multiplies every training step count (tests use a small one to check determinism
    cheaply); the result is only a useful demo at 1.0. Existing `base/` and
    `adapters/<name>/` for the demo's adapter names are replaced; nothing else in `out_dir`
    is touched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE_MARKER).unlink(missing_ok=True)
    with _reproducible(seed):
        base, summary = _build_base(out / "base", seed=seed, scale=scale, progress=progress)
        summary["adapters"] = [
            _build_adapter(
                base, spec, out, summary, seed=seed + 1 + i, scale=scale, progress=progress
            )
            for i, spec in enumerate(LORAS)
        ]
        summary["others"] = _build_others(base, out, summary, seed=seed, scale=scale,
                                          progress=progress)  # fmt: skip
    weights = ["base/model.safetensors"]
    weights += [f"adapters/{spec.name}/adapter_model.safetensors" for spec in LORAS]
    weights += [f"adapters/{SPARSE_NAME}/delta.safetensors"]
    weights += [f"adapters/{PROXY_NAME}/{sub}/model.safetensors" for sub in ("anti", "expert")]
    for name in weights:
        # safetensors writes through a private (0600) temp file; a server running as another
        # user (the container's non-root one) must still be able to read the weights.
        (out / name).chmod(0o644)
    summary["sha256"] = {name: _sha256(out / name) for name in weights}
    (out / "demo.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(render_readme(summary))
    for spec in LORAS:
        (out / "adapters" / spec.name / "README.md").write_text(
            render_adapter_card(summary, spec.name)
        )
    for entry in summary["others"]:
        (out / entry["path"] / "README.md").write_text(render_other_card(summary, entry["name"]))
    (out / COMPLETE_MARKER).write_text("ok\n")
    logger.info("demo written to %s", out)
    return out


LORAS: tuple[AdapterSpec, ...] = (*ADAPTERS, MIX_MEMBER_SPEC)
"""Every LoRA written: the demo's three, and `upper8`, the mix's second member."""


def _build_others(
    base: LlamaForCausalLM, out: Path, summary: dict, *, seed: int, scale: float, progress: bool
) -> list[dict]:
    """The sparse_delta, mix and proxy adapters (deltaserve/demo/extras.py)."""
    def steps(n: int) -> int:
        return _scaled(n, scale)

    texts = EXAMPLE_TEXTS
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out / "base"))
    entries = [
        build_sparse_delta(base, out / "base", out, DEMO_MODEL_NAME, seed=seed + 101,
                           scale_steps=steps, texts=texts, progress=progress),
        *build_mixes(base, tokenizer, out, seed=seed + 102, scale_steps=steps, texts=texts,
                     progress=progress),
        build_proxy(base, out / "base", out, seed=seed + 103, scale_steps=steps, texts=texts,
                    progress=progress),
    ]  # fmt: skip
    for entry in entries:
        task = EXTRA_TASKS.get(entry["task"] or "")
        entry["description"] = (
            task.description if task is not None
            else "the uniform mix of " + " and ".join(f"`{m}`" for m in entry["inventory"])
        )
        summary["examples"][entry["name"]] = entry.pop("examples")
        logger.info("adapter %s (%s): exact match on fresh texts: %.2f", entry["name"],
                    entry["kind"], entry["exact_match"])  # fmt: skip
    return entries


def _build_base(
    path: Path, *, seed: int, scale: float, progress: bool
) -> tuple[LlamaForCausalLM, dict]:
    """Train and save the base (with its tokenizer); returns it and the summary started."""
    tokenizer = build_tokenizer()
    _check_tokenizer(tokenizer)
    base, loss = train_base(seed=seed, steps=_scaled(BASE_STEPS, scale), progress=progress)
    _save_base(base, tokenizer, path)
    scores = {
        name: exact_match(base, task, instructed=True, seed=10_000 + seed)
        for name, task in TASKS.items()
    }
    logger.info("base: loss %.4f, exact match on fresh texts: %s", loss, _fmt(scores))
    summary = {
        "seed": seed,
        "model_name": DEMO_MODEL_NAME,
        "example_texts": list(EXAMPLE_TEXTS),
        "base": {"final_loss": round(loss, 6), "exact_match": scores},
        "examples": {"base": greedy_answers(base, EXAMPLE_TEXTS)},
        "tasks": {
            n: {"instruction": t.instruction, "description": t.description}
            for n, t in TASKS.items()
        },
    }
    return base, summary


def _build_adapter(
    base: LlamaForCausalLM,
    spec: AdapterSpec,
    out: Path,
    summary: dict,
    *,
    seed: int,
    scale: float,
    progress: bool,
) -> dict:
    """Train and save one adapter; records its examples in `summary`, returns its entry."""
    model, loss = train_adapter(
        base, spec, seed=seed, steps=_scaled(spec.steps, scale), progress=progress
    )
    path = out / "adapters" / spec.name
    _replace_dir(path)
    # Not "auto": that looks the base up by name, on the Hub if it is no local directory.
    model.save_pretrained(str(path), save_embedding_layers=False)
    score = exact_match(model, TASKS[spec.task], instructed=False, seed=10_000 + seed)
    logger.info("adapter %s: loss %.4f, exact match on fresh texts: %.2f", spec.name, loss, score)
    summary["examples"][spec.name] = greedy_answers(model, EXAMPLE_TEXTS)
    return {
        "name": spec.name,
        "task": spec.task,
        "rank": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": list(spec.target_modules),
        "final_loss": round(loss, 6),
        "exact_match": score,
        "path": f"adapters/{spec.name}",
    }


@contextlib.contextmanager
def _reproducible(seed: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the build, without leaving the
    caller's RNG state, thread count or determinism flag changed."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft calls a transformers API that transformers 5 marks as deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(seed)
        torch.set_num_threads(_THREADS)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)


def _scaled(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def _replace_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    """Training builds ids by hand (`prompt_ids`); they must equal what a server will get from
    the saved tokenizer and its chat template, or the demo would be trained on another format."""
    text = "hello world"
    for system in (None, TASKS["upper"].instruction):
        messages = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        from_chat = tokenizer(chat, add_special_tokens=False)["input_ids"]
        encoded = tokenizer(demo_prompt(text, system))["input_ids"]
        expected = prompt_ids(text, system)
        if encoded != expected or from_chat != expected:
            raise RuntimeError(f"tokenizer disagrees with prompt_ids: {encoded} / {from_chat}")


def _save_base(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    _replace_dir(path)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    with no_hf_progress_bars():  # one shard: its "Writing model shards" bar is only noise
        model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    # Adapters record this as their base (peft reads `name_or_path` from the model).
    model.name_or_path = DEMO_MODEL_NAME


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
