"""A real Prefect server on a free loopback port, for tests that need triggers, deployments
and the UI (the test harness's temporary API has none of the event services running)."""

from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    )
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def stop_group(proc: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    """Signal a process group started with ``start_new_session``; kill it after ``grace``."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def prefect_server(home: Path, timeout: float = 90.0) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1; yield its API URL; stop it afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(home)
    # The UI must call this server's API, not the default port's.
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = (home / "server.log").read_text()[-2000:]
                raise RuntimeError(f"prefect server exited: {tail}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {timeout}s")
            time.sleep(0.5)
        yield api
    finally:
        stop_group(proc, signal.SIGTERM, 20)
        log.close()
