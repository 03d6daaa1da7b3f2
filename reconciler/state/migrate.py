"""Copy a state between homes (file <-> database), under both locks, verified entry by entry."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.state import StateBackend
from reconciler.state.model import State, StateError, TaskStatus, entry_fields


@dataclass(frozen=True)
class Migration:
    """What was copied: counts by status, and whether the states were sandbox ones."""

    tasks: int
    submitted: int
    pending: int
    sandbox: bool


def migrate(source: StateBackend, target: StateBackend) -> Migration:
    """Copy every entry of `source` into `target`, which must be missing or empty.

    Both locks are held throughout, so no apply writes either side meanwhile. The target is
    read back and compared entry by entry (every field) before this returns. `source` is only
    read, never written: a journal beside a file state is folded into the copy, not into the
    source, so the source is left exactly as it was (to retire, or to migrate back to).
    """
    if source.shown == target.shown:
        raise StateError(f"{source.shown}: the source and the target are the same state")
    with source.lock(), target.lock():
        if not source.exists():
            raise StateError(f"there is no state at {source.shown}; nothing was changed")
        state = source.load()
        if target.exists():
            present = target.load()
            held = len(present)
            if held:
                raise StateError(
                    f"{target.shown} already holds {held} task(s); migrate only into a new or "
                    "empty state; nothing was changed"
                )
            kind = present.sandbox
            if kind != state.sandbox:
                raise StateError(
                    f"{target.shown} is an empty {'sandbox' if kind else 'real'} state; the "
                    f"source is a {'sandbox' if state.sandbox else 'real'} one (sandbox and real "
                    "tasks never mix); nothing was changed"
                )
        else:
            target.create(sandbox=state.sandbox)
        target.write(state)
        _verify(state, target.load(), target.shown)
    submitted = sum(1 for e in state.entries.values() if e.status is TaskStatus.SUBMITTED)
    return Migration(len(state), submitted, len(state) - submitted, state.sandbox)


def _verify(expected: State, copied: State, shown: str) -> None:
    if copied.sandbox != expected.sandbox:
        raise StateError(f"{shown}: the copy's sandbox flag differs from the source's")
    missing = sorted(set(expected.entries) - set(copied.entries))
    extra = sorted(set(copied.entries) - set(expected.entries))
    differing = sorted(
        key
        for key, entry in expected.entries.items()
        if key in copied.entries and entry_fields(copied.entries[key]) != entry_fields(entry)
    )
    if not (missing or extra or differing) and (
        dict(copied.recordings) != dict(expected.recordings)
        or sorted(c.id for c in copied.unmatched) != sorted(c.id for c in expected.unmatched)
    ):
        raise StateError(
            f"{shown}: the copy's recording evidence differs from the source's "
            f"({sum(map(len, copied.recordings.values()))} recordings and "
            f"{len(copied.unmatched)} unmatched callbacks copied, "
            f"{sum(map(len, expected.recordings.values()))} and {len(expected.unmatched)} "
            "expected); do not use it"
        )
    if missing or extra or differing:
        raise StateError(
            f"{shown}: the copy does not match the source ({len(missing)} missing, "
            f"{len(extra)} extra, {len(differing)} different, e.g. "
            f"{(missing + extra + differing)[0][:12]}); do not use it"
        )
