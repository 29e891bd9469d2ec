"""lm-evaluation-harness end to end: `local-completions` against a real deltaserve server gives
the same per-document loglikelihoods (multiple_choice, scored through echo + logprobs) and
generations (generate_until) as lm-eval's own `hf` backend on the same weights (`peft=` for
the LoRA adapter). The tasks are local JSON files (no hub)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel, start_server

MC_DOCS = [
    {"question": "Sky colour:", "choices": [" blue", " green", " red"], "answer": 0},
    {"question": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0},
    {"question": "Opposite of hot:", "choices": [" cold", " warm", " hot", " tepid"], "answer": 0},
    {"question": "A cat says", "choices": [" meow", " woof"], "answer": 0},
]
GEN_DOCS = [{"prompt": p, "target": "x"} for p in ("Once upon", "Hello, ", "def f(x):", "Q: why")]


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel) -> Iterator[RunningServer]:
    """float32, like the transformers oracle (--dtype auto may pick bfloat16 on this CPU)."""
    running = start_server(tiny_model, max_num_seqs=16, dtype="float32")
    yield running
    running.stop()


def _write_tasks(root: Path) -> Path:
    """Two task YAMLs (multiple_choice, generate_until) over JSON-lines files in `root`."""
    for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "ds_mc.yaml").write_text(f"""task: ds_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    (root / "ds_gen.yaml").write_text(f"""task: ds_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "gen.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
""")
    return root


def _samples(model: str, model_args: dict, tasks_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=["ds_mc", "ds_gen"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0, batch_size=4,
    )
    return {task: sorted(s, key=lambda d: d["doc_id"]) for task, s in out["samples"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("model", [BASE_ID, "alpha"])
def test_local_completions_matches_hf_backend(
    server: RunningServer, tiny_model: TinyModel, tmp_path: Path, monkeypatch, model: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    tasks = _write_tasks(tmp_path)
    served = _samples("local-completions", {
        "base_url": f"{server.base_url}/v1/completions", "model": model,
        "tokenizer": str(tiny_model.base), "tokenizer_backend": "huggingface",
        "max_retries": 1, "num_concurrent": 2,
        # lm-eval's hf backend keeps the tokenizer's default (this one adds BOS); the API
        # backend leaves special tokens out unless told: same token ids on both sides
        "add_bos_token": True,
    }, tasks)
    hf_args = {"pretrained": str(tiny_model.base), "dtype": "float32", "device": "cpu"}
    if model != BASE_ID:
        hf_args["peft"] = str(tiny_model.adapters / model)
    oracle = _samples("hf", hf_args, tasks)

    assert len(served["ds_mc"]) == len(MC_DOCS) and len(served["ds_gen"]) == len(GEN_DOCS)
    for got, want in zip(served["ds_mc"], oracle["ds_mc"], strict=True):
        got_ll = [r[0][0] for r in got["resps"]]
        want_ll = [r[0][0] for r in want["resps"]]
        assert len(got_ll) == len(want_ll) > 1
        assert got_ll == pytest.approx(want_ll, abs=2e-3)
        assert [r[0][1] for r in got["resps"]] == [r[0][1] for r in want["resps"]]  # is_greedy
    for got, want in zip(served["ds_gen"], oracle["ds_gen"], strict=True):
        assert got["resps"] == want["resps"]
        assert got["resps"][0][0]  # something was generated
