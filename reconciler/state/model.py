"""The state as values: each task's recorded outcome, and the checks every backend shares."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, cast

from reconciler.identity import request_hash
from reconciler.record_times import UTC_TIME

STATE_VERSION = 2
# Every version this reconciler reads: 1 (before recording evidence) is read as it is and
# written as 2 by the next write (what 2 adds, a version 1 state simply does not have).
READABLE_VERSIONS = (1, 2)
MIN_PREFIX = 6
# The taskExternalId apply sends for a manifest that sets none: `rc-` and the first 32 hex
# digits of the task's hash (a function of the hash, so a re-plan sends the same one).
GENERATED_ID_PREFIX = "rc-"
GENERATED_ID_DIGITS = 32

_HASH = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_REQUIRED_FIELDS = frozenset({"name", "request", "source", "status", "updatedAt"})
_ALLOWED_FIELDS = _REQUIRED_FIELDS | {"requestId", "submittedAt", "taskExternalId"}


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
    # The taskExternalId sent with the request (JD Cloud echoes it in record callbacks). None
    # for a task recorded before reconciler sent one (a version 1 state), unless the request
    # itself sets one: `sent_external_id` says what the service was given.
    external_id: str | None = None

    @property
    def sent_external_id(self) -> str | None:
        """The taskExternalId the service was sent: the one recorded, else the request's own."""
        if self.external_id is not None:
            return self.external_id
        body = self.request.get("body")
        own = body.get("taskExternalId") if isinstance(body, Mapping) else None
        return own if isinstance(own, str) else None

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
            and (self.external_id is None or isinstance(self.external_id, str))
        ):
            if status.__class__ is not TaskStatus:
                object.__setattr__(self, "status", _STATUSES[status])
            return
        raise ValueError(_entry_problem({name: getattr(self, name) for name in self.__slots__}))


def _is_timestamp(value: object) -> bool:
    return isinstance(value, str) and UTC_TIME.fullmatch(value) is not None


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
    for name in ("request_id", "external_id"):
        if not isinstance(fields[name], str | None):
            return f"{name} must be a string or None, not {fields[name]!r}"
    for name in ("updated_at", "submitted_at"):
        if not _is_timestamp(fields[name]) and (name == "updated_at" or fields[name] is not None):
            return f"{name} must be UTC 'YYYY-MM-DDTHH:MM:SSZ', not {fields[name]!r}"
    raise AssertionError("an entry that failed its check passed every single test")


_STATUSES: dict[str, TaskStatus] = {status.value: status for status in TaskStatus}


class EvidenceSource(StrEnum):
    """Where evidence of a recording came from: JD Cloud's callback, or the bucket itself."""

    CALLBACK = "callback"
    STORAGE = "storage"


SUCCESS = "success"
# A storage check that found no file by the deadline: evidence of absence, not a failure the
# service reported (a later callback or check can still find the file).
MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Recording:
    """Evidence about one file of a task: what a callback said, or what the bucket holds.

    `evidence` identifies it (the sha256 of the callback's body, or of the object's place), so
    the same callback delivered twice, or the same object found twice, is one record.
    `file_size` and `duration` are kept as the service gave them (their units are not
    documented consistently).
    """

    evidence: str
    source: EvidenceSource
    format: str
    status: str
    received_at: str
    download_url: str | None = None
    file_size: str | None = None
    duration: str | None = None

    def __post_init__(self) -> None:
        source: object = self.source
        # One combined test first: this runs for every file verify finds and every load.
        if (
            isinstance(self.evidence, str)
            and _HASH.fullmatch(self.evidence)
            and isinstance(source, str)
            and source in _SOURCES
            and isinstance(self.format, str)
            and isinstance(self.status, str)
            and _is_timestamp(self.received_at)
            and (self.download_url is None or isinstance(self.download_url, str))
            and (self.file_size is None or isinstance(self.file_size, str))
            and (self.duration is None or isinstance(self.duration, str))
        ):
            if source.__class__ is not EvidenceSource:
                object.__setattr__(self, "source", _SOURCES[str(source)])
            return
        # One of the tests above failed: find which, and say so.
        if not (isinstance(self.evidence, str) and _HASH.fullmatch(self.evidence)):
            raise ValueError(f"evidence must be a sha256 (64 hex digits), not {self.evidence!r}")
        if not isinstance(source, str) or source not in _SOURCES:
            raise ValueError(f"unknown evidence source {source!r} (known: {', '.join(_SOURCES)})")
        for name in ("format", "status"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, not {getattr(self, name)!r}")
        if not _is_timestamp(self.received_at):
            raise ValueError(
                f"receivedAt must be UTC 'YYYY-MM-DDTHH:MM:SSZ', not {self.received_at!r}"
            )
        for name in ("download_url", "file_size", "duration"):
            if not isinstance(getattr(self, name), str | None):
                raise ValueError(f"{name} must be a string, not {getattr(self, name)!r}")

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "evidence": self.evidence,
            "format": self.format,
            "receivedAt": self.received_at,
            "source": self.source.value,
            "status": self.status,
        }
        for key, value in (
            ("downloadUrl", self.download_url),
            ("fileSize", self.file_size),
            ("duration", self.duration),
        ):
            if value is not None:
                fields[key] = value
        return fields

    @classmethod
    def from_json(cls, fields: object) -> Recording:
        """A Recording from its stored form; ValueError says what is wrong."""
        if not isinstance(fields, dict):
            raise ValueError(f"a recording must be a JSON object, not {fields!r}")
        unknown = sorted(set(fields) - _RECORDING_FIELDS)
        missing = sorted(_RECORDING_REQUIRED - set(fields))
        if unknown or missing:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"recording: {'; '.join(problems)}")
        return cls(
            fields["evidence"],
            fields["source"],
            fields["format"],
            fields["status"],
            fields["receivedAt"],
            fields.get("downloadUrl"),
            fields.get("fileSize"),
            fields.get("duration"),
        )


_SOURCES: dict[str, EvidenceSource] = {source.value: source for source in EvidenceSource}
_RECORDING_REQUIRED = frozenset({"evidence", "format", "receivedAt", "source", "status"})
_RECORDING_FIELDS = _RECORDING_REQUIRED | {"downloadUrl", "fileSize", "duration"}


@dataclass(frozen=True, slots=True)
class UnmatchedCallback:
    """A callback no task could be told from (none, or several): kept, never dropped or guessed."""

    id: str  # sha256 of the body as received: the same callback twice is kept once
    received_at: str
    reason: str
    body: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not (isinstance(self.id, str) and _HASH.fullmatch(self.id)):
            raise ValueError(f"id must be a sha256 (64 hex digits), not {self.id!r}")
        if not _is_timestamp(self.received_at):
            raise ValueError(
                f"receivedAt must be UTC 'YYYY-MM-DDTHH:MM:SSZ', not {self.received_at!r}"
            )
        if not isinstance(self.reason, str):
            raise ValueError(f"reason must be a string, not {self.reason!r}")
        if not isinstance(self.body, Mapping):
            raise ValueError(f"callback must be a JSON object, not {self.body!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "callback": self.body,
            "id": self.id,
            "reason": self.reason,
            "receivedAt": self.received_at,
        }

    @classmethod
    def from_json(cls, fields: object) -> UnmatchedCallback:
        if not isinstance(fields, dict):
            raise ValueError(f"an unmatched callback must be a JSON object, not {fields!r}")
        if set(fields) != {"callback", "id", "reason", "receivedAt"}:
            raise ValueError(
                "an unmatched callback has exactly callback, id, reason and receivedAt, not "
                + ", ".join(sorted(fields))
            )
        return cls(fields["id"], fields["receivedAt"], fields["reason"], fields["callback"])


class RecordingState(StrEnum):
    """What the evidence says of a submitted task's file(s), as every output shows it."""

    RECORDED = "recorded"  # every format asked for reported success
    FAILED = "recording failed"  # the service reported another status for some format
    MISSING = "missing"  # the bucket was checked after the grace period: no file
    AWAITING = "awaiting recording"  # accepted; no (complete) evidence yet


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    """A task's recording as the evidence tells it; `settled`: a `pending` task that evidence
    shows the service processed (never to be sent again; its requestId stays unknown)."""

    state: RecordingState | None  # None: a `pending` task with no evidence (outcome unknown)
    settled: bool
    recordings: tuple[Recording, ...]

    @property
    def settled_by(self) -> EvidenceSource | None:
        if not self.settled:
            return None
        found = [r.source for r in self.recordings if r.status != MISSING]
        return (
            EvidenceSource.CALLBACK if EvidenceSource.CALLBACK in found else EvidenceSource.STORAGE
        )

    @property
    def words(self) -> str:
        """`recorded`, `awaiting recording`, ..., with `pending settled by callback` first."""
        if self.state is None:
            return "pending"
        if self.settled:
            assert self.settled_by is not None
            return f"pending settled by {self.settled_by.value}; {self.state.value}"
        return self.state.value

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "state": self.state.value if self.state is not None else None,
            "settled": self.settled,
            "outputs": [recording.to_json() for recording in self.recordings],
        }
        if self.settled_by is not None:
            document["settledBy"] = self.settled_by.value
        return document


def asked_formats(request: Mapping[str, Any]) -> tuple[str, ...]:
    """The file formats a task's request asks for (`flv;mp4` -> ("flv", "mp4"))."""
    body = request.get("body")
    types = body.get("recordFileType") if isinstance(body, Mapping) else None
    return _split_types(types) if isinstance(types, str) else ()


@functools.lru_cache(maxsize=256)
def _split_types(types: str) -> tuple[str, ...]:
    return tuple(part for part in types.lower().split(";") if part)


def summarise_recording(entry: StateEntry, recordings: Sequence[Recording]) -> RecordingSummary:
    """What the evidence says of `entry`'s recording (pure; outputs call it per task)."""
    evidence = [r for r in recordings if r.status != MISSING]
    settled = entry.status is TaskStatus.PENDING and bool(evidence)
    if entry.status is TaskStatus.PENDING and not evidence:
        return RecordingSummary(None, False, tuple(recordings))
    succeeded = {r.format.lower() for r in evidence if r.succeeded}
    asked = asked_formats(entry.request)
    if asked and succeeded.issuperset(asked):
        state = RecordingState.RECORDED
    elif any(not r.succeeded for r in evidence):
        state = RecordingState.FAILED
    elif any(r.status == MISSING for r in recordings):
        state = RecordingState.MISSING
    else:
        state = RecordingState.AWAITING
    return RecordingSummary(state, settled, tuple(recordings))


@dataclass(frozen=True)
class State:
    """Every task the state knows, by hash, and the evidence of their recordings. A value:
    changes return a new State.

    `sandbox`: the state records tasks sent to the local sandbox, never to JD Cloud (a real
    apply must not trust it, and a sandbox apply must not write into a real one).
    `recordings`: evidence per task hash (callbacks, the bucket), kept apart from the entries
    so that nothing apply records can erase it. `unmatched`: callbacks no task could be told
    from, kept with the reason.
    """

    entries: Mapping[str, StateEntry] = field(default_factory=dict)
    sandbox: bool = False
    recordings: Mapping[str, tuple[Recording, ...]] = field(default_factory=dict)
    unmatched: tuple[UnmatchedCallback, ...] = ()

    def __post_init__(self) -> None:
        entries = dict(self.entries)
        for key, entry in entries.items():
            if key != entry.hash:
                raise ValueError(f"entry for {entry.hash} is filed under {key!r}")
        # Read-only, so a State shared between plan and apply cannot change under either.
        object.__setattr__(self, "entries", MappingProxyType(entries))
        object.__setattr__(
            self,
            "recordings",
            MappingProxyType({k: tuple(v) for k, v in self.recordings.items() if v}),
        )
        object.__setattr__(self, "unmatched", tuple(self.unmatched))

    def __len__(self) -> int:
        return len(self.entries)

    def requests(self) -> dict[str, Mapping[str, Any]]:
        """Each task's recorded request by hash (for tasks.load_tasks to share, not copy)."""
        return {key: entry.request for key, entry in self.entries.items()}

    def get(self, hash: str) -> StateEntry | None:
        return self.entries.get(hash)

    def recordings_of(self, hash: str) -> tuple[Recording, ...]:
        return self.recordings.get(hash, ())

    def recording(self, hash: str) -> RecordingSummary | None:
        """What the evidence says of the task `hash` (None: no such task)."""
        entry = self.entries.get(hash)
        if entry is None:
            return None
        return summarise_recording(entry, self.recordings.get(hash, ()))

    def settled(self, hash: str) -> bool:
        """Whether `hash` is a `pending` task that evidence shows the service processed."""
        entry = self.entries.get(hash)
        return (
            entry is not None
            and entry.status is TaskStatus.PENDING
            and any(r.status != MISSING for r in self.recordings.get(hash, ()))
        )

    def fingerprint(self) -> str:
        """sha256 of the tasks' canonical compact JSON: equal tasks, equal fingerprints.

        Evidence (recordings, unmatched callbacks) is left out: it arrives at any time (the
        receiver writes it while a saved plan waits for review) and never makes a task sent
        again, so a plan made before it is still the plan. Hashed entry by entry (the same
        bytes as the tasks dumped with sorted keys), so a large state is never held in memory
        a second time as one string.
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
        return State._adopt(
            merged, sandbox=self.sandbox, recordings=self.recordings, unmatched=self.unmatched
        )

    def without(self, hash: str) -> State:
        """The state without the task `hash` and its evidence (`state rm`)."""
        remaining = self._copy()
        remaining.pop(hash, None)
        recordings = {k: v for k, v in self.recordings.items() if k != hash}
        return State._adopt(
            remaining, sandbox=self.sandbox, recordings=recordings, unmatched=self.unmatched
        )

    def with_evidence(
        self,
        recordings: Iterable[tuple[str, Recording]] = (),
        unmatched: Iterable[UnmatchedCallback] = (),
    ) -> State:
        """The state with more evidence; what it already holds (same `evidence` or id) stays once."""
        merged = dict(self.recordings)
        for hash, recording in recordings:
            held = merged.get(hash, ())
            if all(r.evidence != recording.evidence for r in held):
                merged[hash] = (*held, recording)
        kept = list(self.unmatched)
        ids = {callback.id for callback in kept}
        for callback in unmatched:
            if callback.id not in ids:
                kept.append(callback)
                ids.add(callback.id)
        return State._adopt(
            dict(self.entries), sandbox=self.sandbox, recordings=merged, unmatched=tuple(kept)
        )

    # apply records outcomes one task at a time: a change must not cost a pass over every entry.
    @classmethod
    def _adopt(
        cls,
        entries: dict[str, StateEntry],
        *,
        sandbox: bool = False,
        recordings: Mapping[str, tuple[Recording, ...]] | None = None,
        unmatched: tuple[UnmatchedCallback, ...] = (),
    ) -> State:
        """A State of `entries`, a dict keyed by hash that nothing else holds."""
        state = object.__new__(cls)
        object.__setattr__(state, "entries", MappingProxyType(entries))
        object.__setattr__(state, "sandbox", sandbox)
        object.__setattr__(state, "recordings", MappingProxyType(dict(recordings or {})))
        object.__setattr__(state, "unmatched", tuple(unmatched))
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
            fields.get("taskExternalId"),
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
    if entry.external_id is not None:
        fields["taskExternalId"] = entry.external_id
    return fields


def generated_external_id(hash: str) -> str:
    """The taskExternalId apply sends for a task whose manifest sets none."""
    return GENERATED_ID_PREFIX + hash[:GENERATED_ID_DIGITS]


def external_id_to_send(hash: str, request: Mapping[str, Any]) -> str:
    """The taskExternalId the task `hash` is sent with: its manifest's own, else ours."""
    body = request.get("body")
    own = body.get("taskExternalId") if isinstance(body, Mapping) else None
    return own if isinstance(own, str) else generated_external_id(hash)


def compact_json(value: object) -> str:
    """One journal line's JSON: sorted keys, no whitespace, UTF-8 text, no NaN."""
    return _COMPACT.encode(value)


def plain_json(value: object) -> object:
    # json only knows dict; a request may be any Mapping (e.g. a read-only view).
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in the state (not JSON)")


# Built once: json.dumps with options builds an encoder per call (a quarter of the time of a
# journal line). Encoders keep no state between calls, so threads may share it.
_COMPACT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=plain_json
)


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
