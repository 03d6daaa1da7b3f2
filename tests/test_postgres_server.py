"""The test suite's own PostgreSQL server: real, password-protected, one database per test."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from tests.postgres_server import POSTGRES_BIN_PATH, PostgresServer, free_port


def test_the_fixture_gives_a_working_server(postgres_database: str) -> None:
    with psycopg.connect(postgres_database, connect_timeout=10) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        assert connection.info.host == "127.0.0.1"
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
            " 'information_schema')"
        ).fetchone()
    assert tables == (0,), "a fresh database is empty"


def test_a_password_is_required_and_checked(postgres_server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_server.uri(password="not-the-password"), connect_timeout=10)
    without = postgres_server.uri(password="")
    assert postgres_server.password not in without
    with pytest.raises(psycopg.OperationalError, match="password"):
        # No password at all: scram-sha-256 asks for one, libpq has none to give.
        psycopg.connect(without, connect_timeout=10, passfile="/nonexistent")
    assert postgres_server.password in postgres_server.uri(), "the default URI logs in"


def test_it_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    rows = postgres_server.execute("SHOW listen_addresses")
    assert rows == [("127.0.0.1",)]
    socket_dir = postgres_server.execute("SHOW unix_socket_directories")[0][0]
    assert socket_dir == str(postgres_server.socket_dir)


def test_two_databases_are_independent(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database()
    second = postgres_server.create_database()
    assert first != second
    with psycopg.connect(first, autocommit=True) as connection:
        connection.execute("CREATE TABLE only_here (n int)")
        connection.execute("INSERT INTO only_here VALUES (1)")
    with psycopg.connect(second) as connection:
        found = connection.execute("SELECT to_regclass('only_here') IS NOT NULL").fetchone()
    assert found == (False,)


def test_terminate_backends_ends_other_sessions(postgres_server: PostgresServer) -> None:
    uri = postgres_server.create_database()
    database = uri.rsplit("/", 1)[1]
    connection = psycopg.connect(uri, autocommit=True)
    try:
        assert postgres_server.sessions(database) == 1
        assert postgres_server.terminate_backends(database) == 1
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
    finally:
        connection.close()


def test_a_stopped_server_refuses_connections_and_comes_back_on_its_port() -> None:
    # Its own server: stopping the session's one would break every other test.
    with PostgresServer() as server:
        uri = server.create_database()
        server.execute("CREATE TABLE kept (n int)", database=uri.rsplit("/", 1)[1])
        port = server.port
        server.stop()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(uri, connect_timeout=10)
        server.start()
        assert server.port == port
        with psycopg.connect(uri) as connection:
            assert connection.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (
                True,
            )
        root = server.root
    assert root is not None and not root.exists(), "close() removes the server's directory"


def test_free_port_is_not_listened_on() -> None:
    port = free_port()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(f"postgresql://u:p@127.0.0.1:{port}/db", connect_timeout=10)


def test_it_starts_from_a_package_inside_a_folder_only_its_owner_may_enter(
    tmp_path: Path,
) -> None:
    """A clone in /root or in any `mktemp -d` (mode 0700): as root, the server's system user
    cannot reach the package's binaries there; the server still starts (issue 18, item 20)."""
    package = POSTGRES_BIN_PATH.parent.parent
    private = tmp_path / "private"
    shutil.copytree(package, private / package.name, symlinks=True)
    libraries = package.parent / f"{package.name}.libs"
    if libraries.is_dir():
        shutil.copytree(libraries, private / libraries.name, symlinks=True)
    private.chmod(0o700)
    install = private / package.name / POSTGRES_BIN_PATH.parent.name
    with PostgresServer(install=install) as server:
        assert server.execute("SELECT 1") == [(1,)]
    assert stat.S_IMODE(private.stat().st_mode) == 0o700, "the private folder stays private"
