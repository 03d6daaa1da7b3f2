"""The database state: named states in PostgreSQL, rows committed write-ahead, an advisory lock.

Tables live in their own schema, `reconciler`, created on first use (`init`, or a sandbox
apply's first run) and versioned in `reconciler.meta`: tables of a newer reconciler, or tables
in that schema that reconciler did not create, are refused before anything is read or written.

- `tasks`: one row per (state, hash), the primary key: a claim is an INSERT, so two appliers
  can never both claim (and send) one task, even if something bypassed the lock.
- The apply lock is a session advisory lock: the server releases it when the holder's
  connection ends, so a killed runner never leaves a stale lock. `locks` holds who took it
  (host, pid, since, CI run) for whoever waits; a row whose backend no longer holds the
  advisory lock describes nobody and is not shown.

psycopg (the `postgres` extra) is imported only here, and this module only when a
`postgresql://` state is used. The password is never shown: messages use `shown`, the URI
with the password replaced by `***`, and every database error text is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

from reconciler.state.model import (
    LockHolder,
    State,
    StateEntry,
    StateError,
    StateExistsError,
    StateLocationError,
    StateLockedError,
    compact_json,
    holder_of_this_process,
    parse_entry,
    require_own_hash,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA", "SCHEMA_VERSION", "DatabaseLocation", "PostgresStore", "StateConnectionError"]

SCHEMA = "reconciler"
SCHEMA_VERSION = 1
DEFAULT_NAME = "default"
_TABLES = frozenset({"meta", "states", "tasks", "locks"})
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# The advisory lock's first key: "reco" as a 32-bit integer, so reconciler's locks do not
# collide with an application's own advisory locks on the same database.
_LOCK_CLASS = 0x7265636F
_LOCK_POLL_SECONDS = 0.2
_CONNECT_TIMEOUT_SECONDS = "10"
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
    ('schema_version', '{SCHEMA_VERSION}'),
    ('written_by', 'reconciler');
"""

_COLUMNS = "hash, status, name, source, request, request_id, updated_at, submitted_at"
_UPSERT = f"""
INSERT INTO {SCHEMA}.tasks (state, {_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (state, hash) DO UPDATE SET
    status = EXCLUDED.status, name = EXCLUDED.name, source = EXCLUDED.source,
    request = EXCLUDED.request, request_id = EXCLUDED.request_id,
    updated_at = EXCLUDED.updated_at, submitted_at = EXCLUDED.submitted_at
"""


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


def parse_location(uri: str) -> DatabaseLocation:
    """The location `uri` names; StateLocationError if it is not a usable libpq URI."""
    conninfo, _, fragment = uri.partition("#")
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
        password = _uri_password(conninfo)
        text = " ".join(str(error).split())
        if password:
            text = text.replace(password, "***")
        text = text.replace(conninfo, shown)
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


class PostgresStore:
    """One named state in a PostgreSQL database; connects on first use, over one connection.

    The connection is in autocommit mode: every write is its own transaction, committed
    before the method returns, so a `pending` row exists before its request can be sent.
    The advisory lock belongs to that connection: if it is lost, so is the lock, and every
    later write fails (StateConnectionError) rather than write without it.
    """

    def __init__(self, uri: str, *, lock_timeout: float = 60.0) -> None:
        self.location = parse_location(uri)
        self.shown = self.location.shown
        self.name = self.location.name
        self.lock_timeout = lock_timeout
        self._connection: psycopg.Connection[Any] | None = None
        self._mutex = threading.RLock()
        self._lock_depth = 0
        self._checked = False  # the schema's tables were found to be ours, of our version
        self._lock_key = _lock_key(self.name)

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

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is not None:
            if self._connection.closed or self._connection.broken:
                self._lost(None)
            return self._connection
        psycopg = _psycopg()
        options: dict[str, Any] = {"autocommit": True, "application_name": "reconciler"}
        if "connect_timeout" not in self.location.conninfo:
            options["connect_timeout"] = _CONNECT_TIMEOUT_SECONDS
        try:
            self._connection = psycopg.connect(self.location.conninfo, **options)
        except psycopg.Error as error:
            raise StateConnectionError(
                f"cannot connect to the state database {self.shown}: {self._text(error)}"
            ) from None
        return self._connection

    def _text(self, error: BaseException) -> str:
        return self.location.scrub(" ".join(str(error).split()) or type(error).__name__)

    def _lost(self, error: BaseException | None) -> NoReturn:
        detail = f": {self._text(error)}" if error is not None else ""
        self._connection = None
        self._lock_depth = 0
        raise StateConnectionError(
            f"lost the connection to the state database {self.shown}{detail}"
        ) from None

    @contextlib.contextmanager
    def _database(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, with database errors turned into StateErrors naming the state."""
        psycopg = _psycopg()
        with self._mutex:
            connection = self._connect()
            try:
                yield connection
            except psycopg.OperationalError as error:
                if connection.closed or connection.broken:
                    self._lost(error)
                raise StateError(f"{self.shown}: {self._text(error)}; {_UNTOUCHED}") from None
            except psycopg.Error as error:
                raise StateError(
                    f"{self.shown}: the database refused: {self._text(error)}; nothing was changed"
                ) from None

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
        if int(version) != SCHEMA_VERSION or tables != _TABLES:
            raise StateError(
                f"{self.shown}: the state's tables are version {version} with tables "
                f"{', '.join(sorted(tables))}; this reconciler expects version "
                f"{SCHEMA_VERSION} with {', '.join(sorted(_TABLES))}; nothing was changed"
            )
        self._checked = True
        return True

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
        """The named state, read in one statement (one snapshot of the database)."""
        with self._database() as connection:
            if not self._schema_ready(connection):
                return State()
            cursor = connection.execute(
                f"SELECT s.sandbox, t.hash, t.status, t.name, t.source, t.request, "
                f"t.request_id, t.updated_at, t.submitted_at FROM {SCHEMA}.states s "
                f"LEFT JOIN {SCHEMA}.tasks t ON t.state = s.name WHERE s.name = %s",
                (self.name,),
            )
            sandbox = False
            entries: dict[str, StateEntry] = {}
            for row in cursor:
                sandbox = row[0]
                if row[1] is None:  # a state with no task yet
                    continue
                fields = {
                    "status": row[2],
                    "name": row[3],
                    "source": row[4],
                    "request": row[5],
                    "requestId": row[6],
                    "updatedAt": row[7],
                    "submittedAt": row[8],
                }
                entries[row[1]] = parse_entry(row[1], fields, self.shown, _UNTOUCHED)
        return State._adopt(entries, sandbox=sandbox is True)

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
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            return  # the server released the lock with the connection
        with contextlib.suppress(Exception):
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
                    f"INSERT INTO {SCHEMA}.tasks (state, {_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (state, hash) DO NOTHING RETURNING hash",
                    self._row(entry),
                ).fetchone()
                if row is not None:
                    claimed.add(row[0])
            for entry in again:
                before = seen.get(entry.hash) if seen is not None else None
                assert before is not None
                row = connection.execute(
                    f"UPDATE {SCHEMA}.tasks SET status = %s, name = %s, source = %s, "
                    "updated_at = %s WHERE state = %s AND hash = %s AND status = 'pending' "
                    "AND updated_at = %s RETURNING hash",
                    (
                        entry.status.value,
                        entry.name,
                        entry.source,
                        entry.updated_at,
                        self.name,
                        entry.hash,
                        before.updated_at,
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
                connection.execute(
                    f"DELETE FROM {SCHEMA}.tasks WHERE state = %s AND hash = ANY(%s) "
                    "AND status = 'pending'",
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
            if rows:
                connection.cursor().executemany(_UPSERT, rows)

    def _require_state(self, connection: psycopg.Connection[Any]) -> bool:
        """The state's sandbox flag, locked against removal for this transaction."""
        row = None
        if self._schema_ready(connection):
            row = connection.execute(
                f"SELECT sandbox FROM {SCHEMA}.states WHERE name = %s FOR SHARE", (self.name,)
            ).fetchone()
        if row is None:
            raise StateError(f"{self.shown}: the state does not exist; nothing was written")
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
        )


def _json(value: Mapping[str, Any]) -> Any:
    from psycopg.types.json import Json

    # Dumped as the file dumps it (a read-only view included), then stored as json.
    return Json(value, dumps=compact_json)
