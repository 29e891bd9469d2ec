"""DESIGN.md §3 import rules, checked by parsing every .py file with `ast` (nothing is imported).

- engine imports nothing of deltaserve outside deltaserve.engine;
- router and adapter_store import (types) from deltaserve.engine only, never from server;
- server may import everything; clients/ and loadtests/ speak HTTP only (nothing of deltaserve);
- the SDK (clients/python, a separate distribution) imports only the standard library, httpx,
  pydantic and itself, plus openai lazily (an optional extra), and declares only httpx and
  pydantic as dependencies;
- one module imports prometheus_client (deltaserve/server/metrics.py);
- one module reads the environment (deltaserve/server/settings.py).

Each rule is a row of data; a violation names the file, line and the offending import.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "__pycache__", "build", "dist", ".git", "node_modules"}


@dataclass(frozen=True)
class Rule:
    files: str
    """Path prefix (relative to the repository root) of the files the rule governs."""
    allowed: tuple[str, ...]
    """deltaserve packages those files may import (an empty tuple: none at all)."""
    why: str


RULES = [
    Rule("deltaserve/engine/", ("deltaserve.engine",), "engine imports nothing of ours"),
    Rule("deltaserve/router/", ("deltaserve.router", "deltaserve.engine"),
         "router imports only (types from) deltaserve.engine"),
    Rule("deltaserve/adapter_store/", ("deltaserve.adapter_store", "deltaserve.engine"),
         "adapter_store imports only (types from) deltaserve.engine"),
    Rule("clients/", (), "clients speak HTTP only"),
    Rule("loadtests/", (), "loadtests speak HTTP only"),
]
SDK_FILES = "clients/python/"
SDK_IMPORTS = ("deltaserve_client", "httpx", "pydantic", "openai")
"""Top-level modules the SDK may import besides the standard library."""
SDK_LAZY = ("openai",)
"""Optional dependencies: imported inside functions (or for type checking) only."""
SDK_DEPENDENCIES = {"httpx", "pydantic"}
PROMETHEUS_OWNER = "deltaserve/server/metrics.py"
VLLM_OWNER = "deltaserve/server/vllm_engine/"
"""The only package that imports vllm (an optional extra); others reach it lazily."""
ENV_OWNER = "deltaserve/server/settings.py"
ENV_ATTRS = {"environ", "environb", "getenv", "getenvb"}


# ---- the checker --------------------------------------------------------------------------

def _module_name(rel: str) -> str | None:
    """Dotted module name of a deltaserve file, for resolving relative imports."""
    if not rel.startswith("deltaserve/"):
        return None
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(rel: str) -> str | None:
    mod = _module_name(rel)
    if mod is None:
        return None
    return mod if rel.endswith("__init__.py") else mod.rpartition(".")[0]


def imports_of(source: str, rel: str) -> list[tuple[int, str]]:
    """(line, absolute target) for every import, lazy ones and importlib calls included.

    `from a.b import c` yields "a.b.c" (c may be a submodule); relative imports are resolved
    against the file's package (outside deltaserve they stay inside their own tree: skipped).
    """
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(rel)
                if pkg is None:
                    continue
                parts = pkg.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            out += [(node.lineno, f"{base}.{a.name}" if a.name != "*" else base)
                    for a in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            if node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    out.append((node.lineno, node.args[0].value))
    return out


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")  # fmt: skip


def eager_imports_of(source: str, rel: str) -> list[tuple[int, str]]:
    """Imports that run when the module itself is imported: module-level ones, also inside
    if/try blocks, except under `if TYPE_CHECKING:` (relative ones are skipped)."""
    out: list[tuple[int, str]] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                out.extend((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.If):
                visit(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody
                      + [s for h in node.handlers for s in h.body])  # fmt: skip

    visit(ast.parse(source, filename=rel).body)
    return out


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


def env_reads_of(source: str, rel: str) -> list[tuple[int, str]]:
    """os.environ / os.getenv use (also via `import os as x` and `from os import environ`)."""
    tree = ast.parse(source, filename=rel)
    os_aliases = {"os"}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_aliases |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and not node.level:
            found += [(node.lineno, f"from os import {a.name}") for a in node.names
                      if a.name in ENV_ATTRS]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ENV_ATTRS
                and isinstance(node.value, ast.Name) and node.value.id in os_aliases):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def _is_ours(target: str) -> bool:
    return target == "deltaserve" or target.startswith("deltaserve.")


def _within(target: str, packages: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def rule_violations(rule: Rule, files: dict[str, str]) -> list[str]:
    bad = []
    for rel, src in files.items():
        if not rel.startswith(rule.files):
            continue
        for line, target in imports_of(src, rel):
            if _is_ours(target) and not _within(target, rule.allowed):
                bad.append(f"{rel}:{line} imports {target} ({rule.why})")
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
             if t.startswith("deltaserve.server.vllm_engine.client")]
    assert not bad + eager, "\n".join(bad + eager)


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
    ("import deltaserve.server.app", "deltaserve.server.app"),
    ("from deltaserve.router import resolve", "deltaserve.router.resolve"),
    ("from deltaserve import server", "deltaserve.server"),
    ("from ...server import settings", "deltaserve.server.settings"),
    ("from ... import router", "deltaserve.router"),
    ("def f():\n    from deltaserve.adapter_store import registry", "deltaserve.adapter_store.registry"),
    ("import importlib\nimportlib.import_module('deltaserve.server.metrics')", "deltaserve.server.metrics"),
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
    bad = rule_violations(RULES[3], {"clients/python/sdk/client.py": "from deltaserve.engine import x"})
    assert bad == ["clients/python/sdk/client.py:1 imports deltaserve.engine.x "
                   "(clients speak HTTP only)"]


SDK_FILE = "clients/python/src/deltaserve_client/_client.py"


@pytest.mark.parametrize("source, flagged", [
    ("import torch", "imports torch "),
    ("from deltaserve.server.protocol import CompletionRequest", "imports deltaserve.server"),
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
