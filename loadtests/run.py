"""`make loadtest`: a bounded headless locust run, against HOST or a demo server it starts.

    python -m loadtests.run --host http://deltaserve.example:8000 --duration 60s --users 16
    python -m loadtests.run --model demo-model/base --adapter-dir demo-model/adapters

With a URL, the run targets that server. Otherwise it starts `deltaserve serve` on a free
loopback port with the given model (the demo by default), waits for /ready, runs locust, and
stops the server. Writes locust's CSV files and HTML report plus summary.txt/summary.json to
--out, prints the summary, and exits non-zero when any request failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from loadtests import summary as summary_mod

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready after {timeout_s:.0f}s")


def _first_lora(adapter_dir: Path) -> str | None:
    """A PEFT LoRA directory of the served adapters, for the admin user to upload again."""
    found = sorted(adapter_dir.glob("*/adapter_config.json"))
    return str(found[0].parent) if found else None


@contextmanager
def demo_server(args: argparse.Namespace) -> Iterator[str]:
    """`deltaserve serve` on a free loopback port; yields its URL, stops it afterwards."""
    port = _free_port()
    exe = Path(sys.executable).with_name("deltaserve")
    cmd = [str(exe), "serve", "--model", args.model, "--adapter-dir", args.adapter_dir,
           "--served-model-name", args.served_model_name, "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    log = (args.out / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, args.ready_timeout_s)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run_locust(url: str, args: argparse.Namespace) -> int:
    """The headless run; locust exits 1 when any request failed."""
    cmd = [
        str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless",
        "--host", url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.duration, "--stop-timeout", "30",
        "--csv", str(args.out / "locust"), "--html", str(args.out / "report.html"),
        "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = dict(os.environ)
    if args.upload_dir and "LOADTEST_UPLOAD_DIR" not in env:
        env["LOADTEST_UPLOAD_DIR"] = args.upload_dir
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="", help="a server URL; empty or not a URL: start the demo")
    p.add_argument("--duration", default="30s", help="locust --run-time (30s, 2m, ...)")
    p.add_argument("--users", type=int, default=8, help="concurrent users (one is the admin)")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument("--out", type=Path, default=Path("loadtest-results"), help="report directory")
    p.add_argument("--model", default="demo-model/base", help="model of the started server")
    p.add_argument("--adapter-dir", default="demo-model/adapters")
    p.add_argument("--served-model-name", default="demo")
    p.add_argument("--upload-dir", default=None,
                   help="adapter directory the admin user uploads and deletes (default with a "
                        "started server: its first LoRA; LOADTEST_UPLOAD_DIR wins)")
    p.add_argument("--ready-timeout-s", type=float, default=300.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.host.startswith(("http://", "https://")):
        code = run_locust(args.host.rstrip("/"), args)
    else:
        if args.upload_dir is None:
            args.upload_dir = _first_lora(Path(args.adapter_dir))
        with demo_server(args) as url:
            code = run_locust(url, args)
    stats = args.out / "locust_stats.csv"
    if not stats.exists():
        print(f"locust wrote no statistics (exit status {code})", file=sys.stderr)
        return code or 1
    result = summary_mod.summarise(stats)
    summary_mod.write(result, args.out)
    print(summary_mod.render(result))
    print(f"reports: {args.out}/report.html, {args.out}/locust_*.csv, {args.out}/summary.txt")
    return code


if __name__ == "__main__":
    sys.exit(main())
