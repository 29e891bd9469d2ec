"""`deltaserve mix fit`: load the base model and the inventory, fit MHR-z, write the mix."""

from __future__ import annotations

import logging
import sys

from deltaserve.entrypoints.cli.parser import Subcommand
from deltaserve.entrypoints.settings import MixFitSettings

logger = logging.getLogger(__name__)


def run_mix_fit(settings: MixFitSettings) -> int:
    """Fit the routing; prints the written directory. Returns the exit status."""
    # torch, transformers and the router load only when the command runs (`--help` stays fast).
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltaserve.router.fit import RoutedLoRA, encode, fit_routing, read_examples, write_mix
    from deltaserve.router.mix import MixError
    from deltaserve.router.peft_io import read_peft

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    inventory = [n.strip() for n in settings.inventory.split(",") if n.strip()]
    if len(inventory) < 2:
        print("deltaserve mix fit: error: --inventory needs at least two LoRAs", file=sys.stderr)
        return 2
    torch.manual_seed(settings.seed)
    try:
        members = [read_peft(settings.adapter_dir / n, n) for n in inventory]
        examples = read_examples(settings.data)
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        model = AutoModelForCausalLM.from_pretrained(settings.model, torch_dtype=torch.float32)
        routed = RoutedLoRA(model.eval(), members, inventory)
        result = fit_routing(
            routed, encode(tokenizer, examples), settings.heads, settings.steps, settings.lr,
            progress=lambda it: tqdm(it, total=settings.steps, desc="mix fit", unit="step"),
        )  # fmt: skip
    except (MixError, OSError, ValueError) as exc:
        print(f"deltaserve mix fit: error: {exc}", file=sys.stderr)
        return 2
    out = write_mix(settings.out, inventory, result,
                    {"steps": settings.steps, "lr": settings.lr, "examples": len(examples)})  # fmt: skip
    logger.info("loss %.4f → %.4f; routing %s", result.losses[0], result.losses[-1],
                [[round(float(w), 3) for w in row] for row in result.weights])  # fmt: skip
    print(out)
    return 0


FIT = Subcommand(
    "Learn a mix's routing (MHR-z: only the routing logits, the inventory frozen) from "
    "prompt/completion examples and write a `mix` adapter.", MixFitSettings, run_mix_fit,
)  # fmt: skip
