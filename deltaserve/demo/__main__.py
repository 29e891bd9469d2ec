"""`python -m deltaserve.demo --out DIR`: build the demo without the `deltaserve` CLI."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deltaserve.demo",
        description="Train the demo base model and its adapters (offline, ~1.5 min on CPU).",
    )
    parser.add_argument("--out", required=True, help="directory to write base/ and adapters/ to")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    from deltaserve.demo.builder import build

    start = time.perf_counter()
    path = build(args.out, progress=not args.quiet, seed=args.seed)
    logging.getLogger(__name__).info("built in %.1f s", time.perf_counter() - start)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
