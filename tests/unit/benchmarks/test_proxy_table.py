"""benchmarks/proxy_table.py: the adapter layout, gap closed, the table and the README markers
(no training)."""

from __future__ import annotations

import json

import pytest

from benchmarks import proxy_table as px


def test_gap_closed():
    assert px.gap_closed(0.5, 0.0, 1.0) == 0.5
    assert px.gap_closed(0.3, 0.1, 0.5) == pytest.approx(0.5)
    assert px.gap_closed(0.0, 0.2, 1.0) == pytest.approx(-0.25)
    assert px.gap_closed(0.4, 0.2, 0.2) is None


def test_proxy_adapter_layout(tmp_path):
    for name in ("anti_src", "expert_src"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"name": name}))
    out = px.make_proxy_adapter(tmp_path / "ad", tmp_path / "expert_src", tmp_path / "anti_src")
    cfg = json.loads((out / "deltaserve_adapter.json").read_text())
    assert cfg == {"kind": "proxy", "expert": "expert", "anti_expert": "anti", "alpha": 1.0}
    assert json.loads((out / "anti" / "config.json").read_text())["name"] == "anti_src"
    assert json.loads((out / "expert" / "config.json").read_text())["name"] == "expert_src"
    px.make_proxy_adapter(out, tmp_path / "expert_src", tmp_path / "anti_src")  # replaces


def test_small_model_shares_the_base_vocab_and_is_smaller():
    assert px.SMALL["hidden_size"] < px.LARGE["hidden_size"]
    assert px.SMALL["num_hidden_layers"] < px.LARGE["num_hidden_layers"]
    for size in (px.SMALL, px.LARGE):
        assert size["hidden_size"] % size["num_attention_heads"] == 0


def _result():
    acc = {"base": 0.0, "finetune": 1.0, "expert": 0.5, "anti_expert": 0.0}
    acc |= {f"proxy_alpha_{a}": 0.5 for a in px.ALPHAS}
    acc |= {"proxy_alpha_0.5": 0.25, "proxy_alpha_1.0": 0.75}
    return {"held_out": 100, "pretrain_steps": 10, "finetune_steps": 10, "batch_size": 64,
            "large": {**px.LARGE, "params": 2_000_000}, "small": {**px.SMALL, "params": 300_000},
            "accuracy": acc,
            "gap_closed": {f"alpha_{a}": px.gap_closed(acc[f"proxy_alpha_{a}"], 0.0, 1.0)
                           for a in px.ALPHAS},
            "copies": {"base": 97, "proxy_0.5": 52},
            "copy_accuracy": {"base": 0.9, "anti_expert": 0.8},
            "crosscheck": {"alpha": 1.0, "checked": 16, "engine_equals_three_hf_models": 16},
            "seconds": {"train_large": 1, "train_small": 1, "eval": 1, "crosscheck": 1,
                        "total": 4},
            "machine": {"cpu": "cpu", "torch_threads": 1, "python": "3", "torch": "t",
                        "transformers": "x"}}  # fmt: skip


def test_table_rows():
    text = px.table(_result())
    assert "| small expert alone (fine-tuned small) | 50% | 50% | — |" in text
    assert "| large base (copy-pretrained) | 0% | — | 97 |" in text
    assert "| **proxy-tuned base, α = 1.0** | 75% | 75% | — |" in text
    assert "| proxy-tuned base, α = 0.5 | 25% | 25% | 52 |" in text
    for a in px.ALPHAS:
        assert f"α = {a}" in text
    assert "16/16 engine proxy answers" in text


@pytest.mark.parametrize("existing", [False, True])
def test_update_readme_replaces_between_markers(tmp_path, monkeypatch, existing):
    readme = tmp_path / "README.md"
    tail = "\n\nreading after the markers\n"
    readme.write_text("# B\n" + (f"\n{px.SECTION}\n\n{px.START}\nold\n{px.END}{tail}" if existing else ""))
    monkeypatch.setattr(px, "README", readme)
    px.update_readme(_result(), "python -m benchmarks.proxy_table")
    px.update_readme(_result(), "python -m benchmarks.proxy_table")
    text = readme.read_text()
    assert text.count(px.START) == text.count(px.END) == text.count(px.SECTION) == 1
    assert "old" not in text and "α = 2.0" in text
    assert text.endswith(tail) == existing
