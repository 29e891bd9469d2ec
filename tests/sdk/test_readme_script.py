"""The day-one script of clients/python/README.md, run as written (a subprocess with the
tenant's URL, key and adapter directory in its environment) against a server with API keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.sdk.conftest import RunningServer, TinyModel

README = Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md"
MARKER = "<!-- day-one script"


def day_one_script() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, "the README lost its day-one script"
    return match.group(1)


def test_readme_day_one_script_runs(keyed_server: RunningServer, tiny_model: TinyModel) -> None:
    env = {**os.environ, "DELTASERVE_URL": keyed_server.base_url, "DELTASERVE_API_KEY": "key-beta",
           "ADAPTER_DIR": str(tiny_model.adapters / "alpha"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", day_one_script()], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^uploaded my-lora lora rank 4 \d+ bytes [0-9a-f]{12}$", out, re.M), out
    assert "my-lora (lora)" in out and "tiny (base)" in out
    for label in ("completion", "streamed", "chat", "mix"):
        assert re.search(rf"^{label}: '.+'", out, re.M), (label, out)
    assert "not found: 404 model_not_found model" in out
    assert re.search(r"^gathered: \['.+', '.+', '.+'\]$", out, re.M)
    assert out.rstrip().endswith("deleted: True")
