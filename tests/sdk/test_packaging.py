"""deltaserve-client is its own distribution: a wheel with py.typed, depending on httpx and
pydantic only, that imports and works where the server package cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python"

IN_CLEAN_PROCESS = """
import importlib.util, sys
sys.path[:0] = [sys.argv[1]]
sys.path.append(sys.argv[2])  # site-packages without its .pth files: no editable installs
assert importlib.util.find_spec("deltaserve") is None, "the server package is importable"
import httpx, deltaserve_client
assert deltaserve_client.__file__.startswith(sys.argv[1]), deltaserve_client.__file__
def answer(request):
    return httpx.Response(200, json={"object": "list", "data": [{"id": "base", "created": 0}]})
client = deltaserve_client.Client("http://x", http_client=httpx.Client(transport=httpx.MockTransport(answer)))
print([m.id for m in client.models.list()], sorted(m for m in sys.modules if m.startswith("deltaserve")))
"""


def test_wheel_metadata_and_a_clean_import(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(SDK)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("deltaserve_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        zf.extractall(tmp_path / "site")
    assert "deltaserve_client/py.typed" in names
    assert {n.split("/")[0] for n in names if not n.startswith("deltaserve_client-")} == {
        "deltaserve_client"}  # fmt: skip
    assert "Name: deltaserve-client" in metadata
    requires = sorted(line for line in metadata.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["Requires-Dist: httpx>=0.27", "Requires-Dist: openai>=1.40; extra == \"openai\"",
                        "Requires-Dist: pydantic>=2.7"]  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-S", "-c", IN_CLEAN_PROCESS, str(tmp_path / "site"),
         sysconfig.get_paths()["purelib"]],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith("['base'] ['deltaserve_client'")


def test_every_public_method_has_a_docstring() -> None:
    import inspect

    import deltaserve_client
    from deltaserve_client import _async_client, _client

    classes = [getattr(deltaserve_client, n) for n in deltaserve_client.__all__]
    classes += [c for m in (_client, _async_client) for _, c in inspect.getmembers(m, inspect.isclass)
                if c.__module__ == m.__name__]  # the resources (client.models, ...)  # fmt: skip
    missing = [
        f"{cls.__name__}.{name}"
        for cls in classes if inspect.isclass(cls) and cls.__module__.startswith("deltaserve_client")
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member) and not inspect.getdoc(member)
    ]  # fmt: skip
    assert not missing, missing
    assert all(inspect.getdoc(c) for c in classes if inspect.isclass(c))
