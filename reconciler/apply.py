"""Apply: submit a plan's tasks concurrently, recording each one write-ahead in the state."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from reconciler.client import (
    ApiError,
    AuthenticationError,
    FinalError,
    SubmitResult,
    UnknownOutcomeError,
)
from reconciler.plan import Plan, PlanAction, PlanItem
from reconciler.state import State, StateEntry, StateStore, TaskStatus, utc_timestamp

DEFAULT_CONCURRENCY = 4


class Submitter(Protocol):
    """What apply needs of a client (LiveClient, or a fake in tests)."""

    def add_live_record_task(
        self, path: Mapping[str, str], body: Mapping[str, Any]
    ) -> SubmitResult: ...


class OutcomeKind(StrEnum):
    SUBMITTED = "submitted"  # 200 with a requestId: recorded `submitted`
    FAILED = "failed"  # a final error: nothing was created, the mark is removed
    UNKNOWN = "unknown"  # the request left and no answer says what happened: stays `pending`
    NOT_SENT = "not-sent"  # stopped (Ctrl-C, 401) before sending: the mark is removed


@dataclass(frozen=True)
class Outcome:
    item: PlanItem
    kind: OutcomeKind
    request_id: str | None = None
    http_status: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class ApplyResult:
    outcomes: tuple[Outcome, ...]
    interrupted: bool = False
    auth_failed: bool = False
    renamed: int = 0
    still_pending: int = 0  # `pending` tasks of the plan that were not re-sent

    def of(self, kind: OutcomeKind) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.kind is kind]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        sent_all = all(outcome.kind is OutcomeKind.SUBMITTED for outcome in self.outcomes)
        return 0 if sent_all and not self.still_pending else 1


def _now() -> datetime:
    return datetime.now(UTC)


def _entry(
    item: PlanItem, status: TaskStatus, now: datetime, request_id: str | None = None
) -> StateEntry:
    stamp = utc_timestamp(now)
    return StateEntry(
        item.hash,
        status,
        item.name,
        item.source,
        item.request,
        stamp,
        request_id,
        stamp if status is TaskStatus.SUBMITTED else None,
    )


def to_send(plan: Plan, *, retry_pending: bool = False) -> list[PlanItem]:
    """The items apply submits: every `create`, and `pending` ones only when told to."""
    actions = {PlanAction.CREATE} | ({PlanAction.PENDING} if retry_pending else set())
    return [item for item in plan.items if item.action in actions]


def follow_renames(plan: Plan, state: State, now: datetime) -> list[StateEntry]:
    """State entries whose manifest was renamed or moved: same content, new name or source."""
    updated = []
    for item in plan.items:
        entry = state.get(item.hash)
        if item.renamed_from is None or entry is None:
            continue
        if item.action in (PlanAction.UNCHANGED, PlanAction.PENDING):
            updated.append(
                StateEntry(
                    entry.hash,
                    entry.status,
                    item.name,
                    item.source,
                    entry.request,
                    utc_timestamp(now),
                    entry.request_id,
                    entry.submitted_at,
                )
            )
    return updated


def apply_plan(
    plan: Plan,
    store: StateStore,
    client: Submitter,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry_pending: bool = False,
    stop: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    clock: Callable[[], datetime] = _now,
    state: State | None = None,
) -> ApplyResult:
    """Submit the plan's tasks; the caller holds `store.lock()` and has checked the plan is fresh.

    Write-ahead: a batch of at most `concurrency` tasks is journalled `pending` (one fsync)
    before any of them is handed to a sender, and the next batch only once the previous one
    has been handed out; so at most 2 x concurrency tasks are ever marked but unsent.
    """
    stop = stop or threading.Event()
    report = on_outcome or (lambda outcome: None)
    if state is None:  # the caller usually has just loaded it, under the same lock
        state = store.load()
    renames = follow_renames(plan, state, clock())
    store.append(renames)
    queue = deque(to_send(plan, retry_pending=retry_pending))
    outcomes: list[Outcome] = []
    auth_failed = threading.Event()
    marked: deque[PlanItem] = deque()
    in_flight: dict[Future[Outcome], PlanItem] = {}

    def halted() -> bool:
        return stop.is_set() or auth_failed.is_set()

    def send(item: PlanItem) -> Outcome:
        if halted():  # Ctrl-C or a 401 while this one waited for a sender
            return _not_sent(item)
        try:
            outcome = submit_one(client, item)
        except Exception as error:  # a bug, not an answer: the request may have left
            outcome = Outcome(
                item, OutcomeKind.UNKNOWN, message=f"unexpected error: {type(error).__name__}"
            )
        if outcome.http_status == 401:
            auth_failed.set()
        return outcome

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="submit") as pool:
        while queue or marked or in_flight:
            if not halted() and not marked and queue:
                batch = [queue.popleft() for _ in range(min(concurrency, len(queue)))]
                store.append([_entry(item, TaskStatus.PENDING, clock()) for item in batch])
                marked.extend(batch)
            if halted():
                # Marked but never handed to a sender: never sent, so the mark goes.
                unsent = [_not_sent(item) for item in marked]
                outcomes.extend(_record(store, unsent, clock, report))
                # Never marked, never sent: nothing to undo in the state, only to report.
                for outcome in (_not_sent(item) for item in queue):
                    report(outcome)
                    outcomes.append(outcome)
                marked.clear()
                queue.clear()
            while marked and len(in_flight) < concurrency:
                item = marked.popleft()
                in_flight[pool.submit(send, item)] = item
            if not in_flight:
                continue
            done, _ = wait(in_flight, timeout=0.25, return_when=FIRST_COMPLETED)
            finished = [future.result() for future in done]
            for future in done:
                del in_flight[future]
            outcomes.extend(_record(store, finished, clock, report))
    return ApplyResult(
        tuple(outcomes),
        interrupted=stop.is_set(),
        auth_failed=auth_failed.is_set(),
        renamed=len(renames),
        still_pending=0 if retry_pending else len(plan.of(PlanAction.PENDING)),
    )


def _not_sent(item: PlanItem) -> Outcome:
    return Outcome(item, OutcomeKind.NOT_SENT, message="not sent: apply was stopped")


def _record(
    store: StateStore,
    finished: Sequence[Outcome],
    clock: Callable[[], datetime],
    report: Callable[[Outcome], None],
) -> Iterable[Outcome]:
    """Make a group of outcomes durable with one journal write, then report them."""
    now = clock()
    submitted = [
        _entry(o.item, TaskStatus.SUBMITTED, now, o.request_id)
        for o in finished
        if o.kind is OutcomeKind.SUBMITTED
    ]
    # A final error created nothing, and a task never sent reached nobody: drop the mark so a
    # later apply sends it (after the manifest is fixed, for a final error). A re-sent
    # `pending` task that fails finally keeps its mark: its first send may still have worked.
    removed = [
        o.item.hash
        for o in finished
        if o.kind in (OutcomeKind.FAILED, OutcomeKind.NOT_SENT)
        and o.item.action is PlanAction.CREATE
    ]
    store.append(submitted, removed=removed)
    for outcome in finished:
        report(outcome)
    return finished


def submit_one(client: Submitter, item: PlanItem) -> Outcome:
    """Send one task and classify what happened; never raises for an API answer."""
    try:
        result = client.add_live_record_task(item.request["path"], item.request["body"])
    except UnknownOutcomeError as error:
        return Outcome(item, OutcomeKind.UNKNOWN, None, error.http_status, str(error))
    except (FinalError, AuthenticationError) as error:
        return Outcome(item, OutcomeKind.FAILED, error.request_id, error.http_status, str(error))
    except ApiError as error:  # any other API error: we cannot say nothing was created
        return Outcome(item, OutcomeKind.UNKNOWN, error.request_id, error.http_status, str(error))
    return Outcome(item, OutcomeKind.SUBMITTED, result.request_id, result.http_status)
