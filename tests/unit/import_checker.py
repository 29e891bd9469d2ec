"""The import checker behind test_import_rules.py: parses files with `ast`, imports nothing.

`imports_of` lists every import of a file (lazy, type-checking and importlib ones included, relative
ones resolved); `rule_violations`, `env_reads_of` and `import_cycles` judge them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

ENV_ATTRS = {"environ", "environb", "getenv", "getenvb"}


@dataclass(frozen=True)
class Rule:
    files: str
    """Path prefix (relative to the repository root) of the files the rule governs."""
    allowed: tuple[str, ...]
    """deltaserve packages those files may import (an empty tuple: none at all)."""
    why: str


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


def import_cycles(files: dict[str, str]) -> list[list[str]]:
    """Import cycles between deltaserve modules: strongly connected components of two or more
    modules (Tarjan), each sorted. A target names a module, or something inside one: the
    longest module-name prefix wins (`a.b.C` → `a.b`)."""
    modules = {_module_name(rel): rel for rel in files if rel.startswith("deltaserve/")}

    def owner(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {o for _, t in imports_of(files[rel], rel) if (o := owner(t)) not in (None, m)}
             for m, rel in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while (n := stack.pop()) != m:
                component.append(n)
            if component:
                cycles.append(sorted([m, *component]))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return cycles
