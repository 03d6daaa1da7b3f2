"""The state: what every task's outcome is, behind one interface with two homes (file, database).

Plan, apply and the CLI see `StateBackend` only. Which backend a `--state` value means is
decided in one place, `open_state`: a `postgresql://` (or `postgres://`) URI is a database
state (reconciler/state/postgres.py, imported only then), anything else a file
(reconciler/state/file.py). As Terraform's state managers, a backend is a reader (load the
state), a locker (one applier at a time) and a persister (make each outcome durable).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reconciler.state.file import StateStore
from reconciler.state.model import (
    MIN_PREFIX,
    STATE_VERSION,
    EvidenceSource,
    LockHolder,
    Recording,
    RecordingState,
    RecordingSummary,
    State,
    StateEntry,
    StateError,
    StateExistsError,
    StateLocationError,
    StateLockedError,
    TaskStatus,
    UnmatchedCallback,
    utc_timestamp,
)

__all__ = [
    "MIN_PREFIX",
    "STATE_VERSION",
    "EvidenceSource",
    "LockHolder",
    "Recording",
    "RecordingState",
    "RecordingSummary",
    "State",
    "StateBackend",
    "StateEntry",
    "StateError",
    "StateExistsError",
    "StateLocationError",
    "StateLockedError",
    "StateStore",
    "TaskStatus",
    "UnmatchedCallback",
    "is_database_location",
    "open_state",
    "utc_timestamp",
]

if TYPE_CHECKING:
    from reconciler.callbacks import Callback, StoredCallback

DATABASE_SCHEMES = ("postgresql://", "postgres://")


class StateReader(Protocol):
    """Read the state. `shown` names it in messages (never with a password)."""

    shown: str

    def exists(self) -> bool:
        """Whether the state was created (a real apply refuses one that was not)."""
        ...

    def load(self) -> State:
        """Every entry, as one consistent snapshot; a state not created is an empty one."""
        ...

    def missing_reason(self) -> str:
        """Why the state might not be there, for the message that refuses to apply."""
        ...

    def created_hint(self) -> str:
        """What to do with a state just created, for `reconciler init`."""
        ...


class StateLocker(Protocol):
    """One applier at a time; a waiter gives up after `lock_timeout` naming the holder."""

    lock_timeout: float

    def lock(self) -> AbstractContextManager[None]:
        """Hold the state's lock (re-entrant); StateLockedError names the holder on timeout."""
        ...


class StatePersister(Protocol):
    """Make outcomes durable. The caller holds the lock for every write."""

    def create(self, *, sandbox: bool = False) -> State:
        """Create an empty state; StateExistsError if there is one."""
        ...

    def claim(self, entries: Sequence[StateEntry], *, seen: State | None = None) -> frozenset[str]:
        """Write-ahead: make these `pending` marks durable before their requests are sent.

        `seen` is the state the plan was made against. Returns the hashes claimed: a task
        whose entry is no longer what `seen` holds (another applier recorded it meanwhile) is
        not claimed, and must not be sent.
        """
        ...

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        """Record outcomes: `entries` replace theirs, `removed` marks go (never sent)."""
        ...

    def compact(self) -> State:
        """Bring what apply recorded into the state's committed form; returns the state."""
        ...

    def write(self, state: State) -> None:
        """Replace the whole state (state rm, mark-submitted, migrate)."""
        ...


class EvidenceRecorder(Protocol):
    """Record evidence of recordings (DESIGN §7): the receiver and verify call these.

    Neither needs the apply lock held by the caller: the file state takes its lock for one
    short hold per call; the database state commits one transaction without the lock.
    """

    def record_callback(self, callback: Callback, received_at: str) -> StoredCallback:
        """Match `callback` against the state's tasks and make the outcome durable."""
        ...

    def record_evidence(self, recordings: Sequence[tuple[str, Recording]]) -> int:
        """Add evidence for tasks by hash; returns how many records were new."""
        ...


class StateBackend(StateReader, StateLocker, StatePersister, EvidenceRecorder, Protocol):
    """A state's home. Close it (or use it as a context manager) when done."""

    def close(self) -> None: ...

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: a call still waiting on the state's home ends within a second.

        Safe from any thread (apply calls it while its main thread may be in such a call).
        """
        ...

    def __enter__(self) -> StateBackend: ...

    def __exit__(self, *exc_info: object) -> None: ...


def is_database_location(location: str) -> bool:
    """Whether a `--state` value names a database state rather than a file."""
    return location.lower().startswith(DATABASE_SCHEMES)


def open_state(location: str, *, lock_timeout: float = 60.0) -> StateBackend:
    """The backend `location` names; nothing is read or connected yet.

    Raises StateLocationError for a value that cannot name a state (a malformed URI).
    """
    if is_database_location(location):
        from reconciler.state.postgres import PostgresStore

        return PostgresStore(location, lock_timeout=lock_timeout)
    if not location:
        raise StateLocationError("the state's path is empty")
    return StateStore(Path(location), lock_timeout=lock_timeout)
