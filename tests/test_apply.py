"""apply: write-ahead submission with a fake client that fails or crashes at every step."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.apply import ABANDONED, OutcomeKind, apply_plan
from reconciler.client import (
    AuthenticationError,
    EndpointUnreachableError,
    FinalError,
    SubmitResult,
    UnknownOutcomeError,
)
from reconciler.plan import make_plan
from reconciler.state import StateStore, TaskStatus
from reconciler.tasks import Task
from tests.conftest import NOW

MakeTask = Callable[..., Task]


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs (not even our error handling)."""


class FakeServer:
    """A client whose 'server' remembers every request that reached it."""

    def __init__(self, behaviour: Callable[[str, int], str] | None = None) -> None:
        self.behaviour = behaviour or (lambda stream, call: "ok")
        self.received: list[str] = []  # streamName of every request that reached the server
        self.created: list[str] = []  # tasks the server created
        self.calls = 0
        self.lock = threading.Lock()
        self.on_call: Callable[[int], None] = lambda call: None
        self.released = threading.Event()  # lets "block" requests answer

    def add_live_record_task(
        self, path: Mapping[str, str], body: Mapping[str, Any]
    ) -> SubmitResult:
        stream = path["streamName"]
        with self.lock:
            self.calls += 1
            call = self.calls
        self.on_call(call)
        what = self.behaviour(stream, call)
        if what == "crash-before-send":
            raise Crash
        self.refuse_before_sending(what)
        if what == "block":
            with self.lock:
                self.received.append(stream)
            self.released.wait(30)
            return SubmitResult(request_id=f"late-{stream}".ljust(32, "0"), http_status=200)
        with self.lock:
            self.received.append(stream)
        if what == "ok":
            with self.lock:
                self.created.append(stream)
            return SubmitResult(request_id=f"req-{stream}".ljust(32, "0"), http_status=200)
        if what == "crash-after-send":
            with self.lock:
                self.created.append(stream)
            raise Crash
        if what == "400":
            raise FinalError(
                "400 INVALID_ARGUMENT: bad",
                http_status=400,
                error_status="INVALID_ARGUMENT",
                error_message="bad",
                request_id="x",
            )
        if what == "401":
            raise AuthenticationError(
                "401 UNAUTHENTICATED",
                http_status=401,
                error_status="UNAUTHENTICATED",
                error_message="no",
                request_id="y",
            )
        if what == "500":
            with self.lock:
                self.created.append(stream)  # the worst case: it did create the task
            raise UnknownOutcomeError(
                "500 INTERNAL",
                http_status=500,
                error_status="INTERNAL",
                error_message="boom",
                request_id="z",
            )
        if what == "bug":
            raise RuntimeError("unexpected")
        raise AssertionError(what)

    def refuse_before_sending(self, what: str) -> None:
        """Errors the client raises before any byte reaches the server (not `received`)."""
        if what == "unreachable":
            raise EndpointUnreachableError(
                "could not connect to 127.0.0.1:1; nothing was sent", host="127.0.0.1:1"
            )
        if what == "invalid":
            raise FinalError("streamName '..' is not a valid path segment; nothing was sent")


def run(tasks: list[Task], store: StateStore, server: FakeServer, **options: Any) -> Any:
    with store.lock():
        plan = make_plan(tasks, store.load(), now=NOW)
        result = apply_plan(plan, store, server, **options)
        store.compact()
    return result


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    """An initialised state, as `reconciler init` leaves it."""
    created = StateStore(tmp_path / "state.json")
    created.create()
    return created


def statuses(store: StateStore) -> dict[str, str]:
    return {e.name: e.status.value for e in StateStore(store.path).load().entries.values()}


def test_all_submitted_then_nothing_to_do(make_task: MakeTask, store: StateStore) -> None:
    tasks = [make_task(n) for n in range(10)]
    server = FakeServer()
    result = run(tasks, store, server, concurrency=3)
    assert result.exit_code == 0
    assert sorted(server.received) == sorted(t.path["streamName"] for t in tasks)
    assert set(statuses(store).values()) == {"submitted"}
    entry = StateStore(store.path).load().get(tasks[0].hash)
    assert entry is not None and entry.request_id == "req-clip-0".ljust(32, "0")
    again = run(tasks, store, server, concurrency=3)
    assert again.outcomes == () and again.exit_code == 0
    assert len(server.received) == 10, "a second apply sends nothing"


def test_final_error_is_not_recorded_and_can_be_sent_later(
    make_task: MakeTask, store: StateStore
) -> None:
    tasks = [make_task(n) for n in range(3)]
    server = FakeServer(lambda stream, call: "400" if stream == "clip-1" else "ok")
    result = run(tasks, store, server)
    assert result.exit_code == 1
    assert [o.item.name for o in result.of(OutcomeKind.FAILED)] == ["clip-1"]
    assert statuses(store) == {"clip-0": "submitted", "clip-2": "submitted"}
    server.behaviour = lambda stream, call: "ok"
    assert run(tasks, store, server).exit_code == 0
    assert server.received.count("clip-1") == 2 and server.created.count("clip-1") == 1


def test_unknown_outcome_stays_pending_and_is_not_resent(
    make_task: MakeTask, store: StateStore
) -> None:
    tasks = [make_task(n) for n in range(3)]
    server = FakeServer(lambda stream, call: "500" if stream == "clip-1" else "ok")
    result = run(tasks, store, server)
    assert result.exit_code == 1
    assert statuses(store)["clip-1"] == "pending"
    server.behaviour = lambda stream, call: "ok"
    again = run(tasks, store, server)
    assert again.outcomes == () and again.exit_code == 1, "pending still needs a person"
    assert server.received.count("clip-1") == 1
    retried = run(tasks, store, server, retry_pending=True)
    assert retried.exit_code == 0
    assert server.received.count("clip-1") == 2
    assert statuses(store)["clip-1"] == "submitted"


def test_unexpected_client_error_counts_as_unknown(make_task: MakeTask, store: StateStore) -> None:
    server = FakeServer(lambda stream, call: "bug")
    result = run([make_task(1)], store, server)
    assert result.of(OutcomeKind.UNKNOWN) and result.exit_code == 1
    assert statuses(store) == {"clip-1": "pending"}


def test_401_stops_the_run(make_task: MakeTask, store: StateStore) -> None:
    tasks = [make_task(n) for n in range(20)]
    server = FakeServer(lambda stream, call: "401")
    result = run(tasks, store, server, concurrency=2)
    assert result.auth_failed and result.exit_code == 1
    assert server.calls <= 4, "no new request after the 401 (at most those already in flight)"
    assert statuses(store) == {}, "nothing marked submitted, no mark left behind"


def test_interrupt_records_in_flight_and_drops_unsent_marks(
    make_task: MakeTask, store: StateStore
) -> None:
    tasks = [make_task(n) for n in range(30)]
    stop = threading.Event()
    server = FakeServer()
    server.on_call = lambda call: stop.set() if call == 5 else None
    result = run(tasks, store, server, concurrency=2, stop=stop)
    assert result.interrupted and result.exit_code == 130
    recorded = statuses(store)
    assert set(recorded.values()) == {"submitted"}
    assert sorted(recorded) == sorted(server.received), "every request that left is recorded"
    assert len(result.of(OutcomeKind.NOT_SENT)) == 30 - len(server.received)
    rest = run(tasks, store, server)
    assert rest.exit_code == 0
    assert sorted(server.received) == sorted(t.path["streamName"] for t in tasks)


@pytest.mark.parametrize("when", ["crash-before-send", "crash-after-send"])
def test_crash_inside_a_send_never_duplicates(
    make_task: MakeTask, store: StateStore, when: str
) -> None:
    tasks = [make_task(n) for n in range(12)]
    server = FakeServer(lambda stream, call: when if call == 6 else "ok")
    with pytest.raises(Crash):
        run(tasks, store, server, concurrency=2)
    after = statuses(store)
    # Nothing that reached the server is forgotten: it is submitted or pending.
    assert set(server.received) <= set(after)
    server.behaviour = lambda stream, call: "ok"
    run(tasks, store, server, concurrency=2)
    assert len(server.created) == len(set(server.created)), "no task created twice"
    final = statuses(store)
    assert set(final) == {t.name for t in tasks}
    assert sum(1 for s in final.values() if s == "pending") <= 2 * 2


def test_crash_after_answer_before_state_write(
    make_task: MakeTask, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = [make_task(n) for n in range(6)]
    server = FakeServer()
    original = StateStore.append

    def crashing_append(self: StateStore, entries: Any, *, removed: Any = ()) -> None:
        if any(e.status is TaskStatus.SUBMITTED for e in entries):
            raise Crash
        original(self, entries, removed=removed)

    monkeypatch.setattr(StateStore, "append", crashing_append)
    with pytest.raises(Crash):
        run(tasks, store, server, concurrency=2)
    monkeypatch.setattr(StateStore, "append", original)
    after = statuses(store)
    assert set(server.received) <= set(after)
    assert all(after[name] == "pending" for name in server.received)
    run(tasks, store, server, concurrency=2)
    assert len(server.created) == len(set(server.created)), (
        "the answered-but-unrecorded task is not re-sent"
    )


def test_write_ahead_window_and_batching(
    make_task: MakeTask, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency = 4
    tasks = [make_task(n) for n in range(100)]
    server = FakeServer()
    marked: set[str] = set()
    worst = 0
    appends = 0
    original = StateStore.append

    def counting_append(self: StateStore, entries: Any, *, removed: Any = ()) -> None:
        nonlocal worst, appends
        appends += 1
        original(self, entries, removed=removed)
        with server.lock:
            marked.update(
                e.request["path"]["streamName"] for e in entries if e.status is TaskStatus.PENDING
            )
            worst = max(worst, len(marked - set(server.received)))

    monkeypatch.setattr(StateStore, "append", counting_append)
    replaced = 0
    original_replace = StateStore._replace_snapshot

    def counting_replace(self: StateStore, data: bytes) -> None:
        nonlocal replaced
        replaced += 1
        original_replace(self, data)

    monkeypatch.setattr(StateStore, "_replace_snapshot", counting_replace)
    result = run(tasks, store, server, concurrency=concurrency)
    assert result.exit_code == 0
    assert worst <= 2 * concurrency
    assert replaced == 1, "the snapshot is written once, at the end"
    assert appends <= 100 // concurrency + 100 + 2, "pending marks are batched"


def test_renamed_manifest_updates_state_without_sending(
    make_task: MakeTask, store: StateStore
) -> None:
    task = make_task(1)
    server = FakeServer()
    run([task], store, server)
    moved = make_task(1, name="clip-1-final", source="other/place.yaml")
    result = run([moved], store, server)
    assert result.renamed == 1 and result.outcomes == ()
    (entry,) = StateStore(store.path).load().entries.values()
    assert (entry.name, entry.source, entry.status) == (
        "clip-1-final",
        "other/place.yaml",
        TaskStatus.SUBMITTED,
    )
    assert len(server.received) == 1


def test_an_unreachable_endpoint_stops_the_run_after_the_first_task(
    make_task: MakeTask, store: StateStore
) -> None:
    tasks = [make_task(n) for n in range(20)]
    server = FakeServer(lambda stream, call: "unreachable")
    result = run(tasks, store, server, concurrency=2)
    assert result.unreachable and result.exit_code == 1 and not result.auth_failed
    assert server.calls <= 4, "no new request after the first unreachable one (bar those in flight)"
    assert len(result.of(OutcomeKind.FAILED)) == server.calls
    assert len(result.of(OutcomeKind.NOT_SENT)) == 20 - server.calls
    assert statuses(store) == {}, "nothing was sent, so nothing is pending"


def test_a_request_the_client_refuses_to_build_is_a_final_failure(
    make_task: MakeTask, store: StateStore
) -> None:
    server = FakeServer(lambda stream, call: "invalid" if stream == "clip-1" else "ok")
    result = run([make_task(n) for n in range(3)], store, server)
    assert [o.item.name for o in result.of(OutcomeKind.FAILED)] == ["clip-1"]
    assert not result.unreachable, "one bad request does not stop the others"
    assert statuses(store) == {"clip-0": "submitted", "clip-2": "submitted"}


def test_a_second_interrupt_returns_at_once_keeping_every_answer_received(
    make_task: MakeTask, store: StateStore
) -> None:
    tasks = [make_task(n) for n in range(10)]
    stop, abort = threading.Event(), threading.Event()
    answered = threading.Event()

    # clip-0 and clip-1 answer once the first interrupt has come (had they answered before,
    # apply would already have sent clip-4 and clip-5 into their slots); clip-2 and clip-3
    # hang until the test lets them go.
    def behaviour(stream: str, call: int) -> str:
        if stream in ("clip-0", "clip-1"):
            stop.wait(10)
            return "ok"
        return "block"

    server = FakeServer(behaviour)

    def interrupt_twice(call: int) -> None:
        if call == 4:  # the first batch of four is out: stop, and abort once two answered
            threading.Thread(target=lambda: (stop.set(), answered.wait(5), abort.set())).start()

    server.on_call = interrupt_twice
    outcomes: list[Any] = []

    def count(outcome: Any) -> None:
        outcomes.append(outcome)
        if sum(o.kind is OutcomeKind.SUBMITTED for o in outcomes) == 2:
            answered.set()

    results: list[Any] = []
    runner = threading.Thread(
        target=lambda: results.append(
            run(tasks, store, server, concurrency=4, stop=stop, abort=abort, on_outcome=count)
        )
    )
    runner.start()
    runner.join(timeout=10)
    try:
        assert not runner.is_alive(), "apply waited for the requests still in flight"
    finally:
        server.released.set()
    result = results[0]
    assert result.aborted and result.interrupted and result.exit_code == 130
    assert statuses(store) == {
        "clip-0": "submitted",
        "clip-1": "submitted",
        "clip-2": "pending",
        "clip-3": "pending",
    }
    assert sorted(o.item.name for o in result.left_in_flight) == ["clip-2", "clip-3"]
    assert all(o.message == ABANDONED for o in result.left_in_flight)
    assert len(result.of(OutcomeKind.NOT_SENT)) == 6


def test_apply_writes_a_missing_state_before_its_first_mark(
    tmp_path: Path, make_task: MakeTask
) -> None:
    from reconciler.state import State

    store = StateStore(tmp_path / "sandbox.json")
    with store.lock():
        plan = make_plan([make_task(1)], State(sandbox=True), now=NOW)
        apply_plan(plan, store, FakeServer(), state=State(sandbox=True))
    assert StateStore(store.path).load().sandbox, "a journal alone would not say whose state it is"


# --- run_apply: the whole run the CLI hands one options value ------------------------------------


def test_run_apply_sends_to_the_endpoint_with_the_credentials_given(
    make_task: MakeTask, store: StateStore
) -> None:
    from reconciler.apply import ApplyOptions, run_apply
    from reconciler.sandbox import running_sandbox

    tasks = [make_task(n) for n in range(6)]
    with running_sandbox() as box, store.lock():
        current = store.load()
        plan = make_plan(tasks, current, now=NOW)
        options = ApplyOptions(credentials=box.credentials, endpoint=box.url, concurrency=3)
        result = run_apply(plan, current, store, options)
        accepted = box.accepted()
    assert result.exit_code == 0
    assert sorted(a["path"]["streamName"] for a in accepted) == sorted(
        t.path["streamName"] for t in tasks
    )
    assert set(statuses(store).values()) == {"submitted"}
    assert not store.journal_path.exists(), "run_apply leaves the state compacted"


def test_run_apply_with_the_sandbox_option_starts_one_of_its_own(
    tmp_path: Path, make_task: MakeTask
) -> None:
    from reconciler.apply import ApplyOptions, run_apply

    store = StateStore(tmp_path / "sandbox.json")
    store.create(sandbox=True)
    with store.lock():
        current = store.load()
        plan = make_plan([make_task(1), make_task(2)], current, now=NOW)
        result = run_apply(plan, current, store, ApplyOptions(sandbox=True))
    assert [o.kind for o in result.outcomes] == [OutcomeKind.SUBMITTED] * 2
    assert all(o.request_id for o in result.outcomes)
    assert set(statuses(store).values()) == {"submitted"}


def test_run_apply_without_credentials_or_sandbox_writes_nothing(
    make_task: MakeTask, store: StateStore
) -> None:
    from reconciler.apply import ApplyOptions, run_apply

    before = store.path.read_bytes()
    with store.lock():
        current = store.load()
        plan = make_plan([make_task(1)], current, now=NOW)
        with pytest.raises(ValueError, match="credentials"):
            run_apply(plan, current, store, ApplyOptions())
    assert store.path.read_bytes() == before and not store.journal_path.exists()
