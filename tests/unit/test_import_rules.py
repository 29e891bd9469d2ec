"""DESIGN.md §3 import rules, checked by parsing every .py file with `ast` (nothing is imported).

The layers, lowest first; a layer imports only from itself and the layers below it:
- engine imports nothing of deltaserve outside deltaserve.engine;
- backends (deltaserve.backends.vllm) sit beside the engine: they import engine types only;
- router and adapter_store import (types) from deltaserve.engine only;
- tenancy (keys, tenants, quotas, rate limits) imports only itself: no HTTP, no engine;
- demo builds models with the engine, router and adapter_store, never the server;
- entrypoints (HTTP app, routes, OpenAI protocol, CLI) may import every layer;
- clients/ and loadtests/ speak HTTP only (nothing of deltaserve);
- no import cycles between deltaserve modules (lazy and type-checking imports included);
- the SDK (clients/python, a separate distribution) imports only the standard library, httpx,
  pydantic and itself, plus openai lazily (an optional extra), and declares only httpx and
  pydantic as dependencies;
- one module imports prometheus_client (deltaserve/entrypoints/metrics.py);
- one package imports vllm (deltaserve/backends/vllm/);
- one module reads the environment (deltaserve/entrypoints/settings.py).

Each rule is a row of data; a violation names the file, line and the offending import.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

from tests.unit.import_checker import (
    Rule,
    eager_imports_of,
    env_reads_of,
    import_cycles,
    imports_of,
    rule_violations,
)

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "__pycache__", "build", "dist", ".git", "node_modules"}


ENGINE = "deltaserve.engine"
RULES = [
    Rule("deltaserve/engine/", (ENGINE,), "engine imports nothing of ours"),
    Rule("deltaserve/backends/", ("deltaserve.backends", ENGINE),
         "backends sit beside the engine: they import only engine types"),
    Rule("deltaserve/router/", ("deltaserve.router", ENGINE),
         "router imports only (types from) deltaserve.engine"),
    Rule("deltaserve/adapter_store/", ("deltaserve.adapter_store", ENGINE),
         "adapter_store imports only (types from) deltaserve.engine"),
    Rule("deltaserve/tenancy/", ("deltaserve.tenancy",), "tenancy sits below the entrypoints"),
    Rule("deltaserve/demo/", ("deltaserve.demo", ENGINE, "deltaserve.router",
                              "deltaserve.adapter_store"), "the demo never imports the server"),
    Rule("clients/", (), "clients speak HTTP only"),
    Rule("loadtests/", (), "loadtests speak HTTP only"),
]
SDK_FILES = "clients/python/"
SDK_IMPORTS = ("deltaserve_client", "httpx", "pydantic", "openai")
"""Top-level modules the SDK may import besides the standard library."""
SDK_LAZY = ("openai",)
"""Optional dependencies: imported inside functions (or for type checking) only."""
SDK_DEPENDENCIES = {"httpx", "pydantic"}
PROMETHEUS_OWNER = "deltaserve/entrypoints/metrics.py"
VLLM_OWNER = "deltaserve/backends/vllm/"
"""The only package that imports vllm (an optional extra); others reach it lazily."""
ENV_OWNER = "deltaserve/entrypoints/settings.py"


# ---- the SDK's own check -------------------------------------------------------------------

def sdk_violations(files: dict[str, str]) -> list[str]:
    """SDK imports outside the standard library + SDK_IMPORTS, and eager optional imports."""
    bad = []
    for rel, src in files.items():
        if not rel.startswith(SDK_FILES):
            continue
        for line, target in imports_of(src, rel):
            top = target.split(".")[0]
            if top not in sys.stdlib_module_names and top not in SDK_IMPORTS:
                bad.append(f"{rel}:{line} imports {target} "
                           "(deltaserve-client depends on httpx and pydantic only)")  # fmt: skip
        for line, target in eager_imports_of(src, rel):
            if target.split(".")[0] in SDK_LAZY:
                bad.append(f"{rel}:{line} imports {target} at import time "
                           "(an optional dependency: import it where it is used)")  # fmt: skip
    return bad


def _py_files() -> dict[str, str]:
    files = {}
    for top in ("deltaserve", "clients", "loadtests"):
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if SKIP_DIRS & set(path.relative_to(ROOT).parts):
                continue
            files[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = _py_files()
    assert sum(r.startswith("deltaserve/engine/") for r in found) >= 10, "walked the wrong tree"
    assert sum(r.startswith(SDK_FILES) for r in found) >= 5, "the SDK's files were not found"
    return found


# ---- the rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES, ids=[r.files for r in RULES])
def test_package_import_rules(files, rule):
    assert not rule_violations(rule, files), "\n".join(rule_violations(rule, files))


def test_only_the_vllm_backend_imports_vllm_and_only_lazily(files):
    bad = [f"{rel}:{line} imports {t} (only {VLLM_OWNER} may)"
           for rel, src in files.items() if not rel.startswith(VLLM_OWNER)
           for line, t in imports_of(src, rel) if t == "vllm" or t.startswith("vllm.")]
    eager = [f"{rel}:{node.lineno} imports {VLLM_OWNER} at module level (import it lazily)"
             for rel, src in files.items() if not rel.startswith(VLLM_OWNER)
             for node in ast.parse(src).body if isinstance(node, (ast.Import, ast.ImportFrom))
             for _, t in imports_of(ast.unparse(node), rel)
             if t.startswith("deltaserve.backends.vllm.client")]
    assert not bad + eager, "\n".join(bad + eager)


def test_no_import_cycles(files):
    cycles = import_cycles(files)
    assert not cycles, "\n".join(" ↔ ".join(c) for c in cycles)


def test_sdk_imports_only_its_dependencies(files):
    assert not sdk_violations(files), "\n".join(sdk_violations(files))


def test_sdk_declares_only_httpx_and_pydantic():
    project = tomllib.loads((ROOT / SDK_FILES / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert project["name"] == "deltaserve-client" and names == SDK_DEPENDENCIES


def test_only_metrics_module_imports_prometheus_client(files):
    bad = [f"{rel}:{line} imports {t} (only {PROMETHEUS_OWNER} may)"
           for rel, src in files.items() if rel != PROMETHEUS_OWNER
           for line, t in imports_of(src, rel)
           if t == "prometheus_client" or t.startswith("prometheus_client.")]
    assert not bad, "\n".join(bad)


def test_only_settings_reads_the_environment(files):
    bad = [f"{rel}:{line} reads the environment via {what} (only {ENV_OWNER} may)"
           for rel, src in files.items()
           if rel.startswith("deltaserve/") and rel != ENV_OWNER
           for line, what in env_reads_of(src, rel)]
    assert not bad, "\n".join(bad)


# ---- the checker catches what it must -----------------------------------------------------

ENGINE_FILE = "deltaserve/engine/adapters/pool.py"


@pytest.mark.parametrize("source, target", [
    ("import deltaserve.entrypoints.app", "deltaserve.entrypoints.app"),
    ("from deltaserve.router import resolve", "deltaserve.router.resolve"),
    ("from deltaserve import entrypoints", "deltaserve.entrypoints"),
    ("from ...entrypoints import settings", "deltaserve.entrypoints.settings"),
    ("from deltaserve.tenancy.auth import ApiKeyAuth", "deltaserve.tenancy.auth.ApiKeyAuth"),
    ("from ... import router", "deltaserve.router"),
    ("def f():\n    from deltaserve.adapter_store import registry", "deltaserve.adapter_store.registry"),
    ("import importlib\nimportlib.import_module('deltaserve.entrypoints.metrics')", "deltaserve.entrypoints.metrics"),
])
def test_checker_flags_engine_violations(source, target):
    bad = rule_violations(RULES[0], {ENGINE_FILE: source})
    assert len(bad) == 1 and f"imports {target} " in bad[0] and ENGINE_FILE in bad[0]


@pytest.mark.parametrize("source", [
    "from deltaserve.engine.kv_cache import BlockAllocator",
    "from .. import config",
    "from ..ops.lora import LoRAStack",
    "from . import base",
    "import torch\nfrom deltaserve_client import Client",
])
def test_checker_allows_engine_internal_imports(source):
    assert rule_violations(RULES[0], {ENGINE_FILE: source}) == []


def test_checker_resolves_relative_imports_from_init():
    got = imports_of("from . import kv_cache\nfrom .ops import lora", "deltaserve/engine/__init__.py")
    assert [t for _, t in got] == ["deltaserve.engine.kv_cache", "deltaserve.engine.ops.lora"]


def test_checker_flags_clients_importing_deltaserve():
    bad = rule_violations(RULES[-2], {"clients/python/sdk/client.py": "from deltaserve.engine import x"})
    assert bad == ["clients/python/sdk/client.py:1 imports deltaserve.engine.x "
                   "(clients speak HTTP only)"]


SDK_FILE = "clients/python/src/deltaserve_client/_client.py"


@pytest.mark.parametrize("source, flagged", [
    ("import torch", "imports torch "),
    ("from deltaserve.entrypoints.openai.protocol import CompletionRequest",
     "imports deltaserve.entrypoints"),
    ("import requests", "imports requests "),
    ("import openai", "imports openai at import time"),
    ("try:\n    from openai import OpenAI\nexcept ImportError:\n    pass", "at import time"),
    ("import sys\nif sys.version_info > (3,):\n    import openai", "at import time"),
])
def test_checker_flags_sdk_violations(source, flagged):
    bad = sdk_violations({SDK_FILE: source})
    assert len(bad) == 1 and flagged in bad[0] and SDK_FILE in bad[0]


@pytest.mark.parametrize("source", [
    "import json\nimport httpx\nfrom pydantic import BaseModel\nfrom deltaserve_client import x",
    "def f():\n    import openai",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import openai",
    "from __future__ import annotations\nimport email.utils",
])
def test_checker_allows_sdk_imports(source):
    assert sdk_violations({SDK_FILE: source}) == []


@pytest.mark.parametrize("source", [
    "import os\nx = os.environ['A']",
    "import os\nx = os.environ.get('A')",
    "import os\nx = os.getenv('A')",
    "import os as _o\nx = _o.environ",
    "from os import environ",
    "from os import getenv as g",
])
def test_checker_flags_environment_reads(source):
    assert len(env_reads_of(source, "deltaserve/engine/x.py")) == 1


def test_checker_ignores_other_os_use():
    assert env_reads_of("import os\np = os.path.join('a', os.sep)", "deltaserve/x.py") == []


RULE = {r.files: r for r in RULES}


@pytest.mark.parametrize("rule, rel, source", [
    ("deltaserve/tenancy/", "deltaserve/tenancy/auth.py", "from deltaserve.entrypoints.errors import X"),
    ("deltaserve/tenancy/", "deltaserve/tenancy/quotas.py", "import deltaserve.engine.config"),
    ("deltaserve/backends/", "deltaserve/backends/vllm/args.py",
     "from deltaserve.entrypoints.settings import Settings"),
    ("deltaserve/backends/", "deltaserve/backends/vllm/client.py", "from deltaserve.tenancy import auth"),
    ("deltaserve/demo/", "deltaserve/demo/builder.py", "from deltaserve.entrypoints.cli import main"),
])
def test_checker_flags_upward_imports(rule, rel, source):
    assert len(rule_violations(RULE[rule], {rel: source})) == 1


def test_checker_allows_downward_imports():
    files = {"deltaserve/backends/vllm/client.py": "from deltaserve.engine.outputs import RequestOutput",
             "deltaserve/tenancy/quotas.py": "from deltaserve.tenancy.ratelimit import Window",
             "deltaserve/demo/extras.py": "from deltaserve.adapter_store.compression import compress"}
    assert not [b for r in RULES for b in rule_violations(r, files)]


def test_checker_finds_import_cycles():
    files = {"deltaserve/x/a.py": "from deltaserve.x.b import f",
             "deltaserve/x/b.py": "from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from deltaserve.x.c import C",
             "deltaserve/x/c.py": "def g():\n    from deltaserve.x import a",
             "deltaserve/x/d.py": "import deltaserve.x.a\nfrom . import e",
             "deltaserve/x/e.py": "X = 1"}
    assert import_cycles(files) == [["deltaserve.x.a", "deltaserve.x.b", "deltaserve.x.c"]]
    assert import_cycles({k: v for k, v in files.items() if not k.endswith("c.py")}) == []
