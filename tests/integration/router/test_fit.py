"""`deltaserve mix fit` on a tiny synthetic task none of the members was trained for: the
completions of a hidden 2-head mixture of the inventory. Fitting only the routing lowers the
training loss and beats the uniform mix (MHR-μ) on held-out examples; the result serves."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from deltaserve.entrypoints.cli.main import main
from deltaserve.router.fit import RoutedLoRA, encode
from deltaserve.router.mix import uniform
from deltaserve.router.peft_io import read_peft
from tests.integration.router.conftest import MEMBERS
from tests.integration.server.conftest import RunningServer, TinyModel

HIDDEN = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
"""The task: what this (unknown to the fit) routing of the inventory answers."""


def _task(model: TinyModel, routed: RoutedLoRA, tok, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice("abcdefghij klmnop") for _ in range(6))
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad(), routed.routed(HIDDEN):
            for _ in range(6):
                ids = torch.cat([ids, routed.model(ids).logits[:, -1:].argmax(-1)], dim=1)
        rows.append({"prompt": prompt, "completion": tok.decode(ids[0, -6:])})
    return rows


def test_mix_fit_lowers_loss_and_beats_uniform_on_held_out(
    mix_model: TinyModel, mix_server: RunningServer, tmp_path: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(mix_model.base)
    model = LlamaForCausalLM.from_pretrained(mix_model.base, torch_dtype=torch.float32).eval()
    members = [read_peft(mix_model.adapters / n, n) for n in MEMBERS]
    routed = RoutedLoRA(model, members, list(MEMBERS))
    train, held_out = _task(mix_model, routed, tok, 12, seed=1), _task(mix_model, routed, tok, 8, seed=2)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train))
    out = tmp_path / "fitted"
    assert main(["mix", "fit", "--model", str(mix_model.base), "--adapter-dir", str(mix_model.adapters),
                 "--inventory", ",".join(MEMBERS), "--heads", "2", "--data", str(data),
                 "--out", str(out), "--steps", "30", "--lr", "0.2"]) == 0  # fmt: skip
    cfg = json.loads((out / "deltaserve_adapter.json").read_text())
    assert cfg["kind"] == "mix" and cfg["heads"] == 2 and cfg["inventory"] == list(MEMBERS)
    assert cfg["fit"]["loss_after"] < cfg["fit"]["loss_before"]
    fitted = torch.tensor(cfg["routing"])
    torch.testing.assert_close(fitted.sum(dim=1), torch.ones(2))
    held = encode(tok, held_out)
    uniform_loss = routed.eval_loss(held, torch.tensor(uniform(3, 2)))
    fitted_loss = routed.eval_loss(held, fitted)
    assert fitted_loss < uniform_loss, (fitted_loss, uniform_loss)
    # the fitted mix registers and serves like any other
    files = [("files", ("deltaserve_adapter.json", (out / "deltaserve_adapter.json").read_bytes()))]
    r = httpx.post(f"{mix_server.base_url}/v1/adapters", data={"name": "fitted"}, files=files)
    assert r.status_code == 201, r.text
    served = mix_server.client.completions.create(model="fitted", prompt="abc", max_tokens=4,
                                                  temperature=0)  # fmt: skip
    assert served.choices[0].finish_reason in ("length", "stop")
