"""`deltaserve compress`: write a sparse_delta adapter from a full fine-tune and say what it kept."""

from __future__ import annotations

import logging
import sys

from deltaserve.entrypoints.cli.parser import Subcommand
from deltaserve.entrypoints.settings import CompressSettings


def run_compress(settings: CompressSettings) -> int:
    """Exit status 0 on success, 2 with a one-line reason when the inputs are refused."""
    # torch and transformers load only when the command runs (`--help` stays fast).
    from deltaserve.adapter_store.compression import CompressionError, compress

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = compress(
            settings.base, settings.finetuned, settings.out, settings.method, settings.density,
            seed=settings.seed, q=settings.q, per_layer_q=settings.per_layer_q,
            calibration=settings.calibration, base_model_id=settings.base_model_id,
        )
    except (CompressionError, OSError, ValueError) as exc:
        print(f"deltaserve compress: error: {exc}", file=sys.stderr)
        return 2
    q = res.q if not isinstance(res.q, list) else "[" + ", ".join(f"{v:.4g}" for v in res.q) + "]"
    print(f"wrote {res.out_dir} ({res.method}, density {res.density}"
          + (f", q {q}" if res.q is not None else "") + ")")
    print(f"kept {res.kept} of {res.total} delta entries ({res.kept / max(res.total, 1):.2%})")
    print(f"size: {res.delta_bytes / 2**20:.2f} MiB vs {res.finetune_bytes / 2**20:.2f} MiB "
          f"for the full fine-tune (ratio {res.size_ratio:.3f})")
    return 0


COMMAND = Subcommand(
    "Compress a full fine-tune into a sparse_delta adapter (DARE, DAREx-q or magnitude pruning).",
    CompressSettings, run_compress,
)  # fmt: skip
