"""One in-process apply against a running sandbox, with the real state store or a stubbed one.

Run by bench/run.py (case `bookkeeping`) in a fresh process per measurement:

    python bookkeeping.py DIR --endpoint URL --state FILE [--stub] [--concurrency N]
    (credentials in JDCLOUD_ACCESS_KEY / JDCLOUD_SECRET_KEY)

Manifests are loaded and planned before the clock starts; what is timed is what apply does
with the state: take the lock, `apply_plan` (write-ahead journal appends around every request),
and the final compaction. `--stub` replaces every state write with nothing, which is the
difference the case measures. Prints one JSON object with the time and the write counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.apply import OutcomeKind, apply_plan
from reconciler.client import LiveClient
from reconciler.plan import make_plan
from reconciler.signing import Credentials
from reconciler.state import State, StateEntry, StateStore
from reconciler.tasks import load_tasks


class CountingStore(StateStore):
    """The real store, counting appends and the seconds spent inside state calls."""

    appends = 0
    entries = 0
    seconds_inside = 0.0

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        started = time.perf_counter()
        super().append(entries, removed=removed)
        self.seconds_inside += time.perf_counter() - started
        if entries or removed:
            self.appends += 1
            self.entries += len(entries) + len(removed)

    def compact(self) -> State:
        started = time.perf_counter()
        state = super().compact()
        self.seconds_inside += time.perf_counter() - started
        return state

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        started = time.perf_counter()
        with super().lock():
            self.seconds_inside += time.perf_counter() - started
            yield


class StubStore(CountingStore):
    """State writes stubbed out: nothing is locked, journalled or compacted."""

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        if entries or removed:
            self.appends += 1
            self.entries += len(entries) + len(removed)

    def compact(self) -> State:
        return State()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield


class SyscallCounter:
    """Counts os.fsync calls, and os.replace calls onto the state file (snapshot writes)."""

    def __init__(self, state_path: Path) -> None:
        self.fsyncs = 0
        self.snapshot_writes = 0
        self._state_path = os.fspath(state_path)
        self._fsync = os.fsync
        self._replace = os.replace

    def fsync(self, fd: Any) -> None:
        self.fsyncs += 1
        self._fsync(fd)

    def replace(self, source: Any, target: Any, **kwargs: Any) -> None:
        if os.fspath(target) == self._state_path:
            self.snapshot_writes += 1
        self._replace(source, target, **kwargs)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        os.fsync, os.replace = self.fsync, self.replace  # type: ignore[assignment]
        try:
            yield
        finally:
            os.fsync, os.replace = self._fsync, self._replace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--stub", action="store_true", help="stub out every state write")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    tasks = load_tasks([args.directory])
    if not tasks.ok:
        print(f"invalid manifests: {tasks.problems[:3]}", file=sys.stderr)
        return 1
    plan = make_plan(tasks.tasks, State(), now=datetime.now(UTC))
    store = (StubStore if args.stub else CountingStore)(args.state)
    counter = SyscallCounter(store.path)
    credentials = Credentials(os.environ["JDCLOUD_ACCESS_KEY"], os.environ["JDCLOUD_SECRET_KEY"])
    client = LiveClient(credentials, endpoint=args.endpoint, pool_size=args.concurrency)
    with client, counter.installed():
        started = time.perf_counter()
        with store.lock():
            result = apply_plan(plan, store, client, concurrency=args.concurrency)
            store.compact()
        seconds = time.perf_counter() - started
    submitted = len(result.of(OutcomeKind.SUBMITTED))
    report = {
        "seconds": seconds,
        "secondsInsideState": store.seconds_inside,
        "tasks": len(plan.items),
        "submitted": submitted,
        "appends": store.appends,
        "journalLines": store.entries,
        "fsyncs": counter.fsyncs,
        "snapshotWrites": counter.snapshot_writes,
    }
    print(json.dumps(report))
    return 0 if submitted == len(plan.items) else 1


if __name__ == "__main__":
    sys.exit(main())
