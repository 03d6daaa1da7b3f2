"""The database state as DBAs run PostgreSQL (DESIGN §6): durable commits, a deadline on every
database call, signals that act while a database is silent, and a lost session recovered once.

The real CLI against a real PostgreSQL (the suite's own, or one started here with the settings a
test needs), through a loopback proxy written here when the network must go silent.
"""

from __future__ import annotations

import selectors
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from reconciler.state.postgres import PostgresStore
from tests.postgres_server import PostgresServer
from tests.test_e2e import accepted_streams, cli, start_cli, write_manifests
from tests.test_state_postgres_e2e import (
    WAIT,
    apply_args,
    clean_env,
    database_of,
    init_db,
    no_traceback,
    requested,
    shown,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.e2e


# --- durable commits (item 16) ------------------------------------------------------------------


def test_our_session_commits_synchronously_when_the_server_default_is_off(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    database = database_of(postgres_database)
    assert postgres_server.execute("SHOW synchronous_commit", database) == [("off",)]
    with PostgresStore(postgres_database) as store:
        assert store.exists() is False
        connection = store._connection
        assert connection is not None
        assert connection.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert connection.execute("SHOW statement_timeout").fetchone() == ("30s",)


@pytest.fixture
def forgetful_server() -> Iterator[PostgresServer]:
    """A server that acknowledges commits before they are on disk, and writes them late."""
    server = PostgresServer(
        settings={"synchronous_commit": "off", "wal_writer_delay": "10000ms"}
    ).start()
    try:
        yield server
    finally:
        server.close()


def test_a_database_crash_right_after_apply_loses_no_recorded_outcome(
    tmp_path: Path, sandbox_factory: Any, forgetful_server: PostgresServer
) -> None:
    write_manifests(tmp_path / "clips", 3)
    state = forgetful_server.create_database()
    init_db(state, tmp_path)
    box: Sandbox = sandbox_factory()
    done = cli(*apply_args(state), cwd=tmp_path, env=clean_env(box))
    assert done.returncode == 0, done.stdout + done.stderr
    forgetful_server.crash()
    assert statuses(state, tmp_path) == dict.fromkeys(accepted_streams(box), "submitted")
    again: Sandbox = sandbox_factory()
    later = cli(*apply_args(state), cwd=tmp_path, env=clean_env(again))
    assert later.returncode == 0, later.stdout + later.stderr
    assert again.accepted() == [], "a clip recorded before the crash was sent again"


# --- a network that goes silent (item 15) -------------------------------------------------------


class SilentProxy:
    """A loopback TCP proxy that forwards, then on `silence()` stops forwarding both ways while
    keeping every socket open: no reset, no answer, as a stuck load balancer behaves."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def silence(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=10)
        for sock in [self.listener, *self.held]:
            sock.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        while not self.closed.is_set():
            for key, _ in selector.select(timeout=0.05):
                if key.data is None:
                    client, _ = self.listener.accept()
                    server = socket.create_connection(self.target)
                    self.held += [client, server]
                    selector.register(client, selectors.EVENT_READ, server)
                    selector.register(server, selectors.EVENT_READ, client)
                    continue
                if self.silent.is_set():
                    # Read and drop: the kernel keeps acknowledging, nothing reaches the other side.
                    selector.unregister(key.fileobj)
                    continue
                source: Any = key.fileobj
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(source)
                    continue
                key.data.sendall(data)
        selector.close()


@pytest.fixture
def silent_proxy(postgres_server: PostgresServer) -> Iterator[SilentProxy]:
    proxy = SilentProxy(postgres_server.port)
    try:
        yield proxy
    finally:
        proxy.close()


def through(uri: str, proxy: SilentProxy, server: PostgresServer) -> str:
    return uri.replace(f":{server.port}/", f":{proxy.port}/", 1)


def start_slow_apply(
    tmp_path: Path, sandbox_factory: Any, state: str, timeout: str
) -> tuple[Any, Sandbox]:
    write_manifests(tmp_path / "clips", 12)
    init_db(state, tmp_path)
    slow: Sandbox = sandbox_factory(latency_ms=1500)
    env = clean_env(slow) | {"RECONCILER_DB_TIMEOUT": timeout}
    run = start_cli(*apply_args(state, "-c", "2"), cwd=tmp_path, env=env)
    wait_for(lambda: requested(slow) >= 1 or run.poll() is not None, "a request in flight")
    assert run.poll() is None, run.communicate()
    return run, slow


def test_a_database_that_goes_silent_ends_the_run_within_its_deadline(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    silent_proxy: SilentProxy,
) -> None:
    state = through(postgres_database, silent_proxy, postgres_server)
    run, slow = start_slow_apply(tmp_path, sandbox_factory, state, "2")
    silent_proxy.silence()
    # Without a deadline of our own the run would wait forever: a generous bound, not a timing.
    out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 1, out + err
    assert "did not answer within 2 s (RECONCILER_DB_TIMEOUT)" in err, err
    assert shown(state) in err, err
    assert postgres_server.password not in out + err
    no_traceback(out, err)
    assert requested(slow) <= 2 * 2 + 2, "sending did not stop"


@pytest.mark.parametrize("signals", [1, 2], ids=["one-sigterm", "sigterm-then-sigint"])
def test_signals_act_while_the_database_is_silent(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    silent_proxy: SilentProxy,
    signals: int,
) -> None:
    state = through(postgres_database, silent_proxy, postgres_server)
    # A deadline far beyond the wait below: only the signals can end this run in time.
    run, _ = start_slow_apply(tmp_path, sandbox_factory, state, "600")
    silent_proxy.silence()
    # The senders' answers arrive and apply is stuck recording them.
    wait_for(lambda: run.poll() is not None or _stuck(postgres_server, postgres_database), "stuck")
    for sent in [signal.SIGTERM, signal.SIGINT][:signals]:
        run.send_signal(sent)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    assert postgres_server.password not in out + err
    no_traceback(out, err)


def _stuck(server: PostgresServer, database_uri: str) -> bool:
    """Whether our session has pending rows claimed (so the run is past its first claim)."""
    rows = server.execute(
        "SELECT count(*) FROM reconciler.tasks WHERE status = 'pending'", database_of(database_uri)
    )
    return int(rows[0][0]) > 0


# --- a session the DBA ends (item 17) -----------------------------------------------------------


def test_a_session_ended_by_idle_session_timeout_is_recovered_once(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    tasks, concurrency = 16, 4
    write_manifests(tmp_path / "clips", tasks)
    init_db(postgres_database, tmp_path)
    database = database_of(postgres_database)
    # Our session sits idle while the slow sandbox answers: the server ends it meanwhile.
    postgres_server.execute(f"ALTER DATABASE \"{database}\" SET idle_session_timeout = '1s'")
    slow: Sandbox = sandbox_factory(latency_ms=2500)
    done = cli(
        *apply_args(postgres_database, "-c", str(concurrency)),
        cwd=tmp_path,
        env=clean_env(slow),
        timeout=WAIT,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 1, out + err
    assert shown(postgres_database) in err, err
    assert "lost the connection to the state database" in err, err
    assert "Connected again: recorded the" in err, err
    assert "nothing was changed" not in out + err
    no_traceback(out, err)
    postgres_server.execute(f'ALTER DATABASE "{database}" RESET idle_session_timeout')

    recorded = statuses(postgres_database, tmp_path)
    answered = set(accepted_streams(slow))
    assert answered, "the first batch was sent"
    assert recorded == dict.fromkeys(answered, "submitted"), (
        "every answer received is recorded, and no task never sent keeps a mark"
    )
    healthy: Sandbox = sandbox_factory()
    later = cli(*apply_args(postgres_database), cwd=tmp_path, env=clean_env(healthy))
    assert later.returncode == 0, later.stdout + later.stderr
    assert set(accepted_streams(healthy)).isdisjoint(answered)
    assert len(statuses(postgres_database, tmp_path)) == tasks
