"""State: the committed snapshot of every task's outcome, its write-ahead journal, and the lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import filelock

from reconciler.collector import collector_paused
from reconciler.tasks import request_hash

__all__ = [
    "MIN_PREFIX",
    "STATE_VERSION",
    "LockHolder",
    "State",
    "StateEntry",
    "StateError",
    "StateExistsError",
    "StateLockedError",
    "StateStore",
    "TaskStatus",
    "utc_timestamp",
]

STATE_VERSION = 1
MIN_PREFIX = 6

_HASH = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_REQUIRED_FIELDS = frozenset({"name", "request", "source", "status", "updatedAt"})
_ALLOWED_FIELDS = _REQUIRED_FIELDS | {"requestId", "submittedAt"}
# A lockless reader (e.g. `plan`) can race a compaction; it re-reads, but not forever.
_LOAD_ATTEMPTS = 20
_TAIL_CHUNK = 8192
_MAX_LINKS = 40  # as Linux's MAXSYMLINKS
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise turn "\n" into "\r\n"


class TaskStatus(StrEnum):
    """`pending`: sent or about to be sent, outcome unknown; `submitted`: the API accepted it."""

    PENDING = "pending"
    SUBMITTED = "submitted"


class StateError(Exception):
    """The state cannot be read or written; the message names the file (and line, if any)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds the state lock, as the holder recorded it when it took the lock."""

    host: str
    pid: int
    since: str

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.since}"


class StateExistsError(StateError):
    """`create` found a state (its snapshot or its journal) already there; it changed nothing."""


class StateLockedError(StateError):
    """Another process held the state lock for longer than the lock timeout."""

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


def utc_timestamp(moment: datetime) -> str:
    """`moment` in the state's time format, UTC `YYYY-MM-DDTHH:MM:SSZ`."""
    if moment.tzinfo is None:
        raise ValueError(
            "a naive datetime is ambiguous; pass an aware one (e.g. datetime.now(UTC))"
        )
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"
    )


@dataclass(frozen=True, slots=True)
class StateEntry:
    """What the state knows about one task, keyed by the sha256 of its canonical request.

    Construction checks every field, so an entry that exists can always be written and read back.
    That `hash` is request_hash(request) is checked where entries enter the files: by
    `StateStore.append` and by every load (it would cost every plan a hash per task here).
    """

    hash: str
    status: TaskStatus
    name: str
    source: str
    request: Mapping[str, Any]
    updated_at: str
    request_id: str | None = None
    submitted_at: str | None = None

    def __post_init__(self) -> None:
        # Read back as plain objects: entries are also built from JSON on disk. One combined
        # test first, because this runs for every task on every load.
        key: object = self.hash
        status: object = self.status
        request_id: object = self.request_id
        submitted_at: object = self.submitted_at
        if (
            isinstance(key, str)
            and _HASH.fullmatch(key)
            and isinstance(status, str)
            and status in _STATUSES
            and isinstance(self.name, str)
            and isinstance(self.source, str)
            and isinstance(self.request, dict | Mapping)
            and _is_timestamp(self.updated_at)
            and (request_id is None or isinstance(request_id, str))
            and (submitted_at is None or _is_timestamp(submitted_at))
        ):
            if status.__class__ is not TaskStatus:
                object.__setattr__(self, "status", _STATUSES[status])
            return
        raise ValueError(_entry_problem({name: getattr(self, name) for name in self.__slots__}))


def _is_timestamp(value: object) -> bool:
    return isinstance(value, str) and _TIMESTAMP.fullmatch(value) is not None


def _entry_problem(fields: Mapping[str, object]) -> str:
    key, status = fields["hash"], fields["status"]
    if not isinstance(key, str) or not _HASH.fullmatch(key):
        return f"hash must be 64 lower-case hex digits (a sha256), not {key!r}"
    if not isinstance(status, str) or status not in _STATUSES:
        return f"unknown status {status!r} (known: {', '.join(_STATUSES)})"
    for name in ("name", "source"):
        if not isinstance(fields[name], str):
            return f"{name} must be a string, not {fields[name]!r}"
    if not isinstance(fields["request"], Mapping):
        return f"request must be a JSON object, not {fields['request']!r}"
    if not isinstance(fields["request_id"], str | None):
        return f"request_id must be a string or None, not {fields['request_id']!r}"
    for name in ("updated_at", "submitted_at"):
        if not _is_timestamp(fields[name]) and (name == "updated_at" or fields[name] is not None):
            return f"{name} must be UTC 'YYYY-MM-DDTHH:MM:SSZ', not {fields[name]!r}"
    raise AssertionError("an entry that failed its check passed every single test")


_STATUSES: dict[str, TaskStatus] = {status.value: status for status in TaskStatus}


@dataclass(frozen=True)
class State:
    """Every task the state knows, by hash. A value: changes return a new State.

    `sandbox`: the state records tasks sent to the local sandbox, never to JD Cloud (a real
    apply must not trust it, and a sandbox apply must not write into a real one).
    """

    entries: Mapping[str, StateEntry] = field(default_factory=dict)
    sandbox: bool = False

    def __post_init__(self) -> None:
        entries = dict(self.entries)
        for key, entry in entries.items():
            if key != entry.hash:
                raise ValueError(f"entry for {entry.hash} is filed under {key!r}")
        # Read-only, so a State shared between plan and apply cannot change under either.
        object.__setattr__(self, "entries", MappingProxyType(entries))

    def __len__(self) -> int:
        return len(self.entries)

    def requests(self) -> dict[str, Mapping[str, Any]]:
        """Each task's recorded request by hash (for tasks.load_tasks to share, not copy)."""
        return {key: entry.request for key, entry in self.entries.items()}

    def get(self, hash: str) -> StateEntry | None:
        return self.entries.get(hash)

    def fingerprint(self) -> str:
        """sha256 of the state's canonical compact JSON: equal states, equal fingerprints.

        Hashed entry by entry (the same bytes as the whole document dumped with sorted keys),
        so a large state is never held in memory a second time as one string.
        """
        digest = hashlib.sha256(b'{"sandbox":true,"tasks":{' if self.sandbox else b'{"tasks":{')
        for number, key in enumerate(sorted(self.entries)):
            chunk = _compact(key) + ":" + _compact(_entry_fields(self.entries[key]))
            digest.update(("," + chunk if number else chunk).encode())
        digest.update(f'}},"version":{STATE_VERSION}}}'.encode())
        return digest.hexdigest()

    def with_entries(self, entries: Iterable[StateEntry]) -> State:
        merged = self._copy()
        merged.update((entry.hash, entry) for entry in entries)
        return State._adopt(merged, sandbox=self.sandbox)

    def without(self, hash: str) -> State:
        remaining = self._copy()
        remaining.pop(hash, None)
        return State._adopt(remaining, sandbox=self.sandbox)

    # apply records outcomes one task at a time: a change must not cost a pass over every entry.
    @classmethod
    def _adopt(cls, entries: dict[str, StateEntry], *, sandbox: bool = False) -> State:
        """A State of `entries`, a dict keyed by hash that nothing else holds."""
        state = object.__new__(cls)
        object.__setattr__(state, "entries", MappingProxyType(entries))
        object.__setattr__(state, "sandbox", sandbox)
        return state

    def _copy(self) -> dict[str, StateEntry]:
        return cast("MappingProxyType[str, StateEntry]", self.entries).copy()

    def find(self, prefix: str) -> StateEntry:
        """The entry whose hash is `prefix` or starts with it (at least 6 hex digits, unique)."""
        wanted = prefix.strip().lower()
        if not _HEX.fullmatch(wanted):
            raise StateError(f"{prefix!r} is not a task hash (hexadecimal digits expected)")
        if len(wanted) < MIN_PREFIX:
            raise StateError(
                f"hash prefix {wanted!r} is too short: give at least {MIN_PREFIX} hex digits"
            )
        exact = self.entries.get(wanted)
        if exact is not None:
            return exact
        matches = [entry for key, entry in self.entries.items() if key.startswith(wanted)]
        if not matches:
            raise StateError(f"no task in the state has a hash starting with {wanted}")
        if len(matches) > 1:
            shown = ", ".join(f"{e.hash[:12]} ({e.name})" for e in sorted(matches, key=_by_hash))
            raise StateError(
                f"hash prefix {wanted} is ambiguous: it matches {len(matches)} tasks: {shown}; "
                "give more digits"
            )
        return matches[0]


def _by_hash(entry: StateEntry) -> str:
    return entry.hash


class _Unchecked:
    """The snapshot has not been read by this store yet."""


_UNCHECKED = _Unchecked()
_FileIdentity = tuple[int, int, int, int]


def _identity(status: os.stat_result) -> _FileIdentity:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _link_target(path: Path) -> Path:
    """Where the chain of symbolic links starting at `path` ends; `path` if it is no link.

    The end need not exist yet (a link to a state not created yet). Only the last component is
    followed: links among the folders lead to the same file either way. A loop is left as it
    is, for opening it to fail with "too many levels of symbolic links".
    """
    target = path
    for _ in range(_MAX_LINKS):
        try:
            link = os.readlink(target)
        except OSError:  # not a link (or gone): the chain ends here
            return target
        target = Path(os.path.join(os.path.dirname(target), link))
    return path


class StateStore:
    """The state on disk: `path` (snapshot), `path.journal` (write-ahead log), `path.lock`.

    If `path` is a symbolic link (or a chain of them), `target` is the file it leads to, and
    the journal and lock files are beside `target`; messages name both, as `shown`:
    `reconciler-state.json (-> shared/state.json)`.

    Callers hold `lock()` around every load ... append ... compact sequence. Within one process
    the methods are thread-safe. A State is the snapshot with the journal folded in, in order;
    an entry is durable once `append` returns.
    """

    def __init__(self, path: Path, *, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        # A link is followed (when the store is made): its target is read, replaced and locked,
        # and the journal and the lock live beside it, so every name of one state shares them.
        self.target = _link_target(self.path)
        self.shown = str(self.path) if self.target == self.path else f"{path} (-> {self.target})"
        self.journal_path = Path(f"{self.target}.journal")
        self.lock_path = Path(f"{self.target}.lock")
        self.lock_info_path = Path(f"{self.target}.lock.info")
        self.lock_timeout = lock_timeout
        self._file_lock = filelock.FileLock(self.lock_path, timeout=lock_timeout)
        self._mutex = threading.RLock()
        # The snapshot this store last read whole and found valid (None: it was missing).
        self._checked_snapshot: _FileIdentity | _Unchecked | None = _UNCHECKED

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r})"

    # -- lock -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the cross-process state lock; re-entrant within one thread."""
        outermost = not self._file_lock.is_locked
        try:
            self._file_lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            holder = self.lock_holder()
            who = str(holder) if holder else "an unknown process (it recorded no holder details)"
            raise StateLockedError(
                f"{self.shown} is locked by {who}; gave up after waiting "
                f"{self.lock_timeout:g} s. Another reconciler is using this state: wait for it "
                "to finish, or raise the lock timeout",
                holder,
            ) from None
        except OSError as error:
            raise StateError(f"{self.lock_path}: cannot take the state lock: {error}") from error
        try:
            if outermost:
                self._write_lock_info()
            yield
        finally:
            # The holder details go before the lock does, so they never describe the next holder.
            if outermost:
                with contextlib.suppress(OSError):
                    os.unlink(self.lock_info_path)
            self._file_lock.release()

    def lock_holder(self) -> LockHolder | None:
        """Who recorded holding the lock, if anyone did and the record is readable."""
        try:
            info = json.loads(self.lock_info_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict):
            return None
        host, pid, since = info.get("host"), info.get("pid"), info.get("since")
        if isinstance(host, str) and isinstance(pid, int) and isinstance(since, str):
            return LockHolder(host=host, pid=pid, since=since)
        return None

    def _write_lock_info(self) -> None:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": utc_timestamp(datetime.now(UTC)),
        }
        temporary = Path(f"{self.lock_info_path}.{secrets.token_hex(4)}.tmp")
        try:
            temporary.write_text(json.dumps(info, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(temporary, self.lock_info_path)
        except OSError:
            # Only a courtesy for whoever waits next; the lock itself is held.
            with contextlib.suppress(OSError):
                temporary.unlink()

    # -- read -----------------------------------------------------------------------------------

    def load(self) -> State:
        """The snapshot (a missing file is an empty state) with the journal folded in."""
        with self._mutex, collector_paused():
            for _ in range(_LOAD_ATTEMPTS):
                state = self._load_consistent()
                if state is not None:
                    return state
            raise StateError(
                f"{self.shown}: the state kept changing while being read; "
                "is another process writing it without the lock? Try again"
            )

    def _load_consistent(self) -> State | None:
        # Snapshot first, journal second, then check the snapshot was not replaced meanwhile:
        # a compaction replaces the snapshot before it removes the journal, so a reader that
        # missed the journal always sees a new snapshot, and reads again.
        try:
            handle = open(self.target, "rb")  # noqa: SIM115  (kept open: it pins the inode compared)
        except FileNotFoundError:
            journal = self._read_journal()
            if self.target.exists():
                return None
            state = self._fold({}, journal)
            self._checked_snapshot = None
            return state
        except OSError as error:
            raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
        with handle:
            try:
                data = handle.read()
                opened = os.fstat(handle.fileno())
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            journal = self._read_journal()
            try:
                current = os.stat(self.target)
            except FileNotFoundError:
                return None
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            if not os.path.samestat(opened, current):
                return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise StateError(
                f"{self.shown}: the state file is not UTF-8 ({error}); it was left untouched; "
                "restore it (e.g. from Git) or repair it by hand"
            ) from None
        del data  # a large state is parsed from text alone: its bytes need not stay in memory
        entries, sandbox = self._parse_snapshot(text)
        state = self._fold(entries, journal, sandbox=sandbox)
        self._checked_snapshot = _identity(opened)
        return state

    def _fold(
        self, entries: dict[str, StateEntry], journal: bytes, *, sandbox: bool = False
    ) -> State:
        # The journal never records the sandbox flag: only the snapshot does, so a journal
        # without a snapshot (a first apply killed, in versions before `create`) is real.
        for entry in self._parse_journal(journal):
            if isinstance(entry, str):  # a removal: the task was marked but never sent
                entries.pop(entry, None)
            else:
                entries[entry.hash] = entry
        return State._adopt(entries, sandbox=sandbox)

    def _read_journal(self) -> bytes:
        try:
            return self.journal_path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as error:
            raise StateError(f"{self.journal_path}: cannot read the journal: {error}") from error

    def _parse_snapshot(self, data: str | bytes) -> tuple[dict[str, StateEntry], bool]:
        """The snapshot's entries and its sandbox flag.

        `"sandbox": true` marks a sandbox state; a real state has no such field. Any other
        value (`false` included) is refused: no reconciler writes it, so it was typed by hand,
        and guessing which kind of state was meant could mix sandbox tasks with real ones.
        """
        where = self.shown
        untouched = "it was left untouched; restore it (e.g. from Git) or repair it by hand"
        try:
            document = json.loads(data)
        except json.JSONDecodeError as error:
            problem = "empty (truncated?)" if not data.strip() else f"not valid JSON: {error.msg}"
            raise StateError(
                f"{where}:{error.lineno}:{error.colno}: the state file is {problem}; {untouched}"
            ) from None
        except UnicodeDecodeError as error:
            raise StateError(
                f"{where}: the state file is not UTF-8 ({error}); {untouched}"
            ) from None
        if not isinstance(document, dict):
            raise StateError(f"{where}: the state file is not a JSON object; {untouched}")
        version = document.get("version")
        if type(version) is not int or version != STATE_VERSION:
            raise StateError(_version_message(where, version))
        unknown = sorted(set(document) - {"version", "tasks", "sandbox"})
        if unknown:
            raise StateError(
                f"{where}: unknown top-level field(s) {', '.join(unknown)} in a version "
                f"{STATE_VERSION} state file; {untouched}"
            )
        sandbox = document.get("sandbox", False)
        if "sandbox" in document and sandbox is not True:
            raise StateError(
                f"{where}: 'sandbox' must be true (a sandbox state) or absent (a real state), "
                f"not {json.dumps(sandbox)}; {untouched}"
            )
        tasks = document.get("tasks")
        if not isinstance(tasks, dict):
            raise StateError(f"{where}: 'tasks' must be a JSON object; {untouched}")
        entries: dict[str, StateEntry] = {}
        for key, fields in tasks.items():
            entries[key] = _parse_entry(key, fields, where, untouched)
        return entries, sandbox is True

    def _parse_journal(self, data: bytes) -> Iterator[StateEntry | str]:
        """Entries in journal order; a bare hash string stands for a removal."""
        where = str(self.journal_path)
        untouched = (
            "the journal was left untouched; entries before this line are intact, "
            "repair or remove the line by hand"
        )
        end = _journal_valid_end(data)
        lines = data[:end].split(b"\n")
        lines.pop()  # what follows the last "\n": empty, since `end` is a line end
        for number, line in enumerate(lines, start=1):
            at = f"{where}:{number}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as error:
                raise StateError(
                    f"{at}:{error.colno}: not valid JSON: {error.msg}; {untouched}"
                ) from None
            except UnicodeDecodeError as error:
                raise StateError(f"{at}: not UTF-8 ({error}); {untouched}") from None
            if not isinstance(fields, dict):
                raise StateError(f"{at}: a journal line must be a JSON object; {untouched}")
            key = fields.pop("hash", None)
            if not isinstance(key, str):
                raise StateError(f"{at}: the line has no task 'hash'; {untouched}")
            if fields == {"removed": True}:
                yield key
                continue
            yield _parse_entry(key, fields, where, untouched, number)

    def exists(self) -> bool:
        """Whether there is a state here: its snapshot, or a journal (a first apply killed)."""
        return os.path.exists(self.target) or os.path.exists(self.journal_path)

    # -- write ----------------------------------------------------------------------------------

    def create(self, *, sandbox: bool = False) -> State:
        """Write an empty state (for `reconciler init`, or a sandbox apply's first run).

        Takes the lock (re-entrant, so a caller may already hold it); refuses with
        StateExistsError if a snapshot or a journal is already there.
        """
        with self.lock(), self._mutex:
            if os.path.islink(self.target):  # where _link_target gave up: a loop
                raise StateError(
                    f"{self.shown}: a loop of symbolic links, not a state file; nothing was changed"
                )
            if os.path.lexists(self.target):
                raise StateExistsError(f"{self.shown}: a state already exists; nothing was changed")
            if os.path.lexists(self.journal_path):
                raise StateExistsError(
                    f"{self.journal_path}: the journal of a state already exists (an apply was "
                    "stopped before it compacted); nothing was changed"
                )
            state = State(sandbox=sandbox)
            self._replace_snapshot(_snapshot_bytes(state))
            return state

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        """Make `entries` durable in the journal: one write and one fsync for the whole batch.

        `removed` hashes are dropped from the state (write-ahead marks of tasks that were
        never sent, e.g. after Ctrl-C or a final error), after `entries` in the same batch.
        """
        if not entries and not removed:
            return
        batch = b"".join(_journal_line(entry) for entry in entries) + b"".join(
            _removal_line(hash) for hash in removed
        )
        with self._mutex:
            self._check_snapshot()
            try:
                # 0o666 and the umask, like the snapshot (os.open's default 0o777 would make
                # Git record the committed journal as executable); an existing one keeps its mode.
                fd = os.open(
                    self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666
                )
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot open the journal: {error}"
                ) from error
            try:
                size = os.fstat(fd).st_size
                # A crash mid-append leaves a torn last line; appending after it would glue
                # this batch onto it and make both unreadable.
                valid = _journal_tail_end(fd, size) if size else 0
                if valid != size:
                    os.ftruncate(fd, valid)
                try:
                    _write_all(fd, batch)
                    os.fsync(fd)
                except OSError:
                    # The caller will not send these tasks, so the journal must not keep them.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, valid)
                    raise
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot append to the journal: {error}"
                ) from error
            finally:
                os.close(fd)
            if not size:
                self._fsync_directory()

    def _check_snapshot(self) -> None:
        # A journal beside a snapshot this reconciler cannot read (a newer version, a corrupt
        # file) would be lost or misread, so read it whole once; then one stat per batch.
        try:
            current: _FileIdentity | None = _identity(os.stat(self.target))
        except FileNotFoundError:
            current = None
        except OSError as error:
            raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
        if current != self._checked_snapshot:
            self.load()

    def compact(self) -> State:
        """Fold the journal into the snapshot, then remove the journal; returns the folded State.

        A crash between the two leaves a journal that is already in the snapshot: replaying it
        again changes nothing, because every line is a whole entry.
        """
        with self._mutex:
            state = self.load()
            if not self.journal_path.exists():
                return state
            data = _snapshot_bytes(state)
            try:
                current = self.target.read_bytes()
            except FileNotFoundError:
                current = None
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            if current != data and (current is not None or state.entries):
                self._replace_snapshot(data)
            self._remove_leftovers()
            try:
                os.unlink(self.journal_path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot remove the journal: {error}"
                ) from error
            self._fsync_directory()
            return state

    def write(self, state: State) -> None:
        """Replace the snapshot with `state` (for `state rm` and `mark-submitted`).

        The journal is folded in first, so no journal line can later undo this write; a state
        file this reconciler cannot read is refused, never overwritten.
        """
        with self._mutex:
            current = self.compact()
            if current.sandbox != state.sandbox and self.exists():
                kinds = ("a real", "a sandbox")
                raise StateError(
                    f"{self.shown} is {kinds[current.sandbox]} state; it cannot be replaced by "
                    f"{kinds[state.sandbox]} state (sandbox and real tasks never mix); "
                    "nothing was changed"
                )
            self._replace_snapshot(_snapshot_bytes(state))

    def _replace_snapshot(self, data: bytes) -> None:
        temporary = Path(f"{self.target}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                mode = stat.S_IMODE(os.stat(self.target).st_mode)
            except FileNotFoundError:
                mode = None
            # 0o666 and the umask, as any editor would create it: it is a file users commit.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
            try:
                if mode is not None and hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.target)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(error, OSError):
                raise StateError(f"{self.shown}: cannot write the state file: {error}") from error
            raise
        # What was just written is valid by construction: appends need not read it back.
        try:
            self._checked_snapshot = _identity(os.stat(self.target))
        except OSError:
            self._checked_snapshot = _UNCHECKED
        self._fsync_directory()

    def _remove_leftovers(self) -> None:
        # Temporary files of writers killed mid-write. Only lock holders write, and the caller
        # holds the lock, so none of these is still being written.
        leftover = re.compile(re.escape(self.target.name) + r"(\.lock\.info)?\.[0-9a-f]{8}\.tmp")
        with contextlib.suppress(OSError):
            for name in os.listdir(self.target.parent):
                if leftover.fullmatch(name):
                    with contextlib.suppress(OSError):
                        os.unlink(self.target.parent / name)

    def _fsync_directory(self) -> None:
        # Makes a rename, a new journal or a removed journal survive a power cut. Windows cannot
        # open a directory, and NTFS journals its metadata anyway.
        if os.name != "posix":
            return
        directory = self.target.parent
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise StateError(f"{directory}: cannot sync the state's directory: {error}") from error


def _version_message(where: str, version: object) -> str:
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        return (
            f"{where}: the state file is version {version}, written by a newer reconciler; "
            f"this reconciler understands version {STATE_VERSION} only. Upgrade reconciler; "
            "the file was left untouched"
        )
    return (
        f"{where}: the state file has version {json.dumps(version)}; this reconciler understands "
        f"version {STATE_VERSION} only; the file was left untouched"
    )


def _parse_entry(
    key: str, fields: object, file: str, untouched: str, line: int | None = None
) -> StateEntry:
    """The entry `fields` describe, or a StateError naming the file and the line (or task)."""
    if not isinstance(fields, dict):
        raise StateError(f"{_where(file, line, key)}: must be a JSON object; {untouched}")
    names = fields.keys()
    if not (names >= _REQUIRED_FIELDS and names <= _ALLOWED_FIELDS):
        missing = ", ".join(sorted(_REQUIRED_FIELDS - names))
        unknown = ", ".join(sorted(names - _ALLOWED_FIELDS))
        problems = [f"missing {missing}"] if missing else []
        problems += [f"unknown field(s) {unknown}"] if unknown else []
        raise StateError(f"{_where(file, line, key)}: {'; '.join(problems)}; {untouched}")
    try:
        # Positional: this runs once per task on every load, and keywords cost time.
        entry = StateEntry(
            key,
            fields["status"],
            fields["name"],
            fields["source"],
            fields["request"],
            fields["updatedAt"],
            fields.get("requestId"),
            fields.get("submittedAt"),
        )
        # The hash is the task's identity: a request that no longer hashes to it would be
        # trusted as the clip already sent (or re-sent as a new one). Hashing is most of the
        # cost of a load after parsing (about 7 us per task); it is done once, here.
        actual = request_hash(entry.request)
    except ValueError as error:  # UnicodeEncodeError too: a lone surrogate cannot be hashed
        raise StateError(f"{_where(file, line, key)}: {error}; {untouched}") from None
    if actual != key:
        raise StateError(
            f"{_where(file, line, key)}: the request was edited by hand: its sha256 is "
            f"{actual[:12]}..., not the task's hash (a task's hash is the sha256 of its "
            f"request: change a clip in its manifest, never in the state); {untouched}"
        )
    return entry


def _where(file: str, line: int | None, key: str) -> str:
    return f"{file}: task {key}" if line is None else f"{file}:{line}"


def _entry_fields(entry: StateEntry) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": entry.name,
        "request": entry.request,
        "source": entry.source,
        "status": entry.status.value,
        "updatedAt": entry.updated_at,
    }
    if entry.request_id is not None:
        fields["requestId"] = entry.request_id
    if entry.submitted_at is not None:
        fields["submittedAt"] = entry.submitted_at
    return fields


def _document(state: State) -> dict[str, Any]:
    tasks = {key: _entry_fields(entry) for key, entry in state.entries.items()}
    document: dict[str, Any] = {"version": STATE_VERSION, "tasks": tasks}
    if state.sandbox:  # only then: a real state's file stays what it always was
        document["sandbox"] = True
    return document


def _compact(value: object) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_plain_json,
    )


def _plain_json(value: object) -> object:
    # json only knows dict; a request may be any Mapping (e.g. a read-only view).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in the state (not JSON)")


def _snapshot_bytes(state: State) -> bytes:
    text = json.dumps(
        _document(state),
        sort_keys=True,
        indent=2,
        ensure_ascii=False,
        allow_nan=False,
        default=_plain_json,
    )
    return (text + "\n").encode("utf-8")


def _journal_line(entry: StateEntry) -> bytes:
    if not isinstance(entry, StateEntry):
        raise TypeError(f"append takes StateEntry values, not {type(entry).__name__}")
    fields = _entry_fields(entry)
    fields["hash"] = entry.hash
    try:
        # Serialised exactly as the snapshot will be (UTF-8, no NaN), so whatever the journal
        # accepts, a later compaction can write.
        line = (_compact(fields) + "\n").encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"task {entry.hash}: request cannot be stored: {error}") from error
    # And whatever it accepts, a later load accepts: the hash is the request's.
    if _recorded_hash(entry.request) != entry.hash:
        raise ValueError(
            f"task {entry.hash}: the hash is not the sha256 of its request "
            f"({_recorded_hash(entry.request)}); nothing was written"
        )
    return line


def _recorded_hash(request: Mapping[str, Any]) -> str:
    """request_hash of `request` as the state will read it back (any Mapping becomes a dict)."""
    try:
        return request_hash(request)
    except TypeError:  # e.g. a read-only view, which json cannot dump without help
        return request_hash(json.loads(_compact(request)))


def _removal_line(hash: str) -> bytes:
    if not _HASH.fullmatch(hash):
        raise ValueError(f"not a task hash: {hash!r}")
    return (
        json.dumps({"hash": hash, "removed": True}, sort_keys=True, separators=(",", ":")).encode()
        + b"\n"
    )


def _journal_tail_end(fd: int, size: int) -> int:
    """`_journal_valid_end` of the journal open at `fd`, reading only as much of its end as needed."""
    chunk = _TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        os.lseek(fd, start, os.SEEK_SET)  # not os.pread: Windows has none
        tail = os.read(fd, size - start)
        last = tail.rfind(b"\n")
        if start == 0 or (last > 0 and tail.rfind(b"\n", 0, last) >= 0):
            return start + _journal_valid_end(tail)
        chunk *= 2


def _journal_valid_end(data: bytes) -> int:
    """Where the readable lines of journal bytes `data` end.

    `data` is the whole journal, or a tail of it that holds the newline before its last line.

    What follows is the remains of an append whose fsync never returned, so its caller never
    acted on it: the bytes after the last newline, and a last line that is not JSON (a power cut
    can leave a block of zeros where data should be).
    """
    end = data.rfind(b"\n") + 1
    if end == 0:
        return 0
    start = data.rfind(b"\n", 0, end - 1) + 1
    try:
        json.loads(data[start:end])
    except ValueError:
        return start
    return end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
