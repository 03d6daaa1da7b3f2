"""The database state: named states in PostgreSQL, rows committed write-ahead, an advisory lock.

Tables live in their own schema, `reconciler`, created on first use (`init`, or a sandbox
apply's first run) and versioned in `reconciler.meta`: tables of a newer reconciler, or tables
in that schema that reconciler did not create, are refused before anything is read or written.

- `tasks`: one row per (state, hash), the primary key: a claim is an INSERT, so two appliers
  can never both claim (and send) one task, even if something bypassed the lock.
- `recordings` (evidence per task: callbacks, the bucket) and `unmatched` (callbacks no task
  could be told from) are apart from `tasks`, so the receiver writes them without the apply
  lock, and nothing apply records (an upsert of a task's row) can erase a recording.
- Version 1 tables (before evidence) are upgraded on first use, in one transaction: two new
  tables, one new nullable column, three indexes; nothing existing is rewritten.
- The apply lock is a session advisory lock: the server releases it when the holder's
  connection ends, so a killed runner never leaves a stale lock. `locks` holds who took it
  (host, pid, since, CI run) for whoever waits; a row whose backend no longer holds the
  advisory lock describes nobody and is not shown.

- As DBAs run it: our session commits synchronously, every call has a deadline (the
  session's statement_timeout, TCP keepalives and tcp_user_timeout, and a timer of our own),
  no server-side prepared statements are used, and a pooler that does not keep one server
  session (transaction or statement mode) is refused before the lock is taken.

psycopg (the `postgres` extra) is imported only here, and this module only when a
`postgresql://` state is used. The password is never shown: messages use `shown`, the URI
with the password replaced by `***`, and every database error text is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

from reconciler.state.model import (
    LockHolder,
    Recording,
    State,
    StateEntry,
    StateError,
    StateExistsError,
    StateLocationError,
    StateLockedError,
    UnmatchedCallback,
    compact_json,
    holder_of_this_process,
    parse_entry,
    require_own_hash,
)

if TYPE_CHECKING:
    import psycopg

    from reconciler.callbacks import Callback, StoredCallback

__all__ = ["SCHEMA", "SCHEMA_VERSION", "DatabaseLocation", "PostgresStore", "StateConnectionError"]

SCHEMA = "reconciler"
SCHEMA_VERSION = 2
DEFAULT_NAME = "default"
_TABLES_V1 = frozenset({"meta", "states", "tasks", "locks"})
_TABLES = _TABLES_V1 | {"recordings", "unmatched"}
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# The advisory lock's first key: "reco" as a 32-bit integer, so reconciler's locks do not
# collide with an application's own advisory locks on the same database.
_LOCK_CLASS = 0x7265636F
_LOCK_POLL_SECONDS = 0.2
_CONNECT_TIMEOUT_SECONDS = 10
TIMEOUT_VARIABLE = "RECONCILER_DB_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 30.0
# After Ctrl-C / SIGTERM, how long a database call may still wait for its answer.
INTERRUPTED_TIMEOUT_SECONDS = 1.0
# After a lost connection, how long the one attempt to connect again may take.
RECONNECT_SECONDS = 5.0
_POOLED = (
    "{shown}: the connection does not keep one server session: a connection pooler in "
    "transaction or statement mode (PgBouncer's pool_mode = transaction, say) stands in front "
    "of the database, and the state's lock (a session advisory lock) cannot hold there. "
    "Nothing was sent. Connect through a pool in session mode (pool_mode = session) or to the "
    "server directly"
)
_UNTOUCHED = "the database was left untouched; repair the row by hand or restore it from a backup"

_CREATE_TABLES = f"""
CREATE TABLE {SCHEMA}.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {SCHEMA}.states (
    name text PRIMARY KEY,
    sandbox boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {SCHEMA}.tasks (
    state text NOT NULL REFERENCES {SCHEMA}.states (name) ON DELETE CASCADE,
    hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{{64}}$'),
    status text NOT NULL CHECK (status IN ('pending', 'submitted')),
    name text NOT NULL,
    source text NOT NULL,
    request json NOT NULL,  -- json, not jsonb: kept as written (sorted keys, as the file)
    request_id text,
    updated_at text NOT NULL,
    submitted_at text,
    PRIMARY KEY (state, hash)
);
CREATE TABLE {SCHEMA}.locks (
    state text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    since text NOT NULL,
    run_url text,
    backend_pid integer NOT NULL
);
INSERT INTO {SCHEMA}.meta (key, value) VALUES
    ('schema_version', '1'),
    ('written_by', 'reconciler');
"""
# Version 2: the taskExternalId sent, and recording evidence (DESIGN §7). Additive only.
_UPGRADE_TO_2 = f"""
ALTER TABLE {SCHEMA}.tasks ADD COLUMN external_id text;
CREATE INDEX tasks_external_id ON {SCHEMA}.tasks (state, external_id);
CREATE INDEX tasks_own_external_id ON {SCHEMA}.tasks (state, ((request->'body'->>'taskExternalId')));
CREATE INDEX tasks_stream ON {SCHEMA}.tasks (state, ((request->'path'->>'streamName')));
CREATE TABLE {SCHEMA}.recordings (
    state text NOT NULL REFERENCES {SCHEMA}.states (name) ON DELETE CASCADE,
    hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{{64}}$'),
    evidence text NOT NULL CHECK (evidence ~ '^[0-9a-f]{{64}}$'),
    source text NOT NULL CHECK (source IN ('callback', 'storage')),
    format text NOT NULL,
    status text NOT NULL,
    received_at text NOT NULL,
    download_url text,
    file_size text,
    duration text,
    seq bigserial,  -- arrival order, as the file keeps it
    PRIMARY KEY (state, hash, evidence)
);
CREATE TABLE {SCHEMA}.unmatched (
    state text NOT NULL REFERENCES {SCHEMA}.states (name) ON DELETE CASCADE,
    id text NOT NULL CHECK (id ~ '^[0-9a-f]{{64}}$'),
    received_at text NOT NULL,
    reason text NOT NULL,
    body json NOT NULL,
    seq bigserial,
    PRIMARY KEY (state, id)
);
UPDATE {SCHEMA}.meta SET value = '2' WHERE key = 'schema_version';
"""

_COLUMNS = "hash, status, name, source, request, request_id, updated_at, submitted_at, external_id"
_VALUES = "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_UPSERT = f"""
INSERT INTO {SCHEMA}.tasks (state, {_COLUMNS}) {_VALUES}
ON CONFLICT (state, hash) DO UPDATE SET
    status = EXCLUDED.status, name = EXCLUDED.name, source = EXCLUDED.source,
    request = EXCLUDED.request, request_id = EXCLUDED.request_id,
    updated_at = EXCLUDED.updated_at, submitted_at = EXCLUDED.submitted_at,
    external_id = EXCLUDED.external_id
"""
_RECORDING_COLUMNS = (
    "hash, evidence, source, format, status, received_at, download_url, file_size, duration"
)
_INSERT_RECORDING = f"""
INSERT INTO {SCHEMA}.recordings (state, {_RECORDING_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING hash
"""
_INSERT_UNMATCHED = f"""
INSERT INTO {SCHEMA}.unmatched (state, id, received_at, reason, body)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id
"""
_TASK_SELECT = (
    "SELECT hash, status, name, source, request, request_id, updated_at, submitted_at, "
    f"external_id FROM {SCHEMA}.tasks WHERE state = %s"
)


class StateConnectionError(StateError):
    """The database cannot be reached, or the connection to it was lost."""


@dataclass(frozen=True)
class DatabaseLocation:
    """A database state's address: the libpq URI (without the fragment) and the state's name."""

    conninfo: str
    name: str
    shown: str  # the URI with the password as ***, and the name spelled out
    password: str | None

    def scrub(self, text: str) -> str:
        """`text` with the password (as given, and percent-decoded) replaced by ***."""
        if self.password:
            for secret in {self.password, unquote(self.password)}:
                if secret:
                    text = text.replace(secret, "***")
        return text


_WITHHELD = (
    "the --state / RECONCILER_STATE value is not a PostgreSQL URI reconciler can read safely, "
    "so it is not shown (it may hold a password). Percent-encode the special characters of the "
    "user name and password (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25, a "
    "space as %20), or give the password in PGPASSWORD or ~/.pgpass"
)


def parse_location(uri: str) -> DatabaseLocation:
    """The location `uri` names; StateLocationError if it is not a usable libpq URI.

    A value whose password could be misread (an unencoded `@`, `/`, `?`, `#` or `%` in it) is
    refused whole, never shown: a misread password would be printed as a host, port or name.
    """
    if _ambiguous(uri):
        raise StateLocationError(_WITHHELD)
    conninfo, hash_sign, fragment = uri.partition("#")
    if hash_sign and not fragment:
        raise StateLocationError(
            f"{_redacted(conninfo)}#: the state name after '#' is empty; leave out the '#' for "
            "the state 'default', or name the state after it"
        )
    name = unquote(fragment) if fragment else DEFAULT_NAME
    shown = _redacted(conninfo)
    if not _NAME.fullmatch(name):
        raise StateLocationError(
            f"{shown}#{fragment}: the state name after '#' must be 1 to 63 of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit (leave it out for 'default')"
        )
    shown = f"{shown}#{name}"
    parts = _conninfo_parts(conninfo, shown)
    password = parts.get("password")
    location = DatabaseLocation(conninfo, name, shown, password or _uri_password(conninfo))
    for port in (parts.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise StateLocationError(
                f"{location.shown}: the port {location.scrub(port)!r} is not a port number"
            )
    if not parts.get("dbname"):
        raise StateLocationError(
            f"{location.shown}: name the database in the URI (postgresql://USER@HOST/DATABASE)"
        )
    return location


def _ambiguous(uri: str) -> bool:
    """Whether a user name or password in `uri` may hold an unencoded special character.

    libpq ends the user part at the first `@` (or `/`); an `@` after the host's end, a second
    `@`, or a `%` not followed by two hex digits in the user part means the value was not
    written as libpq reads it, and any part of it may be a password.
    """
    rest = uri.split("://", 1)[1] if "://" in uri else uri
    end = re.search(r"[/?#]", rest)
    authority, after = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if "@" in after or authority.count("@") > 1:
        return True
    userinfo = authority.rsplit("@", 1)[0] if "@" in authority else ""
    return bool(re.search(r"%(?![0-9A-Fa-f]{2})|\s", userinfo))


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StateError(
            "a database state (--state postgresql://...) needs the postgres extra: "
            "pip install 'reconciler[postgres]'"
        ) from None
    return psycopg


def _conninfo_parts(conninfo: str, shown: str) -> dict[str, Any]:
    psycopg = _psycopg()
    try:
        parts: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as error:
        if _uri_password(conninfo) or re.search(r"[?&]password=", conninfo):
            # libpq's message quotes the part it could not read, which may be the password.
            raise StateLocationError(_WITHHELD) from None
        text = " ".join(str(error).split()).replace(conninfo, shown)
        raise StateLocationError(f"{shown}: not a PostgreSQL connection URI: {text}") from None
    return parts


def _uri_password(conninfo: str) -> str | None:
    userinfo = _userinfo(conninfo)
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def _userinfo(conninfo: str) -> str | None:
    rest = conninfo.split("://", 1)[1] if "://" in conninfo else conninfo
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    return authority.rsplit("@", 1)[0] if "@" in authority else None


def _redacted(conninfo: str) -> str:
    """The URI with the password in its user part, or a `password=` parameter, as ***."""
    userinfo = _userinfo(conninfo)
    if userinfo is not None and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        scheme, rest = conninfo.split("://", 1)
        conninfo = f"{scheme}://{user}:***@{rest.split('@', 1)[1]}"
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", conninfo)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


class _Watchdog:
    """Our own deadline over each database call, beside statement_timeout and TCP's.

    A proxy or load balancer that goes silent while its kernel still acknowledges defeats the
    TCP settings, and statement_timeout is the server's: neither ends a wait on a server that
    no longer answers. When a call's time is up, its socket is shut down, which ends libpq's
    wait at once with a broken connection.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._due: float | None = None
        self._socket: int | None = None
        self._thread: threading.Thread | None = None
        self.expired = False

    def arm(self, seconds: float, fileno: int) -> tuple[float | None, int | None]:
        """Watch a call on `fileno`; returns what was watched before, for `disarm`."""
        with self._condition:
            before = (self._due, self._socket)
            due = time.monotonic() + seconds
            if before[0] is not None:
                due = min(due, before[0])  # a call inside another ends by the outer's deadline
            self._due, self._socket, self.expired = due, fileno, False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="state-deadline", daemon=True
                )
                self._thread.start()
            self._condition.notify()
            return before

    def disarm(self, before: tuple[float | None, int | None] = (None, None)) -> None:
        with self._condition:
            self._due, self._socket = before

    def shorten(self, seconds: float) -> None:
        """The call in progress (if any) ends within `seconds`."""
        with self._condition:
            if self._due is not None:
                self._due = min(self._due, time.monotonic() + seconds)
                self._condition.notify()

    def _watch(self) -> None:
        with self._condition:
            while True:
                if self._due is None:
                    self._condition.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                fileno, self._due, self._socket = self._socket, None, None
                self.expired = True
                if fileno is not None:
                    with contextlib.suppress(OSError):
                        # On a duplicate of libpq's socket: shutting it down ends both.
                        socket.socket(fileno=os.dup(fileno)).shutdown(socket.SHUT_RDWR)


def database_timeout() -> float:
    """Seconds each database call may take: RECONCILER_DB_TIMEOUT, or 30."""
    given = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not given:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0.0
    if not (0 < seconds <= 86400):
        raise StateError(
            f"{TIMEOUT_VARIABLE} must be a number of seconds between 0 and 86400, not {given!r}"
        )
    return seconds


class PostgresStore:
    """One named state in a PostgreSQL database; connects on first use, over one connection.

    The connection is in autocommit mode: every write is its own transaction, committed
    (durably: synchronous_commit is on for our session) before the method returns, so a
    `pending` row exists before its request can be sent. The advisory lock belongs to that
    connection: if it is lost, so is the lock. The store then tries once (bounded) to connect
    again and take the lock back, so apply can record the answers it received; without the
    lock, every later call fails (StateConnectionError) rather than write without it.
    """

    def __init__(self, uri: str, *, lock_timeout: float = 60.0) -> None:
        self.location = parse_location(uri)
        self.shown = self.location.shown
        self.name = self.location.name
        self.lock_timeout = lock_timeout
        self.timeout = database_timeout()
        self._connection: psycopg.Connection[Any] | None = None
        self._mutex = threading.RLock()
        self._lock_depth = 0
        self._lock_lost = False  # the connection holding the lock ended while it was held
        self._reconnected = False  # the one reconnection after a loss was tried
        self._session_pid: int | None = None  # the server backend our session must stay on
        self._checked = False  # the schema's tables were found to be ours, of our version
        self._lock_key = _lock_key(self.name)
        self._watchdog = _Watchdog()
        self._interrupted = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.shown!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._mutex:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
                self._lock_depth = 0

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: a database call still waiting ends within a second, as do later ones.

        Safe from any thread; a server that answers is not affected (its calls take less).
        """
        self._interrupted = True
        self._watchdog.shorten(INTERRUPTED_TIMEOUT_SECONDS)

    # -- connection ------------------------------------------------------------------------------

    def _deadline(self) -> float:
        return min(self.timeout, INTERRUPTED_TIMEOUT_SECONDS) if self._interrupted else self.timeout

    def _open(self, *, connect_timeout: float) -> psycopg.Connection[Any]:
        """A new session, set up as ours (durable commits, a deadline on every statement)."""
        driver = _psycopg()
        given = _conninfo_parts(self.location.conninfo, self.shown)
        deadline = self._deadline()
        options: dict[str, Any] = {
            "autocommit": True,
            "application_name": "reconciler",
            # No server-side prepared statements: a pooler could hand them to another client.
            "prepare_threshold": None,
        }
        settings = {
            # libpq's minimum is 2 s; psycopg enforces it too.
            "connect_timeout": str(max(2, math.ceil(min(connect_timeout, deadline)))),
            "keepalives": "1",
            "keepalives_idle": str(max(1, int(deadline / 3))),
            "keepalives_interval": str(max(1, int(deadline / 9))),
            "keepalives_count": "3",
            "tcp_user_timeout": str(int(deadline * 1000)),
        }
        options.update({key: value for key, value in settings.items() if key not in given})
        try:
            connection: psycopg.Connection[Any] = driver.connect(self.location.conninfo, **options)
        except driver.Error as error:
            raise StateConnectionError(
                f"cannot connect to the state database {self.shown}: {self._text(error)}"
            ) from None
        watched = self._watchdog.arm(deadline, connection.pgconn.socket)
        try:
            row = connection.execute(
                "SELECT set_config('synchronous_commit', 'on', false), "
                "set_config('statement_timeout', %s, false), pg_backend_pid()",
                (f"{int(deadline * 1000)}ms",),
            ).fetchone()
        except driver.Error as error:
            with contextlib.suppress(Exception):
                connection.close()
            raise StateConnectionError(
                f"cannot connect to the state database {self.shown}: {self._text(error)}"
            ) from None
        finally:
            self._watchdog.disarm(watched)
        assert row is not None
        self._session_pid = int(row[2])
        return connection

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is not None:
            if self._connection.closed or self._connection.broken:
                self._lost(None)
            return self._connection
        if self._lock_lost:
            self._regain_lock()
        else:
            self._connection = self._open(connect_timeout=float(_CONNECT_TIMEOUT_SECONDS))
        assert self._connection is not None
        return self._connection

    def _regain_lock(self) -> None:
        """After the locked connection was lost: once, connect again and take the lock back."""
        if self._reconnected:
            raise StateConnectionError(
                f"lost the connection to the state database {self.shown}, and with it the "
                "state's lock; reconnecting did not work"
            )
        self._reconnected = True
        connection = self._open(connect_timeout=RECONNECT_SECONDS)
        self._connection = connection
        with self._database() as again:
            got = again.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, self._lock_key)
            ).fetchone()
        if got is None or not got[0]:
            self._connection = None
            with contextlib.suppress(Exception):
                connection.close()
            raise StateConnectionError(
                f"lost the connection to the state database {self.shown}; reconnected, but "
                "another apply holds the state's lock now"
            )
        self._lock_lost = False
        self._record_holder()

    def _text(self, error: BaseException) -> str:
        return self.location.scrub(" ".join(str(error).split()) or type(error).__name__)

    def _lost(self, error: BaseException | None) -> NoReturn:
        if self._watchdog.expired and self._interrupted:
            detail = ": it did not answer within a second of the interrupt; gave up on it"
        elif self._watchdog.expired:
            detail = (
                f": it did not answer within {self.timeout:g} s ({TIMEOUT_VARIABLE}); gave up on it"
            )
        else:
            detail = f": {self._text(error)}" if error is not None else ""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
        if self._lock_depth:
            self._lock_lost = True
        raise StateConnectionError(
            f"lost the connection to the state database {self.shown}{detail}"
        ) from None

    @contextlib.contextmanager
    def _database(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, with database errors turned into StateErrors naming the state.

        Every call has a deadline (our own timer, beside the session's statement_timeout).
        """
        psycopg = _psycopg()
        with self._mutex:
            connection = self._connect()
            watched = self._watchdog.arm(self._deadline(), connection.pgconn.socket)
            try:
                yield connection
            except psycopg.OperationalError as error:
                if connection.closed or connection.broken or self._watchdog.expired:
                    self._lost(error)
                raise StateError(f"{self.shown}: {self._text(error)}; {_UNTOUCHED}") from None
            except psycopg.Error as error:
                raise StateError(
                    f"{self.shown}: the database refused: {self._text(error)} "
                    "(that transaction was rolled back)"
                ) from None
            finally:
                self._watchdog.disarm(watched)

    def _require_session(self) -> None:
        """Refuse a pooler that does not keep one server session (transaction/statement mode).

        Our session must stay on one server backend for the whole run: the advisory lock is
        that backend's. A second, short connection is asked for its backend: behind a pooler
        in transaction mode it is handed the backend we just used (PgBouncer reuses the most
        recent one); and our own must still be the one we started on.
        """
        with self._database() as connection:
            ours = self._backend_pid(connection)
        probe = self._open(connect_timeout=float(_CONNECT_TIMEOUT_SECONDS))
        other = self._session_pid  # the probe's backend, read as _open set the session up
        with contextlib.suppress(Exception):
            probe.close()
        with self._database() as connection:
            still = self._backend_pid(connection)
        self._session_pid = ours  # _open set it to the probe's
        if other == ours or still != ours:
            raise StateError(_POOLED.format(shown=self.shown))

    @staticmethod
    def _backend_pid(connection: psycopg.Connection[Any]) -> int:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    # -- the schema ------------------------------------------------------------------------------

    def _schema_ready(self, connection: psycopg.Connection[Any]) -> bool:
        """Whether the tables exist; refuses tables that are not ours or of a newer version."""
        if self._checked:
            return True
        rows = connection.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            (SCHEMA,),
        ).fetchall()
        tables = {row[0] for row in rows}
        if not tables:
            return False
        foreign = sorted(tables - _TABLES)
        if foreign or "meta" not in tables:
            listed = ", ".join(f"{SCHEMA}.{table}" for table in sorted(tables))
            raise StateError(
                f"{self.shown}: the schema {SCHEMA!r} holds tables reconciler did not create "
                f"({listed}); refusing to use it; nothing was changed. Give reconciler a "
                f"database whose schema {SCHEMA!r} is its own"
            )
        meta = dict(connection.execute(f"SELECT key, value FROM {SCHEMA}.meta").fetchall())
        version = meta.get("schema_version")
        if meta.get("written_by") != "reconciler" or version is None or not version.isdigit():
            raise StateError(
                f"{self.shown}: {SCHEMA}.meta was not written by reconciler "
                f"(schema_version {version!r}); refusing to use it; nothing was changed"
            )
        if int(version) > SCHEMA_VERSION:
            raise StateError(
                f"{self.shown}: the state's tables are version {version}, written by a newer "
                f"reconciler; this reconciler understands version {SCHEMA_VERSION} only. "
                "Upgrade reconciler; the database was left untouched"
            )
        if int(version) == 1 and tables == _TABLES_V1:
            self._upgrade(connection)
            return True
        if int(version) != SCHEMA_VERSION or tables != _TABLES:
            raise StateError(
                f"{self.shown}: the state's tables are version {version} with tables "
                f"{', '.join(sorted(tables))}; this reconciler expects version "
                f"{SCHEMA_VERSION} with {', '.join(sorted(_TABLES))}; nothing was changed"
            )
        self._checked = True
        return True

    def _upgrade(self, connection: psycopg.Connection[Any]) -> None:
        """Version 1 tables to version 2, in one transaction (two upgraders: one does it)."""
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_CLASS,))
                row = connection.execute(
                    f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version' FOR UPDATE"
                ).fetchone()
                if row is not None and row[0] == "1":
                    connection.execute(_UPGRADE_TO_2)
        except _psycopg().errors.InsufficientPrivilege as error:
            raise StateError(
                f"{self.shown}: the state's tables are version 1; this reconciler upgrades them "
                "to version 2 (two new tables, one new column) on first use, but this user may "
                f"not: {self._text(error)}. Run any reconciler command once as the tables' "
                "owner; nothing was changed"
            ) from None
        self._checked = True

    def _create_schema(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            # Two first runs at once must not both create the tables.
            connection.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_CLASS,))
            if self._schema_ready(connection):
                return
            exists = connection.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
            ).fetchone()
            if exists is None:
                connection.execute(f"CREATE SCHEMA {SCHEMA}")
            connection.execute(_CREATE_TABLES)
            connection.execute(_UPGRADE_TO_2)
        self._checked = False
        self._schema_ready(connection)

    # -- read ------------------------------------------------------------------------------------

    def exists(self) -> bool:
        with self._database() as connection:
            if not self._schema_ready(connection):
                return False
            row = connection.execute(
                f"SELECT 1 FROM {SCHEMA}.states WHERE name = %s", (self.name,)
            ).fetchone()
            return row is not None

    def missing_reason(self) -> str:
        return (
            f"(database state {self.name!r}). Either --state / RECONCILER_STATE names the "
            "wrong database or state name (after '#'), or the state was never created"
        )

    def created_hint(self) -> str:
        return (
            "Every apply records what it submitted there, committed as it goes: there is "
            "nothing to commit to Git."
        )

    def load(self) -> State:
        """The named state: its tasks in one statement, then their evidence.

        No explicit transaction, so a pooler in statement mode can serve `plan` and `state
        list` (only apply needs one session). Evidence only ever grows and is read after the
        tasks, so what the reads may miss is evidence that arrived between them, never a task.
        """
        with self._database() as connection:
            if not self._schema_ready(connection):
                return State()
            cursor = connection.execute(
                "SELECT s.sandbox, t.hash, t.status, t.name, t.source, t.request, t.request_id, "
                f"t.updated_at, t.submitted_at, t.external_id FROM {SCHEMA}.states s "
                f"LEFT JOIN {SCHEMA}.tasks t ON t.state = s.name WHERE s.name = %s",
                (self.name,),
            )
            sandbox = False
            found = False
            entries: dict[str, StateEntry] = {}
            for row in cursor:
                found, sandbox = True, bool(row[0])
                if row[1] is not None:  # None: a state with no task yet
                    entries[row[1]] = self._entry(row[1:])
            if not found:
                return State()
            recordings: dict[str, list[Recording]] = {}
            for evidence in connection.execute(
                f"SELECT {_RECORDING_COLUMNS} FROM {SCHEMA}.recordings WHERE state = %s "
                "ORDER BY seq",
                (self.name,),
            ):
                recordings.setdefault(evidence[0], []).append(self._recording(evidence))
            unmatched = tuple(
                self._unmatched(callback)
                for callback in connection.execute(
                    f"SELECT id, received_at, reason, body FROM {SCHEMA}.unmatched "
                    "WHERE state = %s ORDER BY seq",
                    (self.name,),
                )
            )
        return State._adopt(
            entries,
            sandbox=sandbox,
            recordings={k: tuple(v) for k, v in recordings.items() if k in entries},
            unmatched=unmatched,
        )

    def _entry(self, row: Sequence[Any]) -> StateEntry:
        fields = {
            "status": row[1],
            "name": row[2],
            "source": row[3],
            "request": row[4],
            "requestId": row[5],
            "updatedAt": row[6],
            "submittedAt": row[7],
            "taskExternalId": row[8],
        }
        return parse_entry(row[0], fields, self.shown, _UNTOUCHED)

    def _recording(self, row: Sequence[Any]) -> Recording:
        try:
            return Recording(*row[1:])
        except ValueError as error:
            raise StateError(f"{self.shown}: task {row[0]}: {error}; {_UNTOUCHED}") from None

    def _unmatched(self, row: Sequence[Any]) -> UnmatchedCallback:
        try:
            return UnmatchedCallback(row[0], row[1], row[2], row[3])
        except ValueError as error:
            raise StateError(
                f"{self.shown}: unmatched callback {row[0]}: {error}; {_UNTOUCHED}"
            ) from None

    def lock_holder(self) -> LockHolder | None:
        """Who holds the lock, if its holder recorded itself and still holds it."""
        with self._database() as connection:
            if not self._schema_ready(connection):
                return None
            row = connection.execute(
                f"SELECT host, pid, since, run_url FROM {SCHEMA}.locks WHERE state = %s "
                "AND backend_pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s::oid AND objid = %s::oid AND objsubid = 2 AND granted)",
                (self.name, _LOCK_CLASS, self._lock_key),
            ).fetchone()
        if row is None:
            return None
        return LockHolder(host=row[0], pid=row[1], since=row[2], run_url=row[3])

    # -- lock ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state's advisory lock; re-entrant within this store."""
        with self._mutex:
            if self._lock_depth == 0:
                self._acquire()
            self._lock_depth += 1
        try:
            yield
        finally:
            with self._mutex:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self._release()

    def _acquire(self) -> None:
        self._require_session()
        deadline = time.monotonic() + self.lock_timeout
        while True:
            with self._database() as connection:
                got = connection.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, self._lock_key)
                ).fetchone()
            if got is not None and got[0]:
                break
            if time.monotonic() >= deadline:
                raise StateLockedError.timed_out(
                    self.shown,
                    self.lock_holder(),
                    self.lock_timeout,
                    "another connection (it recorded no details)",
                )
            time.sleep(min(_LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        self._lock_lost = self._reconnected = False
        self._record_holder()

    def _record_holder(self) -> None:
        """Say who holds the lock, for whoever waits (only once the tables exist)."""
        holder = holder_of_this_process()
        with self._database() as connection:
            if not self._schema_ready(connection):
                return
            connection.execute(
                f"INSERT INTO {SCHEMA}.locks (state, host, pid, since, run_url, backend_pid) "
                "VALUES (%s, %s, %s, %s, %s, pg_backend_pid()) ON CONFLICT (state) DO UPDATE "
                "SET host = EXCLUDED.host, pid = EXCLUDED.pid, since = EXCLUDED.since, "
                "run_url = EXCLUDED.run_url, backend_pid = EXCLUDED.backend_pid",
                (self.name, holder.host, holder.pid, holder.since, holder.run_url),
            )

    def _release(self) -> None:
        self._lock_lost = False
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            return  # the server released the lock with the connection
        with contextlib.suppress(StateError), self._database() as connection:
            if self._checked:
                connection.execute(
                    f"DELETE FROM {SCHEMA}.locks WHERE state = %s AND backend_pid = pg_backend_pid()",
                    (self.name,),
                )
            connection.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_CLASS, self._lock_key))

    # -- write -----------------------------------------------------------------------------------

    def create(self, *, sandbox: bool = False) -> State:
        with self.lock(), self._database() as connection:
            self._create_schema(connection)
            row = connection.execute(
                f"INSERT INTO {SCHEMA}.states (name, sandbox) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (self.name, sandbox),
            ).fetchone()
            if row is None:
                raise StateExistsError(f"{self.shown}: a state already exists; nothing was changed")
            self._record_holder()
        return State(sandbox=sandbox)

    def claim(self, entries: Sequence[StateEntry], *, seen: State | None = None) -> frozenset[str]:
        """Commit `pending` rows for `entries`; returns the hashes this call claimed.

        A task with no row when the plan was made (`seen`) is claimed by an INSERT that the
        primary key lets only one applier win. A task `seen` as `pending` (re-sent with
        --retry-pending) is claimed only if its row is still exactly what was seen.
        """
        if not entries:
            return frozenset()
        fresh = [entry for entry in entries if seen is None or seen.get(entry.hash) is None]
        again = [entry for entry in entries if seen is not None and seen.get(entry.hash)]
        claimed: set[str] = set()
        with self._database() as connection, connection.transaction():
            self._require_state(connection)
            for entry in fresh:
                row = connection.execute(
                    f"INSERT INTO {SCHEMA}.tasks (state, {_COLUMNS}) {_VALUES} "
                    "ON CONFLICT (state, hash) DO NOTHING RETURNING hash",
                    self._row(entry),
                ).fetchone()
                if row is not None:
                    claimed.add(row[0])
            for entry in again:
                before = seen.get(entry.hash) if seen is not None else None
                assert before is not None
                # Not if a receiver recorded evidence meanwhile: the service processed it.
                row = connection.execute(
                    f"UPDATE {SCHEMA}.tasks SET status = %s, name = %s, source = %s, "
                    "updated_at = %s, external_id = %s WHERE state = %s AND hash = %s "
                    "AND status = 'pending' AND updated_at = %s AND NOT EXISTS (SELECT 1 FROM "
                    f"{SCHEMA}.recordings r WHERE r.state = %s AND r.hash = %s "
                    "AND r.status <> 'missing') RETURNING hash",
                    (
                        entry.status.value,
                        entry.name,
                        entry.source,
                        entry.updated_at,
                        entry.external_id,
                        self.name,
                        entry.hash,
                        before.updated_at,
                        self.name,
                        entry.hash,
                    ),
                ).fetchone()
                if row is not None:
                    claimed.add(row[0])
        return frozenset(claimed)

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        """Record outcomes in one transaction; `removed` drops marks still `pending`."""
        if not entries and not removed:
            return
        rows = [self._row(entry) for entry in entries]
        with self._database() as connection, connection.transaction():
            self._require_state(connection)
            if rows:
                connection.cursor().executemany(_UPSERT, rows)
            if removed:
                # A mark with evidence stays: the service processed that task.
                connection.execute(
                    f"DELETE FROM {SCHEMA}.tasks t WHERE t.state = %s AND t.hash = ANY(%s) "
                    f"AND t.status = 'pending' AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.recordings "
                    "r WHERE r.state = t.state AND r.hash = t.hash)",
                    (self.name, list(removed)),
                )

    def compact(self) -> State:
        """Nothing to fold: every outcome is a committed row already."""
        return self.load()

    def write(self, state: State) -> None:
        """Make the named state exactly `state`, in one transaction."""
        rows = [self._row(entry) for entry in state.entries.values()]
        with self._database() as connection, connection.transaction():
            kind = self._require_state(connection)
            if kind != state.sandbox:
                kinds = ("a real", "a sandbox")
                raise StateError(
                    f"{self.shown} is {kinds[kind]} state; it cannot be replaced by "
                    f"{kinds[state.sandbox]} state (sandbox and real tasks never mix); "
                    "nothing was changed"
                )
            connection.execute(
                f"DELETE FROM {SCHEMA}.tasks WHERE state = %s AND NOT (hash = ANY(%s))",
                (self.name, list(state.entries)),
            )
            connection.execute(
                f"DELETE FROM {SCHEMA}.recordings WHERE state = %s AND NOT (hash = ANY(%s))",
                (self.name, list(state.entries)),
            )
            if rows:
                connection.cursor().executemany(_UPSERT, rows)
            # Evidence is only ever added here: a receiver may have stored some since `state`
            # was read, and that must not be lost.
            evidence = [
                self._recording_row(key, recording)
                for key, recordings in state.recordings.items()
                for recording in recordings
            ]
            if evidence:
                connection.cursor().executemany(_INSERT_RECORDING, evidence)
            callbacks = [self._unmatched_row(callback) for callback in state.unmatched]
            if callbacks:
                connection.cursor().executemany(_INSERT_UNMATCHED, callbacks)

    def _require_state(self, connection: psycopg.Connection[Any]) -> bool:
        """The state's sandbox flag, locked against removal for this transaction."""
        row = None
        if self._schema_ready(connection):
            row = connection.execute(
                f"SELECT sandbox, pg_backend_pid() FROM {SCHEMA}.states WHERE name = %s FOR SHARE",
                (self.name,),
            ).fetchone()
        if row is None:
            raise StateError(f"{self.shown}: the state does not exist; nothing was written")
        if self._lock_depth and row[1] != self._session_pid:
            # Our writes and our lock are on different server sessions: a pooler swapped them.
            raise StateError(_POOLED.format(shown=self.shown).replace("Nothing was sent. ", ""))
        return bool(row[0])

    def _row(self, entry: StateEntry) -> tuple[Any, ...]:
        if not isinstance(entry, StateEntry):
            raise TypeError(f"the state takes StateEntry values, not {type(entry).__name__}")
        require_own_hash(entry)
        return (
            self.name,
            entry.hash,
            entry.status.value,
            entry.name,
            entry.source,
            _json(entry.request),
            entry.request_id,
            entry.updated_at,
            entry.submitted_at,
            entry.external_id,
        )

    def _recording_row(self, key: str, recording: Recording) -> tuple[Any, ...]:
        return (
            self.name,
            key,
            recording.evidence,
            recording.source.value,
            recording.format,
            recording.status,
            recording.received_at,
            recording.download_url,
            recording.file_size,
            recording.duration,
        )

    def _unmatched_row(self, callback: UnmatchedCallback) -> tuple[Any, ...]:
        return (self.name, callback.id, callback.received_at, callback.reason, _json(callback.body))

    # -- evidence (the receiver, verify) ---------------------------------------------------------

    def record_callback(self, callback: Callback, received_at: str) -> StoredCallback:
        """Match one callback and commit the outcome, in one transaction, without the lock.

        Several receivers may store the same callback at once: the primary keys keep it once.
        """
        from reconciler.callbacks import StoredCallback, decide

        with self._database() as connection, connection.transaction():
            self._require_state(connection)
            candidates = self._candidates(connection, callback)
            held: dict[str, list[Recording]] = {}
            if candidates:
                for row in connection.execute(
                    f"SELECT {_RECORDING_COLUMNS} FROM {SCHEMA}.recordings WHERE state = %s "
                    "AND hash = ANY(%s)",
                    (self.name, [entry.hash for entry in candidates]),
                ):
                    held.setdefault(row[0], []).append(self._recording(row))
            match, recording, unmatched = decide(
                callback, candidates, lambda key: held.get(key, []), received_at
            )
            if unmatched is not None:
                row = connection.execute(
                    _INSERT_UNMATCHED, self._unmatched_row(unmatched)
                ).fetchone()
                return StoredCallback(None, match.reason, row is None)
            if recording is not None and match.entry is not None:
                row = connection.execute(
                    _INSERT_RECORDING, self._recording_row(match.entry.hash, recording)
                ).fetchone()
                return StoredCallback(match.entry, None, row is None)
            return StoredCallback(match.entry, None, True)

    def _candidates(
        self, connection: psycopg.Connection[Any], callback: Callback
    ) -> list[StateEntry]:
        """The tasks `callback` could be about: by its id, else by its stream (indexed)."""
        if callback.external_id is not None:
            query = (
                f"{_TASK_SELECT} AND (external_id = %s OR "
                "(request->'body'->>'taskExternalId') = %s)"
            )
            parameters: tuple[Any, ...] = (self.name, callback.external_id, callback.external_id)
        elif callback.stream_name is not None:
            query = f"{_TASK_SELECT} AND (request->'path'->>'streamName') = %s"
            parameters = (self.name, callback.stream_name)
        else:
            return []
        return [self._entry(row) for row in connection.execute(query, parameters)]

    def record_evidence(self, recordings: Sequence[tuple[str, Recording]]) -> int:
        """Add evidence for tasks (e.g. found in the bucket), in one transaction; returns how
        many were new."""
        if not recordings:
            return 0
        added = 0
        with self._database() as connection, connection.transaction():
            self._require_state(connection)
            for key, recording in recordings:
                row = connection.execute(
                    _INSERT_RECORDING, self._recording_row(key, recording)
                ).fetchone()
                added += row is not None
        return added


def _json(value: Mapping[str, Any]) -> Any:
    from psycopg.types.json import Json

    # Dumped as the file dumps it (a read-only view included), then stored as json.
    return Json(value, dumps=compact_json)
