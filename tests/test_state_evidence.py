"""Recording evidence in the state (DESIGN §7): both homes, a callback matched and stored once,
nothing apply records erasing it, and states of version 1 read and upgraded.

The database cases run against the suite's real PostgreSQL server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.callbacks import parse_callback
from reconciler.plan import PlanAction, make_plan
from reconciler.state import (
    Recording,
    RecordingState,
    StateBackend,
    StateEntry,
    StateStore,
    TaskStatus,
    open_state,
)
from reconciler.state.model import generated_external_id
from reconciler.tasks import Task
from tests.postgres_server import PostgresServer

NOW = datetime(2026, 11, 21, tzinfo=UTC)
STAMP = "2026-11-20T20:00:00Z"


@pytest.fixture(params=["file", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateBackend]:
    if request.param == "file":
        backend: StateBackend = StateStore(tmp_path / "state.json", lock_timeout=5)
    else:
        uri = request.getfixturevalue("postgres_database")
        backend = open_state(uri, lock_timeout=5)
    backend.create()
    yield backend
    backend.close()


def entry_of(task: Task, status: TaskStatus = TaskStatus.SUBMITTED) -> StateEntry:
    return StateEntry(
        task.hash,
        status,
        task.name,
        task.source,
        task.request,
        STAMP,
        "r" * 32 if status is TaskStatus.SUBMITTED else None,
        STAMP if status is TaskStatus.SUBMITTED else None,
        generated_external_id(task.hash),
    )


def callback_for(task: Task, fmt: str = "mp4", **changes: Any) -> dict[str, Any]:
    body = task.request["body"]
    group = [
        {
            "beginTime": str(int(_epoch(s["startTime"]) * 1000)),
            "endTime": str(int(_epoch(s["endTime"]) * 1000)),
        }
        for s in body["recordTimes"]
    ]
    document: dict[str, Any] = {
        "version": "v1.1",
        "publishDomain": body["publishDomain"],
        "appName": body["appName"],
        "streamName": body["streamName"],
        "event": "record_done",
        "status": "success",
        "format": fmt,
        "duration": "300000.0",
        "fileSize": "6007851",
        "group": group,
        "downloadUrl": f"http://{body['saveEndpoint']}/{body['saveBucket']}/x.{fmt}",
        "taskExternalId": generated_external_id(task.hash),
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_a_callback_is_matched_stored_once_and_makes_the_task_recorded(
    store: StateBackend, make_task: Any
) -> None:
    task = make_task(1, recordFileType="flv;mp4")
    with store.lock():
        store.claim([entry_of(task)])
    first = store.record_callback(parse_callback(callback_for(task, "mp4")), STAMP)
    assert first.entry is not None and first.entry.hash == task.hash and not first.duplicate
    again = store.record_callback(parse_callback(callback_for(task, "mp4")), STAMP)
    assert again.duplicate and again.entry is not None
    summary = store.load().recording(task.hash)
    assert summary is not None and summary.state is RecordingState.AWAITING
    store.record_callback(parse_callback(callback_for(task, "flv")), STAMP)
    state = store.load()
    assert [r.format for r in state.recordings_of(task.hash)] == ["mp4", "flv"]
    assert state.recording(task.hash).state is RecordingState.RECORDED  # type: ignore[union-attr]


def test_a_failed_status_is_a_recording_failure(store: StateBackend, make_task: Any) -> None:
    task = make_task(1)
    with store.lock():
        store.claim([entry_of(task)])
    store.record_callback(parse_callback(callback_for(task, status="failed")), STAMP)
    summary = store.load().recording(task.hash)
    assert summary is not None and summary.state is RecordingState.FAILED
    assert summary.words == "recording failed"


def test_without_an_id_the_stream_and_segments_match(store: StateBackend, make_task: Any) -> None:
    task, other = make_task(1), make_task(2)
    with store.lock():
        store.claim([entry_of(task), entry_of(other)])
    stored = store.record_callback(parse_callback(callback_for(task, taskExternalId=None)), STAMP)
    assert stored.entry is not None and stored.entry.hash == task.hash


def test_an_unknown_id_is_kept_unmatched_with_its_reason(
    store: StateBackend, make_task: Any
) -> None:
    task = make_task(1)
    with store.lock():
        store.claim([entry_of(task)])
    body = callback_for(task, taskExternalId="nobody-sent-this")
    stored = store.record_callback(parse_callback(body), STAMP)
    assert stored.entry is None and "nobody-sent-this" in (stored.reason or "")
    assert store.record_callback(parse_callback(body), STAMP).duplicate
    state = store.load()
    assert [c.body for c in state.unmatched] == [body]
    assert not state.recordings


def test_a_pending_task_with_a_callback_is_settled_and_never_sent_again(
    store: StateBackend, make_task: Any
) -> None:
    task = make_task(1)
    pending = entry_of(task, TaskStatus.PENDING)
    with store.lock():
        store.claim([pending])
    store.record_callback(parse_callback(callback_for(task)), STAMP)
    state = store.load()
    assert state.settled(task.hash)
    plan = make_plan([task], state, now=NOW)
    assert [item.action for item in plan.items] == [PlanAction.UNCHANGED]
    summary = plan.items[0].recording
    assert summary is not None and summary.words == "pending settled by callback; recorded"
    # Removing the mark (apply does for a task it never sent) keeps a task with evidence.
    with store.lock():
        store.append([], removed=[task.hash])
    assert task.hash in store.load().entries


def test_apply_recording_its_answer_after_the_callback_keeps_both(
    store: StateBackend, make_task: Any
) -> None:
    """A callback that arrives while apply waits for the answer, then the answer."""
    task = make_task(1)
    with store.lock():
        store.claim([entry_of(task, TaskStatus.PENDING)])
        store.record_callback(parse_callback(callback_for(task)), STAMP)
        store.append([entry_of(task)])  # the answer: submitted, with its requestId
    state = store.load()
    entry = state.entries[task.hash]
    assert entry.status is TaskStatus.SUBMITTED and entry.request_id == "r" * 32
    assert state.recording(task.hash).state is RecordingState.RECORDED  # type: ignore[union-attr]


def test_storage_evidence_is_recorded_once(store: StateBackend, make_task: Any) -> None:
    task = make_task(1)
    with store.lock():
        store.claim([entry_of(task)])
    found = Recording("a" * 64, "storage", "mp4", "success", STAMP, "http://s3/b/k.mp4")
    assert store.record_evidence([(task.hash, found)]) == 1
    assert store.record_evidence([(task.hash, found)]) == 0
    assert store.load().recordings_of(task.hash) == (found,)


def test_migrate_copies_evidence_both_ways(
    tmp_path: Path, make_task: Any, postgres_database: str
) -> None:
    from reconciler.state.migrate import migrate

    source = StateStore(tmp_path / "a.json")
    source.create()
    task = make_task(1)
    with source.lock():
        source.claim([entry_of(task)])
    source.record_callback(parse_callback(callback_for(task)), STAMP)
    source.record_callback(parse_callback(callback_for(task, taskExternalId="x-1")), STAMP)
    expected = source.load()
    with open_state(postgres_database) as database:
        migrate(source, database)
        copied = database.load()
    assert dict(copied.recordings) == dict(expected.recordings)
    assert [c.body for c in copied.unmatched] == [c.body for c in expected.unmatched]
    back = StateStore(tmp_path / "b.json")
    with open_state(postgres_database) as database:
        migrate(database, back)
    assert back.load() == expected


def test_version_1_tables_are_upgraded_in_place_keeping_every_row(
    postgres_server: PostgresServer, postgres_database: str, make_task: Any
) -> None:
    """Tables written by the version before evidence: read, upgraded once, identities kept."""
    from reconciler.state import postgres

    database = postgres_database.rsplit("/", 1)[1]
    postgres_server.execute("CREATE SCHEMA reconciler", database)
    postgres_server.execute(postgres._CREATE_TABLES, database)
    task = make_task(1)
    request = json.dumps(dict(task.request), sort_keys=True, separators=(",", ":"))
    postgres_server.execute(
        "INSERT INTO reconciler.states (name, sandbox) VALUES ('default', false)", database
    )
    postgres_server.execute(
        "INSERT INTO reconciler.tasks (state, hash, status, name, source, request, request_id, "
        f"updated_at, submitted_at) VALUES ('default', '{task.hash}', 'submitted', "
        f"'{task.name}', '{task.source}', '{request}', 'r1', '{STAMP}', '{STAMP}')",
        database,
    )
    with open_state(postgres_database) as store:
        state = store.load()
        assert list(state.entries) == [task.hash]
        assert state.entries[task.hash].external_id is None
        version = postgres_server.execute(
            "SELECT value FROM reconciler.meta WHERE key = 'schema_version'", database
        )
        assert version == [("2",)]
        # A task sent before version 2 carried no generated id: only stream and segments match.
        stored = store.record_callback(
            parse_callback(callback_for(task, taskExternalId=None)), STAMP
        )
        assert stored.entry is not None and stored.entry.hash == task.hash


def test_apply_sends_every_task_with_a_taskexternalid_and_records_it(
    tmp_path: Path, make_task: Any
) -> None:
    from reconciler.apply import ApplyOptions, run_apply
    from reconciler.sandbox import running_sandbox

    ours, own = make_task(1), make_task(2, taskExternalId="cup-final-goal-2")
    store = StateStore(tmp_path / "state.json")
    store.create(sandbox=True)
    with running_sandbox() as box, store.lock():
        current = store.load()
        plan = make_plan([ours, own], current, now=NOW)
        options = ApplyOptions(credentials=box.credentials, endpoint=box.url, concurrency=2)
        assert run_apply(plan, current, store, options).exit_code == 0
        sent = {a["path"]["streamName"]: a["body"]["taskExternalId"] for a in box.accepted()}
    assert sent == {"clip-1": generated_external_id(ours.hash), "clip-2": "cup-final-goal-2"}
    assert generated_external_id(ours.hash) == "rc-" + ours.hash[:32]
    state = store.load()
    assert sorted(state.entries) == sorted([ours.hash, own.hash]), "identities: as declared"
    assert state.entries[ours.hash].external_id == "rc-" + ours.hash[:32]
    assert state.entries[own.hash].external_id == "cup-final-goal-2"
    assert "rc-" + ours.hash[:32] in (tmp_path / "state.json").read_text()


def test_a_long_running_receiver_keeps_the_file_journal_short(
    tmp_path: Path, make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.state import file as state_file

    monkeypatch.setattr(state_file, "_RECEIVER_JOURNAL_BYTES", 2000)
    store = StateStore(tmp_path / "state.json")
    store.create()
    tasks = [make_task(n) for n in range(8)]
    with store.lock():
        store.claim([entry_of(task) for task in tasks])
    for task in tasks:
        store.record_callback(parse_callback(callback_for(task)), STAMP)
    assert store.journal_path.stat().st_size <= 2000 + 1500, "the journal was compacted"
    state = store.load()
    assert all(state.recording(t.hash).state is RecordingState.RECORDED for t in tasks)  # type: ignore[union-attr]
    assert json.loads(store.path.read_text())["tasks"][tasks[0].hash]["recordings"]
