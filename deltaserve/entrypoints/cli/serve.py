"""`deltaserve serve`: the HTTP server, drained cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from deltaserve.entrypoints.cli.parser import Subcommand
from deltaserve.entrypoints.settings import Settings


def run_serve(settings: Settings) -> int:
    """`deltaserve serve`: run the HTTP server until SIGTERM/SIGINT, then drain and exit."""
    import uvicorn

    from deltaserve.entrypoints.app import (
        CUT_GRACE_S,
        create_app,
        install_reload_signal,
        start_draining,
    )

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except (OSError, ValueError, KeyError) as exc:  # e.g. an unreadable or invalid --api-keys file
        print(f"deltaserve serve: error: {exc}", file=sys.stderr)
        return 2

    class DrainingServer(uvicorn.Server):
        """On a shutdown signal, first mark the app draining (new requests get 503)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            start_draining(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's own deadline comes after ours, so requests are cut cleanly by the app.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s + CUT_GRACE_S + 1),
    )
    install_reload_signal(app)
    DrainingServer(config).run()
    return 0


COMMAND = Subcommand("Serve the base model and its adapters over HTTP.", Settings, run_serve)
