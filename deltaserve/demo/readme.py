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
    return rows


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
