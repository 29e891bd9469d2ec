"""Reading inventory LoRAs from PEFT directories and writing a materialised mix as one.

The members' raw (unscaled) A and B are mixed; the result keeps the members' shared
adapter_config.json (rank, alpha, targets, rsLoRA), so the engine's — and PEFT's — scaling
applies to the mixed LoRA exactly as it would to each member.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deltaserve.router.materialise import LoRAPair, ModuleKey
from deltaserve.router.mix import MixMemberError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MIX_INFO = "deltaserve_mix.json"
"""Written next to a materialisation: which members' content it was built from."""

_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.lora_([AB])(?:\.[^.]+)?\.weight$"
)
COMPAT_FIELDS = ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "use_dora")
"""adapter_config.json fields every member must agree on (besides the target modules)."""


@dataclass
class PeftLoRA:
    """One member: its config and per-module raw (A [r, d_in], B [d_out, r])."""

    config: dict[str, Any]
    tensors: dict[ModuleKey, LoRAPair]
    names: dict[tuple[int, str, str], str]
    """(layer, module, "A"|"B") → the tensor's name in the file."""


def read_peft(path: Path, label: str) -> PeftLoRA:
    """Load a PEFT LoRA directory (safetensors only) in float32 on the CPU."""
    try:
        config = json.loads((path / PEFT_CONFIG).read_text())
        pairs: dict[ModuleKey, dict[str, torch.Tensor]] = {}
        names: dict[tuple[int, str, str], str] = {}
        with safe_open(str(path / PEFT_WEIGHTS), framework="pt", device="cpu") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None:
                    raise MixMemberError(f"member `{label}`: unsupported tensor {key!r}.")
                layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
                pairs.setdefault((layer, module), {})[ab] = f.get_tensor(key).float()
                names[(layer, module, ab)] = key
    except (OSError, ValueError) as exc:
        if isinstance(exc, MixMemberError):
            raise
        raise MixMemberError(f"member `{label}` is not a readable PEFT LoRA: {exc}") from None
    tensors = {k: (v["A"], v["B"]) for k, v in pairs.items() if set(v) == {"A", "B"}}
    if len(tensors) != len(pairs) or not tensors:
        raise MixMemberError(f"member `{label}`: every module needs lora_A and lora_B.")
    return PeftLoRA(config, tensors, names)


def _signature(cfg: dict[str, Any]) -> dict[str, Any]:
    targets = cfg.get("target_modules")
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    return {**{f: cfg.get(f) or None for f in COMPAT_FIELDS}, "target_modules": targets}


def check_compatible(members: list[PeftLoRA], labels: list[str]) -> None:
    """Same rank, alpha, scaling rule and target modules for every member (else MixMemberError)."""
    first = _signature(members[0].config)
    for member, label in zip(members[1:], labels[1:], strict=True):
        sig = _signature(member.config)
        diff = [k for k in first if first[k] != sig[k]]
        if diff:
            raise MixMemberError(
                f"mix members must share rank, alpha and target modules: `{label}` differs from "
                f"`{labels[0]}` in {', '.join(diff)}."
            )


def write_peft(
    dest: Path, template: PeftLoRA, tensors: dict[ModuleKey, LoRAPair], info: dict[str, Any]
) -> Path:
    """Write `tensors` as a PEFT LoRA at `dest` (atomically: staged, then renamed)."""
    staged = dest.parent / f".staging-{uuid.uuid4().hex}"
    staged.mkdir(parents=True)
    out: dict[str, torch.Tensor] = {}
    for (layer, module), (a, b) in tensors.items():
        out[template.names[(layer, module, "A")]] = a.detach().contiguous()
        out[template.names[(layer, module, "B")]] = b.detach().contiguous()
    save_file(out, str(staged / PEFT_WEIGHTS))
    (staged / PEFT_CONFIG).write_text(json.dumps(template.config, indent=2, sort_keys=True))
    (staged / MIX_INFO).write_text(json.dumps(info, sort_keys=True))
    try:
        os.rename(staged, dest)
    except OSError:  # another build of the same key won: same content
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest
