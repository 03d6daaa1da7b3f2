"""Apply: submit a plan's tasks concurrently, recording each one write-ahead in the state."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.client import (
    DEFAULT_ENDPOINT,
    ApiError,
    AuthenticationError,
    EndpointUnreachableError,
    FinalError,
    LiveClient,
    SubmitResult,
    UnknownOutcomeError,
)
from reconciler.plan import Plan, PlanAction, PlanItem
from reconciler.signing import Credentials
from reconciler.state import State, StateBackend, StateEntry, StateError, TaskStatus, utc_timestamp
from reconciler.state.model import external_id_to_send, generated_external_id

if TYPE_CHECKING:  # notify.py loads only for a plan with notify URLs
    from reconciler.notify import ConfigOutcome

DEFAULT_CONCURRENCY = 4
# After a second Ctrl-C, how long requests in flight get to deliver an answer already on its way.
ABORT_GRACE_SECONDS = 0.3
# How often the send loop looks at the interrupt flags while it waits for answers.
_POLL_SECONDS = 0.1


class Submitter(Protocol):
    """What apply needs of a client (LiveClient, or a fake in tests)."""

    def add_live_record_task(
        self, path: Mapping[str, str], body: Mapping[str, Any]
    ) -> SubmitResult: ...


class OutcomeKind(StrEnum):
    SUBMITTED = "submitted"  # 200 with a requestId: recorded `submitted`
    FAILED = "failed"  # a final error: nothing was created, the mark is removed
    UNKNOWN = "unknown"  # the request left and no answer says what happened: stays `pending`
    NOT_SENT = "not-sent"  # stopped (Ctrl-C, 401, no endpoint) before sending: mark removed


class StopReason(StrEnum):
    """Why a run stopped before sending everything (an answer that every request would get)."""

    AUTHENTICATION = "authentication"  # 401: the credentials were refused
    UNREACHABLE = "unreachable"  # the endpoint cannot be reached: nothing was sent
    STATE_LOST = "state-lost"  # the state stopped recording (e.g. a lost database connection)


@dataclass(frozen=True)
class Outcome:
    item: PlanItem
    kind: OutcomeKind
    request_id: str | None = None
    http_status: int | None = None
    message: str | None = None
    stops_run: StopReason | None = None


@dataclass(frozen=True)
class ApplyResult:
    outcomes: tuple[Outcome, ...]
    interrupted: bool = False
    auth_failed: bool = False
    renamed: int = 0
    still_pending: int = 0  # `pending` tasks of the plan that were not re-sent
    aborted: bool = False  # a second interrupt: requests still in flight were left `pending`
    unreachable: bool = False  # the endpoint could not be reached; the rest was not sent
    state_lost: bool = False  # the state stopped recording mid-run (interrupted meanwhile)
    configs: tuple[ConfigOutcome, ...] = ()  # the notify URLs, set before any task is sent

    def of(self, kind: OutcomeKind) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.kind is kind]

    @property
    def left_in_flight(self) -> list[Outcome]:
        """Tasks a second interrupt left without an answer: `pending` in the state."""
        return [
            o for o in self.outcomes if o.kind is OutcomeKind.UNKNOWN and o.message == ABANDONED
        ]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        sent_all = all(outcome.kind is OutcomeKind.SUBMITTED for outcome in self.outcomes)
        # ConfigOutcomeKind.UPDATED and UNCHANGED (StrEnum values).
        configs_set = all(outcome.kind in ("updated", "unchanged") for outcome in self.configs)
        return 0 if sent_all and configs_set and not self.still_pending else 1


ABANDONED = "still in flight when apply was aborted: the outcome is unknown"
CLAIMED_ELSEWHERE = "not sent: claimed by another apply since this plan was made"


class StateLostError(StateError):
    """The state could not record apply's outcomes mid-run; the message lists what is `pending`."""


class StateKindError(StateError):
    """A sandbox run given a real state, or a real run given a sandbox state."""


class StateMissingError(StateError):
    """A real apply was pointed at a state that does not exist."""


def refuse_missing_state(store: StateBackend, *, sandbox: bool) -> None:
    """A real apply never starts from a state that does not exist: that is a wrong directory
    or a state that was not checked out, and planning against nothing would send every clip
    again. Checked before the lock is taken (which would leave a lock file behind), and again
    under it."""
    if sandbox or store.exists():
        return
    raise StateMissingError(
        f"there is no state at {store.shown} {store.missing_reason()}; nothing was sent. "
        "Planning against no state would send every clip again. If these "
        "manifests were really never applied, create an empty state with `reconciler init` "
        "and commit it"
    )


def state_for_apply(
    store: StateBackend, *, sandbox: bool, dry_run: bool = False, origin: str | None = None
) -> State:
    """The state an apply may start from; the caller holds `store.lock()` (but for a dry run).

    A missing state is refused (see refuse_missing_state), except for a sandbox apply, which
    starts from an empty sandbox state that apply_plan writes before its first mark, and a
    dry run, which writes nothing. Sandbox and real states never mix: a sandbox answer
    recorded in a real state would make a later real apply skip that clip. `origin` says
    where the state's location came from (--state, $RECONCILER_STATE, a default), for the
    refusals.
    """
    named = f"{store.shown} ({origin})" if origin else store.shown
    if not store.exists():
        if sandbox or dry_run:
            return State(sandbox=sandbox)
        refuse_missing_state(store, sandbox=sandbox)
    state = store.load()
    if sandbox and not state.sandbox:
        raise StateKindError(
            f"{named} is a real state, not a sandbox one; apply --sandbox never writes "
            "sandbox answers into a real state (a later real apply would skip those clips). "
            "Nothing was sent. apply --sandbox creates a sandbox state of its own where there "
            "is none: pass --state with a new file, or move this one away if `reconciler init` "
            "made it"
        )
    if not sandbox and state.sandbox:
        raise StateKindError(
            f"{named} is a sandbox state (written by apply --sandbox); a real apply refuses "
            "it: its tasks were never sent to JD Cloud. Nothing was sent. Use the real state "
            "(or `reconciler init --state PATH` for a new one)"
        )
    return state


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
        external_id_to_send(item.hash, item.request),
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
                    entry.external_id,
                )
            )
    return updated


@dataclass(frozen=True)
class ApplyOptions:
    """Where and how `run_apply` sends: JD Cloud (credentials, endpoint) or its own sandbox."""

    credentials: Credentials | None = None
    endpoint: str | None = None  # None: DEFAULT_ENDPOINT
    concurrency: int = DEFAULT_CONCURRENCY
    retry_pending: bool = False
    # Against a sandbox: one started in-process for this run (its own credentials), or, when
    # credentials and endpoint are given, the one already running there.
    sandbox: bool = False
    # Where a notify URL's `${NAME}`s are read (None: os.environ).
    environ: Mapping[str, str] | None = None


def run_apply(
    plan: Plan,
    state: State,
    store: StateBackend,
    options: ApplyOptions,
    *,
    stop: threading.Event | None = None,
    abort: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_config_outcome: Callable[[ConfigOutcome], None] | None = None,
) -> ApplyResult:
    """Send `plan` with a client of its own (to a sandbox started for it with `sandbox`), then
    bring the state to its committed form. The plan's notify URLs are set first (read,
    compared, set when they differ: notify.apply_configs), so that the callbacks of the tasks
    sent after them go where the manifests say.

    The caller holds `store.lock()` and made `plan` from `state` under it. After an abort the
    client (and the sandbox) are left open: senders still wait on them and closing them would
    wait too; the caller exits the process without them.
    """
    with contextlib.ExitStack() as connections:
        endpoint, credentials = options.endpoint or DEFAULT_ENDPOINT, options.credentials
        if options.sandbox and credentials is None:
            from reconciler.sandbox import running_sandbox

            box = connections.enter_context(running_sandbox())
            endpoint, credentials = box.url, box.credentials
        if credentials is None:
            raise ValueError("apply needs credentials, or the sandbox")
        client = connections.enter_context(
            LiveClient(credentials, endpoint=endpoint, pool_size=options.concurrency)
        )
        configs: list[ConfigOutcome] = []
        if plan.configs:
            from reconciler.notify import apply_configs

            configs = apply_configs(
                plan.configs,
                client,
                environ=os.environ if options.environ is None else options.environ,
                stop=stop,
                abort=abort,
                on_outcome=on_config_outcome,
            )
        result = apply_plan(
            plan,
            store,
            client,
            concurrency=options.concurrency,
            retry_pending=options.retry_pending,
            stop=stop,
            abort=abort,
            on_outcome=on_outcome,
            state=state,
        )
        result = dataclasses.replace(result, configs=tuple(configs))
        if result.aborted:
            connections.pop_all()
    if not result.state_lost:
        try:
            store.compact()
        except StateError:
            if not result.interrupted:
                raise
            # Interrupted: what was recorded stays as it is (a journal is folded next time).
    return result


def apply_plan(
    plan: Plan,
    store: StateBackend,
    client: Submitter,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry_pending: bool = False,
    stop: threading.Event | None = None,
    abort: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    clock: Callable[[], datetime] = _now,
    state: State | None = None,
) -> ApplyResult:
    """Submit the plan's tasks; the caller holds `store.lock()` and has checked the plan is fresh.

    Write-ahead: a batch of at most `concurrency` tasks is journalled `pending` (one fsync)
    before any of them is handed to a sender, and the next batch only once the previous one
    has been handed out; so at most 2 x concurrency tasks are ever marked but unsent.

    `stop` (a first Ctrl-C): send nothing more, wait for the answers of requests in flight.
    `abort` (a second one): record the answers already received and return within a second;
    requests still in flight stay `pending`, and their threads are left behind (the caller
    exits the process without waiting for them).
    """
    stop = stop or threading.Event()
    abort = abort or threading.Event()
    report = on_outcome or (lambda outcome: None)
    if state is None:  # the caller usually has just loaded it, under the same lock
        state = store.load()
    if not store.exists():
        # Written before the first mark: a journal alone would not say whose state it is.
        store.create(sandbox=state.sandbox)
    renames = follow_renames(plan, state, clock())
    store.append(renames)
    seen = state.with_entries(renames)  # what a claim expects each task's entry to be
    queue = deque(to_send(plan, retry_pending=retry_pending))
    outcomes: list[Outcome] = []
    stopped: list[StopReason] = []  # appended to by senders; a list is safe across threads
    marked: deque[PlanItem] = deque()
    in_flight: dict[Future[Outcome], PlanItem] = {}

    def halted() -> bool:
        return stop.is_set() or abort.is_set() or bool(stopped)

    def send(item: PlanItem) -> Outcome:
        if halted():  # Ctrl-C, a 401 or an unreachable endpoint while this one waited
            return _not_sent(item)
        outcome = submit_one(client, item)
        if outcome.stops_run is not None:
            stopped.append(outcome.stops_run)
        return outcome

    claiming: list[PlanItem] = []  # a batch whose claim is in progress
    finished = threading.Event()
    watcher = threading.Thread(
        target=_interrupt_state_when_told,
        args=(store, stop, abort, finished),
        name="state-interrupt",
        daemon=True,
    )
    watcher.start()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="submit")
    try:
        while queue or marked or in_flight:
            if abort.is_set():
                outcomes.extend(_abandon(store, in_flight, marked, queue, clock, report))
                break
            if not halted() and not marked and queue:
                batch = [queue.popleft() for _ in range(min(concurrency, len(queue)))]
                marks = [_entry(item, TaskStatus.PENDING, clock()) for item in batch]
                claiming[:] = batch
                claimed = store.claim(marks, seen=seen)
                claiming.clear()
                for item in batch:
                    if item.hash in claimed:
                        marked.append(item)
                    else:  # another applier recorded it since this plan was made: not ours
                        outcome = Outcome(item, OutcomeKind.NOT_SENT, message=CLAIMED_ELSEWHERE)
                        report(outcome)
                        outcomes.append(outcome)
            if halted():
                outcomes.extend(_unsend(store, marked, queue, clock, report))
            while marked and len(in_flight) < concurrency:
                item = marked.popleft()
                in_flight[pool.submit(send, item)] = item
            if not in_flight:
                continue
            done, _ = wait(in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            outcomes.extend(_record(store, _collect(in_flight, done), clock, report))
    except StateError as error:
        stopped.append(StopReason.STATE_LOST)  # senders not started yet send nothing
        message, fresh = _after_loss(
            error, store, in_flight, [*claiming, *marked], queue, clock, report, abort
        )
        outcomes.extend(fresh)
        if not (stop.is_set() or abort.is_set()):
            raise StateLostError(message) from None
        # Interrupted meanwhile: exit 130 with the summary, which lists what was left pending.
    finally:
        finished.set()
        # After an abort the senders still waiting for an answer are not waited for.
        pool.shutdown(wait=not abort.is_set(), cancel_futures=True)
    return ApplyResult(
        tuple(outcomes),
        interrupted=stop.is_set() or abort.is_set(),
        auth_failed=StopReason.AUTHENTICATION in stopped,
        renamed=len(renames),
        still_pending=0 if retry_pending else len(plan.of(PlanAction.PENDING)),
        aborted=abort.is_set() or StopReason.STATE_LOST in stopped,
        unreachable=StopReason.UNREACHABLE in stopped,
        state_lost=StopReason.STATE_LOST in stopped,
    )


def _interrupt_state_when_told(
    store: StateBackend, stop: threading.Event, abort: threading.Event, finished: threading.Event
) -> None:
    """Ctrl-C / SIGTERM: the main thread may be waiting on a database that went silent; the
    store cuts that wait short (a second), so the signal acts even then."""
    while not finished.wait(_POLL_SECONDS):
        if stop.is_set() or abort.is_set():
            store.interrupt()
            return


def _after_loss(
    error: StateError,
    store: StateBackend,
    in_flight: dict[Future[Outcome], PlanItem],
    unsent: Sequence[PlanItem],
    queue: deque[PlanItem],
    clock: Callable[[], datetime],
    report: Callable[[Outcome], None],
    abort: threading.Event,
) -> tuple[str, list[Outcome]]:
    """The state stopped recording mid-run: nothing more is sent; the answers of requests in
    flight are awaited (not after a second interrupt); then one more try (the store connects
    again, bounded) records every answer not yet recorded and removes the marks of tasks never
    sent.

    Returns the message (naming the state and every task left `pending`) and the outcomes
    that were not reported before."""
    unrecorded = list(error.outcomes) if isinstance(error, _Unrecorded) else []
    answers: list[Outcome] = []
    while in_flight and not abort.is_set():
        done, _ = wait(in_flight, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
        answers += _collect(in_flight, done)
    done, _ = wait(in_flight, timeout=ABORT_GRACE_SECONDS if in_flight else 0)
    answers += _collect(in_flight, done)
    left = [Outcome(item, OutcomeKind.UNKNOWN, message=ABANDONED) for item in in_flight.values()]
    in_flight.clear()
    marked = [_not_sent(item) for item in unsent]
    never_marked = [_not_sent(item) for item in queue]
    queue.clear()
    claimed = [*unrecorded, *answers, *marked]  # each has a `pending` mark not yet resolved
    submitted, removed = _resolved(claimed, clock())
    try:
        store.append(submitted, removed=removed)
    except StateError as again:
        recovery = (
            f"Connecting again did not work either ({again}): the {len(submitted)} answers "
            f"received are not recorded and {len(removed)} marks of tasks never sent or "
            "refused stay"
        )
        pending = [o.item.name for o in claimed]
    else:
        recovery = (
            f"Connected again: recorded the {len(submitted)} answers received and removed "
            f"{len(removed)} marks of tasks never sent or refused"
        )
        pending = [o.item.name for o in claimed if o.kind is OutcomeKind.UNKNOWN]
    pending += [o.item.name for o in left]
    fresh = [*unrecorded, *answers, *marked, *never_marked, *left]
    for outcome in fresh:
        report(outcome)
    listed = ", ".join(sorted(pending)) if pending else "none"
    message = (
        f"{error}. Nothing more was sent. {recovery}. Left `pending` (each request may have "
        f"been processed: `reconciler plan` lists them; check them at JD Cloud): {listed}"
    )
    return message, fresh


class _Unrecorded(StateError):
    """A write of outcomes failed; it carries them, so they are recorded on the next try."""

    def __init__(self, error: StateError, outcomes: Sequence[Outcome]) -> None:
        super().__init__(str(error))
        self.outcomes = tuple(outcomes)


def _collect(
    in_flight: dict[Future[Outcome], PlanItem], done: Iterable[Future[Outcome]]
) -> list[Outcome]:
    finished = []
    for future in done:
        del in_flight[future]
        finished.append(future.result())
    return finished


def _unsend(
    store: StateBackend,
    marked: deque[PlanItem],
    queue: deque[PlanItem],
    clock: Callable[[], datetime],
    report: Callable[[Outcome], None],
) -> list[Outcome]:
    """Report every task not handed to a sender as not sent, and drop the marks of those marked."""
    # Marked but never handed to a sender: never sent, so the mark goes.
    outcomes = list(_record(store, [_not_sent(item) for item in marked], clock, report))
    # Never marked, never sent: nothing to undo in the state, only to report.
    for outcome in (_not_sent(item) for item in queue):
        report(outcome)
        outcomes.append(outcome)
    marked.clear()
    queue.clear()
    return outcomes


def _abandon(
    store: StateBackend,
    in_flight: dict[Future[Outcome], PlanItem],
    marked: deque[PlanItem],
    queue: deque[PlanItem],
    clock: Callable[[], datetime],
    report: Callable[[Outcome], None],
) -> list[Outcome]:
    """A second interrupt: keep every answer already received, leave the rest `pending`."""
    outcomes = _unsend(store, marked, queue, clock, report)
    # Senders that had not started yet return at once (not sent); an answer already on the
    # wire gets a moment to arrive. Whatever is still out then stays `pending`.
    done, _ = wait(in_flight, timeout=ABORT_GRACE_SECONDS)
    outcomes.extend(_record(store, _collect(in_flight, done), clock, report))
    left = [Outcome(item, OutcomeKind.UNKNOWN, message=ABANDONED) for item in in_flight.values()]
    in_flight.clear()
    outcomes.extend(_record(store, left, clock, report))
    return outcomes


def _not_sent(item: PlanItem) -> Outcome:
    return Outcome(item, OutcomeKind.NOT_SENT, message="not sent: apply was stopped")


def _resolved(outcomes: Sequence[Outcome], now: datetime) -> tuple[list[StateEntry], list[str]]:
    """What outcomes change in the state: the entries of tasks now submitted, and the hashes
    whose `pending` marks go.

    A final error created nothing, and a task never sent reached nobody: the mark goes, so a
    later apply sends it (after the manifest is fixed, for a final error). A re-sent `pending`
    task that fails finally keeps its mark: its first send may still have worked.
    """
    submitted = [
        _entry(o.item, TaskStatus.SUBMITTED, now, o.request_id)
        for o in outcomes
        if o.kind is OutcomeKind.SUBMITTED
    ]
    removed = [
        o.item.hash
        for o in outcomes
        if o.kind in (OutcomeKind.FAILED, OutcomeKind.NOT_SENT)
        and o.item.action is PlanAction.CREATE
    ]
    return submitted, removed


def _record(
    store: StateBackend,
    finished: Sequence[Outcome],
    clock: Callable[[], datetime],
    report: Callable[[Outcome], None],
) -> Iterable[Outcome]:
    """Make a group of outcomes durable with one journal write, then report them."""
    submitted, removed = _resolved(finished, clock())
    try:
        store.append(submitted, removed=removed)
    except StateError as error:
        raise _Unrecorded(error, finished) from None
    for outcome in finished:
        report(outcome)
    return finished


def body_to_send(item: PlanItem) -> Mapping[str, Any]:
    """The request body as sent: the declared one, with our taskExternalId when it sets none.

    The task's hash stays that of the declared request (so every state keeps its identities);
    the generated id is a function of that hash, so a re-plan or a saved plan sends the same.
    """
    body: Mapping[str, Any] = item.request["body"]
    if body.get("taskExternalId") is not None:
        return body
    return {**body, "taskExternalId": generated_external_id(item.hash)}


def submit_one(client: Submitter, item: PlanItem) -> Outcome:
    """Send one task and classify what happened; never raises."""
    try:
        result = client.add_live_record_task(item.request["path"], body_to_send(item))
    except UnknownOutcomeError as error:
        return Outcome(item, OutcomeKind.UNKNOWN, None, error.http_status, str(error))
    except (FinalError, AuthenticationError) as error:
        # 401 and an unreachable endpoint would be every other request's answer too.
        reason = (
            StopReason.AUTHENTICATION
            if isinstance(error, AuthenticationError)
            else StopReason.UNREACHABLE
            if isinstance(error, EndpointUnreachableError)
            else None
        )
        return Outcome(
            item, OutcomeKind.FAILED, error.request_id, error.http_status, str(error), reason
        )
    except ApiError as error:  # any other API error: we cannot say nothing was created
        return Outcome(item, OutcomeKind.UNKNOWN, error.request_id, error.http_status, str(error))
    except Exception as error:  # a bug, not an answer: the request may have left
        return Outcome(
            item, OutcomeKind.UNKNOWN, message=f"unexpected error: {type(error).__name__}"
        )
    return Outcome(item, OutcomeKind.SUBMITTED, result.request_id, result.http_status)
