"""The database state behind a real PgBouncer (DESIGN §6, "Connection poolers").

Session pooling keeps one server session per client: everything works. Transaction pooling
hands a client's server session to others between its transactions, so the session advisory
lock cannot hold: apply refuses before anything is sent. PgBouncer is Debian's `pgbouncer`
package (.ci/run installs it); without it this module is skipped, and with CI set it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from tests.postgres_server import SYSTEM_USER, PostgresServer, free_port
from tests.test_e2e import accepted_streams, cli, write_manifests
from tests.test_state_postgres_e2e import (
    apply_args,
    clean_env,
    database_of,
    init_db,
    no_traceback,
    snapshot,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.e2e

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
)
if PGBOUNCER is None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        raise RuntimeError(
            "CI is set, so the state must be tested behind a real PgBouncer, but this machine "
            "has no `pgbouncer` (Debian's package; .ci/run installs it)"
        )
    pytest.skip("no pgbouncer on this machine (apt-get install pgbouncer)", allow_module_level=True)


class PgBouncer:
    """A PgBouncer on 127.0.0.1 and a free port, in front of `server`, in `pool_mode`."""

    def __init__(self, server: PostgresServer, pool_mode: str) -> None:
        assert PGBOUNCER is not None
        self.server = server
        self.port = free_port()
        # PgBouncer refuses to run as root: as root it runs as the server's system user, in a
        # folder that user may enter (pytest's tmp_path is root's, mode 0700).
        self.user = SYSTEM_USER if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="reconciler-pgbouncer-"))
        (self.root / "userlist.txt").write_text(f'"{server.superuser}" "{server.password}"\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host} port={server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.root / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = 4\nmax_client_conn = 50\n"
            f"logfile = {self.root / 'pgbouncer.log'}\npidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        if self.user is not None:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, self.user, self.user)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.root / "pgbouncer.ini")],
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, "PgBouncer to listen", timeout=30)

    def _listening(self) -> bool:
        assert self.process.poll() is None, self.log()
        return f"listening on 127.0.0.1:{self.port}" in self.log()

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def uri(self, database_uri: str) -> str:
        """`database_uri` (on the server) through this PgBouncer."""
        return database_uri.replace(f":{self.server.port}/", f":{self.port}/", 1)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pgbouncer(postgres_server: PostgresServer) -> Iterator[Callable[[str], PgBouncer]]:
    started: list[PgBouncer] = []

    def start(pool_mode: str) -> PgBouncer:
        bouncer = PgBouncer(postgres_server, pool_mode)
        started.append(bouncer)
        return bouncer

    yield start
    for bouncer in started:
        bouncer.close()


def advisory_locks(server: PostgresServer) -> int:
    rows = server.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    return int(rows[0][0])


@pytest.mark.parametrize("pool_mode", ["transaction", "statement"])
def test_a_pooler_that_cannot_keep_a_session_is_refused_before_anything_is_sent(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    pgbouncer: Callable[[str], PgBouncer],
    pool_mode: str,
) -> None:
    write_manifests(tmp_path / "clips", 6)
    init_db(postgres_database, tmp_path)  # created directly on the server
    bouncer = pgbouncer(pool_mode)
    pooled = bouncer.uri(postgres_database)
    before = snapshot(postgres_server, database_of(postgres_database))
    box: Sandbox = sandbox_factory()
    # Two applies, one after the other: each is refused on its own (none takes the lock).
    for _ in range(2):
        done = cli(*apply_args(pooled), cwd=tmp_path, env=clean_env(box))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "pool_mode = session" in done.stderr, done.stderr
        assert "transaction or statement mode" in done.stderr, done.stderr
        assert "Nothing was sent" in done.stderr, done.stderr
        assert postgres_server.password not in done.stdout + done.stderr
        no_traceback(done.stdout, done.stderr)
    assert box.accepted() == []
    assert snapshot(postgres_server, database_of(postgres_database)) == before
    assert advisory_locks(postgres_server) == 0, "a pooled backend kept a lock"
    # Reading needs no session: plan works through any pool (no server-side prepared
    # statements that another client's session could hold).
    plan = cli("plan", "clips", "--state", pooled, cwd=tmp_path, env=clean_env(box))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "6 to submit" in plan.stdout, plan.stdout


def test_session_pooling_works_end_to_end(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    pgbouncer: Callable[[str], PgBouncer],
) -> None:
    write_manifests(tmp_path / "clips", 8)
    bouncer = pgbouncer("session")
    pooled = bouncer.uri(postgres_database)
    init_db(pooled, tmp_path)
    box: Sandbox = sandbox_factory()
    first = cli(*apply_args(pooled, "-c", "3"), cwd=tmp_path, env=clean_env(box))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Apply complete: 8 submitted." in first.stdout, first.stdout
    second = cli(*apply_args(pooled), cwd=tmp_path, env=clean_env(box))
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(accepted_streams(box).values()) == [1] * 8
    assert set(statuses(pooled, tmp_path).values()) == {"submitted"}
    assert advisory_locks(postgres_server) == 0
