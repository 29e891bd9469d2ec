"""The synthetic text tasks the demo base and adapters are trained on.

The base echoes the user's text, and performs every other task when a system line names it:
`<s>upper\\n<|user|>\\nhello\\n<|assistant|>\\n` → `HELLO</s>`. Each adapter is then trained on
*plain* prompts with one task's answers, so it bakes that instruction in: the prompt "hello
world" gives "hello world" on the base, "HELLO WORLD" with `upper`, "ifmmp xpsme" with
`caesar` and "h3ll0 w0rld" with `leet`.

Why this shape (each choice was measured on CPU, where the whole build has about a minute):
- The base learns the tasks first, so a LoRA only has to switch one on: rank 4 on q/v does
  that in 60 steps, but did not learn 26 new letter mappings from a base that never made them.
- The instruction is a line *before* `<|user|>`, so the text always starts right after
  `<|user|>\\n` and ends right before `\\n<|assistant|>`, as in a plain prompt. With an
  inline prefix ("upper: hello") the copy circuit had to find a moving start and the base
  learnt several times slower.
- All tasks are per-character maps over the same copy circuit. Reversal needs a second circuit,
  and neither the base nor a rank-16 LoRA learnt it reliably within the time budget.
- Texts of at most 12 characters: with 16, the base needed about 40% more steps.
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
Row = tuple[list[int], list[int]]  # (input ids, labels) of one example, unpadded
MAX_CHARS = 12
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


_LEET = str.maketrans("aeiost", "431057")


def _leet(text: str) -> str:
    """Replace a, e, i, o, s, t by the digits that look like them (4, 3, 1, 0, 5, 7)."""
    return text.translate(_LEET)


@dataclass(frozen=True)
class Task:
    """One text transformation: `text` → `transform(text)`."""

    name: str
    instruction: str
    """System line that selects the task on the base model ("" for echo: no system line)."""
    transform: Callable[[str], str]
    description: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("echo", "", lambda s: s, "repeats the text"),
        Task("upper", "upper", str.upper, "upper-cases the text"),
        Task("caesar", "caesar", _caesar, "shifts each letter one place (a→b, z→a)"),
        Task("leet", "leet", _leet, "writes a, e, i, o, s, t as 4, 3, 1, 0, 5, 7"),
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


def encode_example(text: str, answer: str, system: str | None = None) -> Row:
    """(input ids, labels) for one training row; the loss covers only the answer and EOS."""
    prompt, target = prompt_ids(text, system), answer_ids(answer)
    return prompt + target, [-100] * len(prompt) + target


def task_example(task: Task, text: str, *, instructed: bool) -> Row:
    """A row for `task` on `text`: with its system line (base) or without (adapter)."""
    system = task.instruction if instructed and task.instruction else None
    return encode_example(text, task.transform(text), system)


def collate(rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
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
