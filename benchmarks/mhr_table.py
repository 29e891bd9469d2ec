"""The miniature MHR table: held-out loss on a new task for each inventory member, the uniform
mix (MHR-μ), the routing fitted by `deltaserve mix fit` (MHR-z) and, as a floor, the task's own
routing.

Everything is tiny and synthetic (CPU, about a minute): the base is the tests' random Llama
(hidden 64, 2 layers, byte tokenizer), the inventory J = 4 random rank-8 PEFT LoRAs, and the
"new task" is the greedy completions of a hidden 2-head routing of that inventory on random
prompts — a task none of the members was trained for, whose best mix is known. 24 training and
24 held-out examples; the fit runs through the real CLI. Usage::

    .venv/bin/python -m benchmarks.mhr_table [--out bench-out/mhr] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from deltaserve.entrypoints.cli.main import main as cli
from deltaserve.router.fit import RoutedLoRA, encode
from deltaserve.router.mix import uniform
from deltaserve.router.peft_io import read_peft
from tests.integration.server.tiny_model import build_lora, build_model_dir

MEMBERS = ("lora-a", "lora-b", "lora-c", "lora-d")
HIDDEN = [[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8]]
COMPLETION_TOKENS = 6


def task(routed: RoutedLoRA, tok, n: int, seed: int) -> list[dict[str, str]]:
    """n examples of the new task: the hidden routing's greedy completions of random prompts."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice("abcdefghijklmnop qrstuvwxyz") for _ in range(8))
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad(), routed.routed(torch.tensor(HIDDEN)):
            for _ in range(COMPLETION_TOKENS):
                ids = torch.cat([ids, routed.model(ids).logits[:, -1:].argmax(-1)], dim=1)
        rows.append({"prompt": prompt, "completion": tok.decode(ids[0, -COMPLETION_TOKENS:])})
    return rows


def token_accuracy(routed: RoutedLoRA, examples, weights: torch.Tensor | None) -> float:
    """Teacher-forced greedy accuracy on the completion tokens."""
    hit = total = 0
    with torch.no_grad(), routed.routed(weights):
        for prompt, completion in examples:
            ids = torch.tensor([prompt + completion])
            pred = routed.model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1)
            hit += int((pred == ids[0, len(prompt):]).sum())
            total += len(completion)
    return hit / total


def build(root: Path) -> tuple[Path, Path]:
    base = build_model_dir(root / "base")
    for i, name in enumerate(MEMBERS):
        build_lora(base, root / "adapters" / name, rank=8, seed=300 + i)
    return base, root / "adapters"


def run(out: Path, steps: int) -> list[dict[str, object]]:
    t0 = time.perf_counter()
    base, adapters = build(out)
    tok = AutoTokenizer.from_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
    routed = RoutedLoRA(model, [read_peft(adapters / n, n) for n in MEMBERS], list(MEMBERS))
    train, held = task(routed, tok, 24, seed=1), task(routed, tok, 24, seed=2)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    assert cli(["mix", "fit", "--model", str(base), "--adapter-dir", str(adapters), "--inventory",
                ",".join(MEMBERS), "--heads", "2", "--data", str(out / "train.jsonl"),
                "--out", str(out / "fitted"), "--steps", str(steps), "--lr", "0.2"]) == 0  # fmt: skip
    fitted = json.loads((out / "fitted" / "deltaserve_adapter.json").read_text())
    held_ex = encode(tok, held)
    rows_spec: list[tuple[str, torch.Tensor | None]] = [("base (no adapter)", None)]
    for j, name in enumerate(MEMBERS):
        rows_spec.append((f"member {name}", torch.eye(len(MEMBERS))[j : j + 1]))
    rows_spec += [
        ("uniform MHR-μ (h=2)", torch.tensor(uniform(len(MEMBERS), 2))),
        ("fitted MHR-z (h=2)", torch.tensor(fitted["routing"])),
        ("task's own routing (floor)", torch.tensor(HIDDEN)),
    ]
    rows = [
        {"mix": label, "held_out_loss": routed.eval_loss(held_ex, w),
         "held_out_token_acc": token_accuracy(routed, held_ex, w)}
        for label, w in rows_spec
    ]  # fmt: skip
    meta = {"fit": fitted["fit"], "routing": fitted["routing"], "hidden": HIDDEN,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (out / "mhr_table.json").write_text(json.dumps({"rows": rows, **meta}, indent=2))
    return rows


def report(rows: list[dict[str, object]], out: Path) -> str:
    lines = ["| mix | held-out loss | held-out token acc |", "|---|---|---|"]
    lines += [f"| {r['mix']} | {r['held_out_loss']:.3f} | {r['held_out_token_acc']:.2f} |" for r in rows]
    table = "\n".join(lines)
    (out / "mhr_table.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([str(r["mix"]) for r in rows], [float(r["held_out_loss"]) for r in rows])  # type: ignore[arg-type]
    ax.invert_yaxis()
    ax.set_xlabel("held-out cross-entropy (lower is better)")
    ax.set_title("Miniature MHR table: a new task, inventory of 4 LoRAs")
    fig.tight_layout()
    fig.savefig(out / "mhr_table.png", dpi=120)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/mhr"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(report(run(args.out, args.steps), args.out))
