"""DIR/README.md of a demo build: what each adapter does, and how to ask it."""

from __future__ import annotations

import json

from deltaserve.demo.prompt import demo_prompt
from deltaserve.demo.tasks import MAX_CHARS


def _table(summary: dict) -> list[str]:
    """Markdown table: one row per model (base first), one column per example text."""
    texts = summary["example_texts"]
    rows = [
        "| model | kind | what it does | " + " | ".join(f"`{t}`" for t in texts) + " |",
        "|---|---|---|" + "---|" * len(texts),
    ]
    examples = summary["examples"]
    tasks = summary["tasks"]
    rows.append(
        f"| `{summary['model_name']}` (base) | base | {tasks['echo']['description']} | "
        + " | ".join(f"`{a}`" for a in examples["base"])
        + " |"
    )
    for ad in summary["adapters"]:
        kind = f"lora r={ad['rank']} on {', '.join(ad['target_modules'])}"
        rows.append(
            f"| `{ad['name']}` | {kind} | {tasks[ad['task']]['description']} | "
            + " | ".join(f"`{a}`" for a in examples[ad["name"]])
            + " |"
        )
    for other in summary.get("others", []):
        rows.append(
            f"| `{other['name']}` | {_kind(other)} | {other['description']} | "
            + " | ".join(f"`{a}`" for a in examples[other["name"]])
            + " |"
        )
    return rows


def _kind(entry: dict) -> str:
    if entry["kind"] == "sparse_delta":
        return f"sparse_delta ({entry['method']}, density {entry['density']})"
    if entry["kind"] == "mix":
        fitted = "fitted" if entry.get("task") else "uniform"
        return f"mix of {', '.join(entry['inventory'])} ({entry['heads']} heads, {fitted})"
    small = entry["small_model"]
    return (f"proxy (expert/anti-expert: {small['num_hidden_layers']} layers, hidden "
            f"{small['hidden_size']}, alpha {entry['alpha']})")


def _other_lines(entry: dict) -> list[str]:
    """How one non-LoRA adapter was made (README paragraph and adapter card)."""
    name, kind = entry["name"], entry["kind"]
    if kind == "sparse_delta":
        return [
            f"`{name}` is a `sparse_delta` adapter: a full fine-tune of the base's q/k/v/o/gate/"
            f"up/down projections (embeddings, norms and lm_head frozen) that "
            f"{entry['description']}, compressed as `deltaserve compress --method "
            f"{entry['method']} --density {entry['density']}` does: {entry['kept']} of "
            f"{entry['total']} delta entries kept. Exact match on fresh texts: "
            f"{entry['finetune_exact_match']:.2f} for the fine-tune, "
            f"{entry['exact_match']:.2f} for the compressed delta.",
        ]
    if kind == "mix":
        if entry.get("task"):
            return [
                f"`{name}` is a `mix` of the same members with its per-head routing fitted as "
                f"`deltaserve mix fit` does, on examples of a task neither member was trained "
                f"for: it {entry['description']}. Loss on those examples "
                f"{entry['loss_before']:.3f} (uniform) → {entry['loss_after']:.3f}; exact "
                f"match on fresh texts {entry['exact_match']:.2f}.",
            ]
        return [
            f"`{name}` is a registered `mix` adapter: {entry['description']} (both rank 8, "
            f"alpha 16, q/k/v/o; a mix needs equal shapes), {entry['heads']} heads.",
        ]
    return [
        f"`{name}` is a `proxy` adapter: `anti/` is a {entry['small_model']['num_hidden_layers']}"
        f"-layer, hidden-{entry['small_model']['hidden_size']} model trained like the base, "
        f"and `expert/` that model fully fine-tuned so that it {entry['description']}, a task "
        f"the base cannot do. The base's logits are steered by alpha {entry['alpha']} × "
        f"(expert − anti-expert); exact match on fresh texts: {entry['exact_match']:.2f} "
        f"(the expert alone: {entry['expert_exact_match']:.2f}).",
    ]


def render_other_card(summary: dict, name: str) -> str:
    """README.md of one sparse_delta / mix / proxy adapter directory."""
    entry = next(a for a in summary["others"] if a["name"] == name)
    examples = zip(summary["example_texts"], summary["examples"][name], strict=True)
    return "\n".join(
        [
            f"# {name}",
            "",
            *_other_lines(entry),
            "",
            "Greedy answers:",
            "",
            *(f"- `{text}` → `{answer}`" for text, answer in examples),
            "",
        ]
    )


def _requests(summary: dict) -> list[str]:
    """curl examples for the OpenAI-compatible endpoints of `make run`."""
    name = summary["adapters"][0]["name"]
    text = summary["example_texts"][0]
    completion = {"model": name, "prompt": demo_prompt(text), "max_tokens": 16, "temperature": 0}
    chat = {"model": name, "messages": [{"role": "user", "content": text}], "max_tokens": 16}
    instructed = {
        "model": summary["model_name"],
        "messages": [
            {"role": "system", "content": summary["tasks"][name]["instruction"]},
            {"role": "user", "content": text},
        ],
        "max_tokens": 16,
    }
    lines = []
    for route, body in (
        ("completions", completion),
        ("chat/completions", chat),
        ("chat/completions", instructed),
    ):
        lines += [
            f"curl -s http://127.0.0.1:8000/v1/{route} -H 'Content-Type: application/json' \\",
            f"  -d '{json.dumps(body)}'",
        ]
    return lines


def _others_section(summary: dict) -> list[str]:
    others = summary.get("others", [])
    if not others:
        return []
    lines = ["## Other adapter kinds", ""]
    for entry in others:
        lines += [*_other_lines(entry), ""]
    return lines


def render_readme(summary: dict) -> str:
    """The README text for a build described by `summary` (the contents of demo.json)."""
    lines = [
        "# deltaserve demo model",
        "",
        "Built by `deltaserve demo` (seed {seed}), offline, on CPU. `base/` is a tiny byte-level"
        " Llama (4 layers, hidden 128, 4 query / 2 KV heads, vocabulary = 256 bytes + 5 special"
        " tokens) trained from scratch to answer in the format below; `adapters/` holds PEFT"
        " LoRA adapters for it, of different ranks and target modules.".format(**summary),
        "",
        "## Prompt format",
        "",
        "One user turn, rendered by the tokenizer's chat template (the tokenizer adds `<s>`):",
        "",
        "```",
        "<|user|>",
        "{text}",
        "<|assistant|>",
        "```",
        "",
        "The model answers with the transformed text and `</s>`. It was trained on lowercase",
        f"words of up to {MAX_CHARS} characters; longer or other text gets less reliable answers.",
        "",
        "## Models (greedy answers)",
        "",
        *_table(summary),
        "",
        "The base echoes plain text. It also performs a task when a system message names it",
        "(`upper`, `caesar`, `leet`): each adapter bakes one of those instructions in, so the",
        "same prompt gives a different answer per adapter.",
        "",
        *_others_section(summary),
        "## Try it (`make run`)",
        "",
        "```sh",
        *_requests(summary),
        "```",
        "",
        "Exact-match rates on fresh texts and the weights' sha256 are in `demo.json`.",
        "",
    ]
    return "\n".join(lines)


def render_adapter_card(summary: dict, name: str) -> str:
    """README.md of one adapter directory (replaces peft's empty model-card template)."""
    entry = next(a for a in summary["adapters"] if a["name"] == name)
    task = summary["tasks"][entry["task"]]
    examples = zip(summary["example_texts"], summary["examples"][name], strict=True)
    return "\n".join(
        [
            f"# {name}",
            "",
            f"PEFT LoRA adapter for the deltaserve demo base model (`../../base`): it "
            f"{task['description']}, as the base does when the system message is "
            f"`{task['instruction']}`.",
            "",
            f"- rank {entry['rank']}, lora_alpha {entry['lora_alpha']}, target modules "
            + ", ".join(f"`{m}`" for m in entry["target_modules"]),
            f"- exact match on 64 fresh texts: {entry['exact_match']:.2f}",
            "",
            "Greedy answers:",
            "",
            *(f"- `{text}` → `{answer}`" for text, answer in examples),
            "",
        ]
    )
