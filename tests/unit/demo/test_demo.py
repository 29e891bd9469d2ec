"""`deltaserve.demo.build`: one real build (about a minute on CPU), then checks on what it wrote.

The build runs once per module; the determinism check runs two extra builds at 2% of the
training steps, which exercise the same code path in a few seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from deltaserve.demo import CHAT_TEMPLATE, build, demo_prompt
from deltaserve.demo.extras import MIX_FIT_NAME, MIX_NAME, PROXY_NAME, SPARSE_NAME
from deltaserve.demo.prompt import BOS_ID, EOS_ID, PAD_ID, prompt_ids
from deltaserve.demo.tasks import TASKS
from deltaserve.demo.train import ADAPTERS

OTHERS = (SPARSE_NAME, MIX_NAME, MIX_FIT_NAME, PROXY_NAME)

pytestmark = [
    pytest.mark.slow,
    # peft calls an API that transformers 5 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

PROMPTS = ("hello world", "the big fox", "good day")
ROUND_TRIP = [
    "hello world",
    "  two  spaces, a\ttab\nand a newline\n",
    "Mixed CASE 123 !?#$%&'()*+,-./:;<=>@[\\]^_`{|}~",
    "ünïcödé ✓ 日本",
    "<|user|> looks special but is text",
]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Generation on one thread: on a shared 2-core machine two threads are several times
    slower. The suite's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("demo"), progress=False)


@pytest.fixture(scope="module")
def tokenizer(demo_dir: Path):
    return AutoTokenizer.from_pretrained(demo_dir / "base")


def _load_base(demo_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(demo_dir / "base").eval()


def _greedy(model: torch.nn.Module, tokenizer, text: str) -> tuple[str, bool]:
    """(answer, ended with EOS) for `demo_prompt(text)`, via transformers' generate."""
    ids = tokenizer(demo_prompt(text), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )[0, ids.shape[1] :].tolist()
    ended = bool(out) and out[-1] == EOS_ID
    return tokenizer.decode(out, skip_special_tokens=True), ended


@pytest.fixture(scope="module")
def answers(demo_dir: Path, tokenizer) -> dict[str, list[tuple[str, bool]]]:
    """Greedy answers to PROMPTS from the base and from each adapter on a fresh base."""
    with _one_thread():
        result = {"base": [_greedy(_load_base(demo_dir), tokenizer, p) for p in PROMPTS]}
        for spec in ADAPTERS:
            adapter = demo_dir / "adapters" / spec.name
            model = PeftModel.from_pretrained(_load_base(demo_dir), adapter).eval()
            result[spec.name] = [_greedy(model, tokenizer, p) for p in PROMPTS]
    return result


def test_layout(demo_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (demo_dir / "base" / name).is_file(), name
    for spec in ADAPTERS:
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            assert (demo_dir / "adapters" / spec.name / name).is_file(), (spec.name, name)
    assert (demo_dir / ".complete").is_file()
    readme = (demo_dir / "README.md").read_text()
    assert all(f"`{spec.name}`" in readme for spec in ADAPTERS)

    config = json.loads((demo_dir / "base" / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    tok_config = json.loads((demo_dir / "base" / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATE


def test_adapters_are_heterogeneous(demo_dir: Path) -> None:
    configs = [
        json.loads((demo_dir / "adapters" / s.name / "adapter_config.json").read_text())
        for s in ADAPTERS
    ]
    assert len(configs) >= 3
    assert all(c["peft_type"] == "LORA" for c in configs)
    assert len({c["r"] for c in configs}) == len(configs)
    all_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert any(set(c["target_modules"]) < all_modules for c in configs)


def test_tokenizer_round_trips_and_matches_the_prompt_format(tokenizer) -> None:
    for text in ROUND_TRIP:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("hi", add_special_tokens=False) == [ord("h"), ord("i")]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_ID, EOS_ID)
    assert tokenizer.pad_token_id == PAD_ID

    assert tokenizer.encode(demo_prompt("hello")) == prompt_ids("hello")
    for system in (None, "upper"):
        messages = [{"role": "user", "content": "hello"}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert rendered == tokenizer.bos_token + demo_prompt("hello", system)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert ids == prompt_ids("hello", system)


def test_every_adapter_changes_the_answer(answers: dict[str, list[tuple[str, bool]]]) -> None:
    for name, rows in answers.items():
        assert all(ended for _, ended in rows), (name, rows)
    texts = {name: [answer for answer, _ in rows] for name, rows in answers.items()}
    for prompt_index, prompt in enumerate(PROMPTS):
        by_model = {name: texts[name][prompt_index] for name in texts}
        assert len(set(by_model.values())) == len(by_model), (prompt, by_model)


def test_answers_do_the_documented_task(answers: dict[str, list[tuple[str, bool]]]) -> None:
    """Most answers are exactly right: the models were trained, not just perturbed."""
    tasks = {"base": TASKS["echo"], **{s.name: TASKS[s.task] for s in ADAPTERS}}
    for name, rows in answers.items():
        right = sum(a == tasks[name].transform(p) for (a, _), p in zip(rows, PROMPTS, strict=True))
        assert right >= 2, (name, rows)


def test_base_follows_a_system_instruction(demo_dir: Path, tokenizer) -> None:
    """What the adapters bake in, the base does when a system line names the task."""
    model = _load_base(demo_dir)
    right = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt_ids(prompt, TASKS["upper"].instruction)])
        with _one_thread(), torch.no_grad():
            out = model.generate(
                input_ids=ids, max_new_tokens=16, do_sample=False, pad_token_id=PAD_ID
            )
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        right += answer == prompt.upper()
    assert right >= 2


def test_build_is_deterministic(tmp_path: Path, demo_dir: Path) -> None:
    threads = torch.get_num_threads()
    first = build(tmp_path / "a", progress=False, scale=0.02)
    second = build(tmp_path / "b", progress=False, scale=0.02)
    assert torch.get_num_threads() == threads  # the build restores the caller's setting
    weights = sorted(p.relative_to(first) for p in first.glob("**/*.safetensors"))
    # base, the LoRAs (+ the mix member upper8), the sparse delta, the proxy's two models
    assert len(weights) == 1 + len(ADAPTERS) + 1 + 1 + 2
    for rel in weights:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    # The full build's recorded hashes describe the files it left.
    summary = json.loads((demo_dir / "demo.json").read_text())
    for rel, digest in summary["sha256"].items():
        assert hashlib.sha256((demo_dir / rel).read_bytes()).hexdigest() == digest, rel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(demo_dir: Path) -> dict[str, list[str]]:
    """Greedy completions of PROMPTS from the real server (`make run`'s settings) per model."""
    import openai
    import uvicorn

    from deltaserve.entrypoints.app import create_app
    from deltaserve.entrypoints.settings import Settings

    port = _free_port()
    settings = Settings(model=str(demo_dir / "base"), adapter_dir=demo_dir / "adapters",
                        served_model_name="demo", port=port, device="cpu")  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    with _one_thread():
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60
        )
        try:
            return {
                model: [
                    client.completions.create(
                        model=model, prompt=demo_prompt(p), max_tokens=16, temperature=0
                    ).choices[0].text
                    for p in PROMPTS
                ]
                for model in ("demo", *OTHERS)
            }
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_other_adapter_kinds_are_written(demo_dir: Path) -> None:
    kinds = {
        name: json.loads((demo_dir / "adapters" / name / "deltaserve_adapter.json").read_text())
        for name in OTHERS
    }
    assert kinds[SPARSE_NAME]["kind"] == "sparse_delta"
    assert kinds[SPARSE_NAME]["base_model"] == "demo"  # the id `make run` serves the base as
    assert kinds[MIX_NAME]["kind"] == kinds[MIX_FIT_NAME]["kind"] == "mix"
    assert kinds[MIX_FIT_NAME]["routing"] != kinds[MIX_NAME]["routing"]
    for member in kinds[MIX_NAME]["inventory"]:
        assert (demo_dir / "adapters" / member / "adapter_config.json").is_file()
    assert kinds[PROXY_NAME]["kind"] == "proxy"
    for sub in ("expert", "anti"):
        assert (demo_dir / "adapters" / PROXY_NAME / sub / "model.safetensors").is_file()
    readme = (demo_dir / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in OTHERS)


def test_served_other_adapters_change_the_answer(served: dict[str, list[str]]) -> None:
    """Through the real server: every sparse_delta / mix / proxy answer differs from the base's
    on most prompts, and the base still echoes."""
    assert sum(a == p for a, p in zip(served["demo"], PROMPTS, strict=True)) >= 2, served
    for name in OTHERS:
        changed = sum(a != b for a, b in zip(served[name], served["demo"], strict=True))
        assert changed >= 2, (name, served)
