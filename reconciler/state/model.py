"""The state as values: each task's recorded outcome, and the checks every backend shares."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, cast

from reconciler.tasks import request_hash

STATE_VERSION = 1
MIN_PREFIX = 6

_HASH = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_REQUIRED_FIELDS = frozenset({"name", "request", "source", "status", "updatedAt"})
_ALLOWED_FIELDS = _REQUIRED_FIELDS | {"requestId", "submittedAt"}


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
    run_url: str | None = None  # the CI run, where the holder's CI said which one it is

    def __str__(self) -> str:
        run = f" ({self.run_url})" if self.run_url else ""
        return f"pid {self.pid} on host {self.host} since {self.since}{run}"


def holder_of_this_process() -> LockHolder:
    """This process as a lock holder: host, pid, now, and the CI run it belongs to, if any."""
    return LockHolder(
        host=socket.gethostname(),
        pid=os.getpid(),
        since=utc_timestamp(datetime.now(UTC)),
        run_url=ci_run_url(os.environ),
    )


def ci_run_url(environ: Mapping[str, str]) -> str | None:
    """The URL of the CI run this process belongs to, from the CI's own variables."""
    github = [
        environ.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    ]
    if all(github):
        server, repository, run = github
        return f"{server}/{repository}/actions/runs/{run}"
    # GitLab's job URL; Jenkins (and TeamCity, Buildkite's BUILDKITE_BUILD_URL aside) BUILD_URL.
    for name in ("CI_JOB_URL", "BUILDKITE_BUILD_URL", "BUILD_URL"):
        if environ.get(name):
            return environ[name]
    return None


class StateLocationError(ValueError):
    """A `--state` value that names no state at all (e.g. a malformed URI): a usage error."""


class StateExistsError(StateError):
    """`create` found a state (its snapshot or its journal) already there; it changed nothing."""


class StateLockedError(StateError):
    """Another process held the state lock for longer than the lock timeout."""

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder

    @classmethod
    def timed_out(
        cls, shown: str, holder: LockHolder | None, waited: float, unknown: str
    ) -> StateLockedError:
        """The error of a waiter that gave up; `unknown` stands for a holder with no record."""
        return cls(
            f"{shown} is locked by {holder or unknown}; gave up after waiting {waited:g} s. "
            "Another reconciler is using this state: wait for it to finish, or raise the lock "
            "timeout",
            holder,
        )


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
            chunk = compact_json(key) + ":" + compact_json(entry_fields(self.entries[key]))
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


def parse_entry(
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


def entry_fields(entry: StateEntry) -> dict[str, Any]:
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


def compact_json(value: object) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=plain_json,
    )


def plain_json(value: object) -> object:
    # json only knows dict; a request may be any Mapping (e.g. a read-only view).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in the state (not JSON)")


def recorded_hash(request: Mapping[str, Any]) -> str:
    """request_hash of `request` as the state will read it back (any Mapping becomes a dict)."""
    try:
        return request_hash(request)
    except TypeError:  # e.g. a read-only view, which json cannot dump without help
        return request_hash(json.loads(compact_json(request)))


def is_task_hash(value: object) -> bool:
    """Whether `value` is a task's hash: 64 lower-case hex digits (a sha256)."""
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


def require_own_hash(entry: StateEntry) -> None:
    """Refuse an entry whose hash is not its request's: a later load would refuse the state."""
    actual = recorded_hash(entry.request)
    if actual != entry.hash:
        raise ValueError(
            f"task {entry.hash}: the hash is not the sha256 of its request ({actual}); "
            "nothing was written"
        )
