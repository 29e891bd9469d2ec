"""Fixtures of the hostile-tenant tests: the tiny model and real servers over it (issue 31).

Each test module starts the servers it needs (with the limits and keys it needs) from these.
"""

from __future__ import annotations

from tests.integration.server.conftest import (  # noqa: F401  (fixtures re-exported)
    BASE_ID,
    RunningServer,
    TinyModel,
    free_port,
    serve,
    start_server,
    tiny_model,
)
