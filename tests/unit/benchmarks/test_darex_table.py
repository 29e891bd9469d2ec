"""benchmarks/darex_table.py: the task data, the table and the README markers (no training)."""

from __future__ import annotations

import random

import pytest

from benchmarks import darex_table as dx
from tests.tiny import BOS, EOS, PAD


def test_batch_labels_only_the_answer():
    ids, mask, labels = dx.batch("reverse", ["abcd", "abcdefg"])
    assert ids[0, :6].tolist() == [BOS, *b"abcd="]
    assert labels[0, :6].tolist() == [-100] * 6
    assert labels[0, 6:11].tolist() == [*b"dcba", EOS]
    assert ids[0, 11:].tolist() == [PAD] * (ids.shape[1] - 11) and mask[0, 11:].sum() == 0
    assert (labels[1] != -100).sum() == 8  # 7 letters + EOS


def test_held_out_strings_are_excluded_from_training():
    rng = random.Random(0)
    held = dx.strings(50, rng)
    pool = dx.strings(500, rng, exclude=set(held))
    assert not set(held) & set(pool) and len(set(pool)) == 500
    assert all(dx.MIN_LEN <= len(s) <= dx.MAX_LEN for s in held + pool)


def _result():
    rows = [
        {"method": m, "density": d, "accuracy_mean": 0.5, "accuracy_min": 0.25,
         "accuracy_max": 0.75, "accuracy_per_seed": [0.25, 0.5, 0.75] if m != "magnitude" else [0.5],
         "q": [0.2, 0.3, 0.3] if m == "darex-q" else None}
        for m in dx.METHODS for d in dx.ALL
    ]  # fmt: skip
    return {"held_out": 100, "seeds": 3, "base_accuracy": 0.0,
            "finetune_accuracy_full_weights": 1.0, "finetune_accuracy_dense_delta": 1.0,
            "rows": rows, "delta_rel_norm": 0.5,
            "seconds": {"train": 1, "compress": 1, "eval": 1, "total": 3},
            "machine": {"cpu": "cpu", "torch_threads": 1, "python": "3", "torch": "t",
                        "transformers": "x"}}  # fmt: skip


def test_table_has_a_row_per_density():
    text = dx.table(_result())
    for d in dx.ALL:
        assert f"({d})" in text
    assert "| 90% (0.1) | 50% (25%–75%) | 50% (25%–75%) | 50% | 0.2, 0.3, 0.3 |" in text


@pytest.mark.parametrize("existing", [False, True])
def test_update_readme_replaces_between_markers(tmp_path, monkeypatch, existing):
    readme = tmp_path / "README.md"
    tail = "\n\nreading after the markers\n"
    readme.write_text("# B\n" + (f"\n{dx.SECTION}\n\n{dx.START}\nold\n{dx.END}{tail}" if existing else ""))
    monkeypatch.setattr(dx, "README", readme)
    dx.update_readme(_result(), "python -m benchmarks.darex_table")
    dx.update_readme(_result(), "python -m benchmarks.darex_table")
    text = readme.read_text()
    assert text.count(dx.START) == text.count(dx.END) == text.count(dx.SECTION) == 1
    assert "old" not in text and "| 99% (0.01) |" in text
    assert text.endswith(tail) == existing
