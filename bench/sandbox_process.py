"""`reconciler sandbox` in its own process, as apply's peers and apply itself would meet it."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from measure import BenchError

_START_TIMEOUT = 30.0


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (Linux), or
    None. A dropped SYN is sent again only after 1 s, which shows up as a 1 s stall."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split(), values.split(), strict=False))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None
    return None


def free_port() -> int:
    """A port nothing listens on right now (the CLI needs a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SandboxProcess:
    """`python -m reconciler sandbox --latency-ms N` on a free port, with known credentials."""

    def __init__(self, workdir: Path, *, latency_ms: int) -> None:
        self.access_key = "bench-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.port = free_port()
        self.host_port = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host_port}"
        self._log_path = workdir / f".sandbox-{self.port}.log"
        self._latency_ms = latency_ms
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SandboxProcess:
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "sandbox",
            "--port",
            str(self.port),
            "--latency-ms",
            str(self._latency_ms),
            "--access-key",
            self.access_key,
            "--secret-key",
            self.secret_key,
        ]
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"the sandbox exited at start:\n{self._log_path.read_text()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise BenchError(f"the sandbox did not start within {_START_TIMEOUT:g} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_sandbox/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:  # not listening yet
            return False

    def accepted_count(self) -> int:
        """How many tasks the sandbox has accepted (GET /_sandbox/tasks)."""
        with urllib.request.urlopen(f"{self.url}/_sandbox/tasks", timeout=30) as response:
            document = json.load(response)
        return int(document["count"])

    def env(self) -> dict[str, str]:
        """Environment variables pointing a client at this sandbox."""
        return {"JDCLOUD_ACCESS_KEY": self.access_key, "JDCLOUD_SECRET_KEY": self.secret_key}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._log_path.unlink(missing_ok=True)
