"""The synthetic text tasks the demo base and adapters are trained on.

The base learns every task, each selected by an instruction prefix ("upper: hello" → "HELLO"),
and plain text is echoed. Each adapter is then trained on *plain* prompts with one task's
answers, so it bakes that instruction in: the same prompt, "hello world", gives
"hello world" on the base, "HELLO WORLD" with `upper`, "dlrow olleh" with `reverse`, and
"ifmmp xpsme" with `caesar`. Teaching the base the tasks first is what lets a LoRA of rank 4
pick one up in a few dozen steps: a rank-4 delta can switch a task on, but cannot learn 26
new letter mappings from a base that never produced them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deltaserve.demo.prompt import PAD_ID, answer_ids, prompt_ids

# Training texts: 1-3 lowercase words, most from this list, some random letter strings (so the
# tasks work on words the model never saw).
WORDS: tuple[str, ...] = tuple(
    """the cat dog sat on mat red blue green sun moon star tree fish bird hello world good day
    night rain snow fire water stone light dark time code data model server fast slow big small
    happy sad open close yes no one two three four five apple pear plum king queen river sea sky
    cloud wind road home book pen cup tea milk bread cake song ship map key door wall lamp gold
    iron salt wolf bear frog duck owl fox horse mouse leaf rose seed farm town city hill lake
    rock sand wave storm bell drum harp ring coin card game play run jump swim fly sing talk
    walk read write draw""".split()
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_CHARS = 16
"""Longest training text; the demo answers are reliable up to about this length."""


def _caesar(text: str) -> str:
    """Shift every ASCII letter one place forward, wrapping z → a; keep everything else."""
    out = []
    for ch in text:
        if "a" <= ch <= "z":
            out.append(chr((ord(ch) - ord("a") + 1) % 26 + ord("a")))
        elif "A" <= ch <= "Z":
            out.append(chr((ord(ch) - ord("A") + 1) % 26 + ord("A")))
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Task:
    """One text transformation: `instruction + text` → `transform(text)` on the base."""

    name: str
    instruction: str
    """Prefix that selects the task on the base model ("" for echo)."""
    transform: Callable[[str], str]
    description: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("echo", "", lambda s: s, "repeats the text"),
        Task("upper", "upper: ", str.upper, "upper-cases the text"),
        Task("reverse", "reverse: ", lambda s: s[::-1], "reverses the text"),
        Task("caesar", "caesar: ", _caesar, "shifts each letter one place (a→b, z→a)"),
    )
}


def sample_text(rng: random.Random, max_chars: int = MAX_CHARS) -> str:
    """1-3 space-separated lowercase words, cut to at most `max_chars` characters."""
    words = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            words.append(rng.choice(WORDS))
        else:
            words.append("".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 6))))
    return " ".join(words)[:max_chars].strip() or rng.choice(LETTERS)


def encode_example(prompt_text: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one training row; the loss covers only the answer and EOS."""
    prompt, target = prompt_ids(prompt_text), answer_ids(answer)
    return prompt + target, [-100] * len(prompt) + target


def task_example(task: Task, text: str, *, instructed: bool) -> tuple[list[int], list[int]]:
    """A row for `task` on `text`: with the instruction prefix (base) or without (adapter)."""
    prefix = task.instruction if instructed else ""
    return encode_example(prefix + text, task.transform(text))


def collate(rows: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows into (input_ids [B, T], labels [B, T]) int64 tensors.

    No attention mask is needed: padding sits after every real token, so causal attention
    never lets a real position see it, and padded positions carry label -100.
    """
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
    return input_ids, labels
