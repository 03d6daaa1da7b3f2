"""Tests for reconciler.state: the snapshot, its write-ahead journal, and the lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.state import (
    STATE_VERSION,
    Recording,
    State,
    StateEntry,
    StateError,
    StateExistsError,
    StateLockedError,
    StateStore,
    TaskStatus,
    utc_timestamp,
)
from reconciler.state import file as state_module
from reconciler.state.model import EvidenceSource, entry_fields
from reconciler.tasks import request_hash

FIXTURES = Path(__file__).parent / "fixtures" / "state"
ROOT = Path(__file__).resolve().parent.parent
FIXTURE_HASHES = (
    "4b900c691e26cf678d9b360885d7699c8cb3927b24baab2568f0462c7e9705f2",
    "6410fc5e694f0181bf2e8ad4b4ec1f2ea837363b6327271ea5a61389806cab49",
)
JOURNAL_HASH = "a7f4c95b20c1b60e2517f2abbd9e8d974eed3458ebaab2f0841586094b948774"
SOME_TIME = "2026-11-20T19:10:00Z"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_entry(n: int, status: TaskStatus = TaskStatus.PENDING, **changes: Any) -> StateEntry:
    stream = f"clip-{n}"
    path = {"publishDomain": "push.example.com", "appName": "live", "streamName": stream}
    body = {
        **path,
        "recordTimes": [{"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:05:00Z"}],
        "saveBucket": "highlights",
        "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
        "recordFileType": "flv;mp4",
    }
    fields: dict[str, Any] = {
        "status": status,
        "name": stream,
        "source": f"manifests/{stream}.yaml",
        "request": {"path": path, "body": body},
        "updated_at": SOME_TIME,
    }
    if status is TaskStatus.SUBMITTED:
        fields.update(request_id=f"{n:032x}", submitted_at=SOME_TIME)
    fields.update(changes)
    if "hash" not in fields:
        fields["hash"] = hash_of(fields["request"], n)
    return StateEntry(**fields)


def hash_of(request: Any, n: int = 0) -> str:
    """The task's real identity; a stand-in for requests that cannot be hashed (or stored)."""
    try:
        return request_hash(json.loads(json.dumps(request, default=dict)))
    except (TypeError, ValueError):
        return sha(f"task-{n}")


def state_of(*entries: StateEntry) -> State:
    return State({entry.hash: entry for entry in entries})


def submitted(entry: StateEntry, request_id: str = "r" * 32) -> StateEntry:
    return StateEntry(
        entry.hash,
        TaskStatus.SUBMITTED,
        entry.name,
        entry.source,
        entry.request,
        "2026-11-20T19:11:00Z",
        request_id,
        "2026-11-20T19:11:00Z",
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "reconciler-state.json", lock_timeout=5)


def use_fixture(store: StateStore, name: str, *, journal: str | None = None) -> bytes:
    """Copy a fixture into place as the store's snapshot (and journal); returns the bytes."""
    data = (FIXTURES / name).read_bytes()
    store.path.write_bytes(data)
    if journal is not None:
        shutil.copyfile(FIXTURES / journal, store.journal_path)
    return data


def files_in(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -- round trip and format ----------------------------------------------------------------------


def test_a_missing_file_is_an_empty_state_and_loading_creates_nothing(store: StateStore) -> None:
    assert store.load() == State()
    assert len(store.load()) == 0
    assert files_in(store.path.parent) == set()


def test_entries_round_trip_through_the_journal_and_the_snapshot(store: StateStore) -> None:
    first = [make_entry(1), make_entry(2, TaskStatus.SUBMITTED)]
    store.append(first)
    assert store.load() == state_of(*first)
    assert not store.path.exists(), "append must never write the snapshot"

    assert store.compact() == state_of(*first)
    assert not store.journal_path.exists()
    assert store.load() == state_of(*first)

    later = [submitted(first[0]), make_entry(3)]
    store.append(later)
    assert store.load() == state_of(later[0], first[1], later[1])


def test_the_snapshot_is_sorted_indented_json_as_in_the_fixture(store: StateStore) -> None:
    expected = (FIXTURES / "v2.json").read_bytes()
    state = StateStore(FIXTURES / "v2.json").load()
    store.write(state)
    assert store.path.read_bytes() == expected
    assert expected.endswith(b"}\n") and not expected.endswith(b"\n\n")
    assert "决赛".encode() in expected, "non-ASCII is written as itself, not as \\u escapes"


def test_the_fixture_loads_with_every_field(store: StateStore) -> None:
    use_fixture(store, "v1.json")
    state = store.load()
    assert sorted(state.entries) == sorted(FIXTURE_HASHES)
    done, waiting = (state.entries[key] for key in FIXTURE_HASHES)
    assert done.status is TaskStatus.SUBMITTED
    assert done.request_id == "c5b0e8a2d7f44c1a9b3e6f0d2a7c8e91"
    assert done.submitted_at == "2026-11-20T19:10:02Z"
    assert done.request["path"]["streamName"] == "cup-final"
    assert waiting.status is TaskStatus.PENDING
    assert (waiting.request_id, waiting.submitted_at) == (None, None)
    assert waiting.source == "manifests/决赛/goal-2.yaml"


def test_rewriting_an_unchanged_state_gives_identical_bytes(store: StateStore) -> None:
    original = use_fixture(store, "v2.json")
    store.write(store.load())
    assert store.path.read_bytes() == original
    # Replaying entries the snapshot already holds and compacting changes nothing either.
    store.append(list(store.load().entries.values()))
    store.compact()
    assert store.path.read_bytes() == original


def test_the_request_may_be_any_mapping(store: StateStore) -> None:
    entry = make_entry(1)
    frozen = StateEntry(
        hash_of({"path": entry.request["path"], "body": {}}),
        entry.status,
        entry.name,
        entry.source,
        MappingProxyType({"path": MappingProxyType(dict(entry.request["path"])), "body": {}}),
        entry.updated_at,
    )
    store.append([frozen])
    store.compact()
    assert store.load().entries[frozen.hash].request == {"path": entry.request["path"], "body": {}}


# -- sandbox states, exists and create ----------------------------------------------------------

EMPTY_REAL = b'{\n  "tasks": {},\n  "version": 2\n}\n'
EMPTY_SANDBOX = b'{\n  "sandbox": true,\n  "tasks": {},\n  "version": 2\n}\n'


def test_create_writes_an_empty_real_state_with_no_sandbox_field(store: StateStore) -> None:
    assert not store.exists()
    created = store.create()
    assert created == State() and created.sandbox is False
    assert store.exists()
    assert store.path.read_bytes() == EMPTY_REAL
    assert files_in(store.path.parent) == {store.path.name, store.lock_path.name}
    assert store.load() == State()


def test_a_sandbox_state_keeps_its_flag_through_every_write(store: StateStore) -> None:
    assert store.create(sandbox=True) == State(sandbox=True)
    assert store.path.read_bytes() == EMPTY_SANDBOX
    assert store.load().sandbox is True
    store.append([make_entry(1), make_entry(2)])
    loaded = store.load()
    assert loaded == State(state_of(make_entry(1), make_entry(2)).entries, sandbox=True)
    assert loaded.with_entries([make_entry(3)]).sandbox is True
    assert loaded.without(make_entry(1).hash).sandbox is True
    assert store.compact().sandbox is True
    assert json.loads(store.path.read_bytes())["sandbox"] is True
    assert store.path.read_bytes().startswith(b'{\n  "sandbox": true,\n  "tasks": {\n')
    store.write(store.load().without(make_entry(1).hash))
    assert store.load() == State(state_of(make_entry(2)).entries, sandbox=True)
    assert json.loads(store.path.read_bytes())["sandbox"] is True


def test_a_real_state_is_written_as_before(store: StateStore) -> None:
    original = use_fixture(store, "v2.json")
    assert store.load().sandbox is False
    store.append([make_entry(1)])
    store.compact()
    store.write(store.load().without(make_entry(1).hash))
    assert store.path.read_bytes() == original


def test_the_fingerprint_tells_a_sandbox_state_from_a_real_one(store: StateStore) -> None:
    store.create(sandbox=True)
    store.append([make_entry(1)])
    sandbox = store.compact()
    real = State(sandbox.entries)
    assert real != sandbox
    assert real.fingerprint() != sandbox.fingerprint()
    # Each is still the sha256 of its canonical compact JSON, the sandbox field included.
    assert sandbox.fingerprint() == sha(
        state_module.compact_json(json.loads(store.path.read_bytes()))
    )
    store.path.unlink()
    store.write(real)
    assert real.fingerprint() == sha(state_module.compact_json(json.loads(store.path.read_bytes())))


def test_write_never_turns_a_sandbox_state_into_a_real_one(store: StateStore) -> None:
    store.create(sandbox=True)
    store.append([make_entry(1)])
    with pytest.raises(StateError, match="sandbox") as caught:
        store.write(state_of(make_entry(1)))
    assert str(caught.value).startswith(str(store.path))
    assert store.load().sandbox is True


def test_write_never_turns_a_real_state_into_a_sandbox_one(store: StateStore) -> None:
    original = use_fixture(store, "v1.json")
    with pytest.raises(StateError, match="sandbox"):
        store.write(State(store.load().entries, sandbox=True))
    assert store.path.read_bytes() == original


@pytest.mark.parametrize("value", ["false", '"true"', "1", "null", "{}"])
def test_a_sandbox_field_that_is_not_true_is_refused(store: StateStore, value: str) -> None:
    data = EMPTY_SANDBOX.replace(b"true", value.encode())
    store.path.write_bytes(data)
    with pytest.raises(StateError) as caught:
        store.load()
    message = str(caught.value)
    assert message.startswith(str(store.path))
    assert "'sandbox'" in message and value in message and "left untouched" in message
    assert_every_write_refused(store)
    assert store.path.read_bytes() == data


def test_a_journal_without_a_snapshot_is_a_real_state(store: StateStore) -> None:
    # What a first apply killed before its first compaction left behind (older versions).
    store.append([make_entry(1)])
    assert store.exists()
    assert store.load() == state_of(make_entry(1))
    assert store.load().sandbox is False
    store.compact()
    assert "sandbox" not in json.loads(store.path.read_bytes())


def test_create_refuses_an_existing_snapshot(store: StateStore) -> None:
    original = use_fixture(store, "v1.json")
    for sandbox in (False, True):
        with pytest.raises(StateExistsError) as caught:
            store.create(sandbox=sandbox)
        assert isinstance(caught.value, StateError)
        message = str(caught.value)
        assert str(store.path) in message and "nothing was changed" in message
    assert store.path.read_bytes() == original
    assert files_in(store.path.parent) == {store.path.name, store.lock_path.name}


def test_create_refuses_a_journal_without_a_snapshot(store: StateStore) -> None:
    store.append([make_entry(1)])
    journal = store.journal_path.read_bytes()
    with pytest.raises(StateExistsError) as caught:
        store.create()
    assert str(store.journal_path) in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    assert not store.path.exists()
    assert store.journal_path.read_bytes() == journal
    assert store.load() == state_of(make_entry(1))


def test_create_syncs_the_new_snapshot_like_every_snapshot_write(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("fsync", "replace"):
        real = getattr(os, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(os, name, spy)
    store.create()
    monkeypatch.undo()
    # The file's data before the rename, the directory after it.
    assert calls[-3:] == ["fsync", "replace", "fsync"]
    assert not [name for name in files_in(store.path.parent) if name.endswith(".tmp")]


def test_a_sandbox_apply_creates_its_state_under_the_lock_then_appends(
    store: StateStore,
) -> None:
    for _ in range(2):  # the second run finds the state the first created
        with store.lock():
            if not store.exists():
                store.create(sandbox=True)
            store.append([make_entry(len(store.load()))])
            store.compact()
    assert store.load() == State(state_of(make_entry(0), make_entry(1)).entries, sandbox=True)


def test_create_waits_for_the_lock(tmp_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    store = StateStore(tmp_path / "reconciler-state.json", lock_timeout=0.1)
    with pytest.raises(StateLockedError):
        store.create()
    assert not store.path.exists()


# -- refusing what it cannot read ---------------------------------------------------------------


def test_an_unknown_future_version_is_refused_and_never_rewritten(store: StateStore) -> None:
    original = use_fixture(store, "future-v3.json")
    with pytest.raises(StateError) as caught:
        store.load()
    message = str(caught.value)
    assert str(store.path) in message
    assert "version 3" in message and f"understands versions 1 and {STATE_VERSION}" in message
    assert_every_write_refused(store)
    assert store.path.read_bytes() == original
    assert not store.journal_path.exists(), "nothing may be journalled beside a newer state"


def assert_every_write_refused(store: StateStore) -> None:
    """compact, write and append all refuse a state file this reconciler cannot read."""
    for attempt in (
        store.compact,
        lambda: store.write(State()),
        lambda: store.append([make_entry(1)]),
    ):
        with pytest.raises(StateError):
            attempt()


@pytest.mark.parametrize(
    ("fixture", "where"),
    [
        ("truncated.json", r":\d+:\d+: the state file is not valid JSON"),
        ("unknown-status.json", r": task 4b900c69\w+: unknown status 'sent'"),
    ],
)
def test_a_damaged_snapshot_is_an_error_naming_the_file_and_is_never_overwritten(
    store: StateStore, fixture: str, where: str
) -> None:
    original = use_fixture(store, fixture)
    with pytest.raises(StateError, match=re.escape(str(store.path)) + where):
        store.load()
    assert_every_write_refused(store)
    assert store.path.read_bytes() == original
    assert files_in(store.path.parent) == {store.path.name}


def test_the_json_error_position_is_reported_as_line_and_column(store: StateStore) -> None:
    store.path.write_text('{\n  "tasks": {},\n  "version": 1,\n}\n')
    with pytest.raises(StateError, match=re.escape(f"{store.path}:4:1: ")):
        store.load()


def mutated(change: str) -> bytes:
    document = json.loads((FIXTURES / "v1.json").read_bytes())
    task = document["tasks"][FIXTURE_HASHES[0]]
    if change == "empty file":
        return b""
    if change == "not an object":
        return b"[]\n"
    if change == "no version":
        del document["version"]
    elif change == "version as text":
        document["version"] = "1"
    elif change == "version true":
        document["version"] = True
    elif change == "version 1.0":
        return json.dumps(document).replace('"version": 1', '"version": 1.0').encode()
    elif change == "unknown top-level field":
        document["owner"] = "someone"
    elif change == "tasks is a list":
        document["tasks"] = []
    elif change == "task is a string":
        document["tasks"][FIXTURE_HASHES[0]] = "submitted"
    elif change == "missing name":
        del task["name"]
    elif change == "unknown field":
        task["requestid"] = "typo"
    elif change == "key is not a sha256":
        document["tasks"] = {"cup-final-goal-1": task}
    elif change == "upper-case key":
        document["tasks"] = {FIXTURE_HASHES[0].upper(): task}
    elif change == "bad timestamp":
        task["updatedAt"] = "2026-11-20 19:10:02"
    elif change == "request is a list":
        task["request"] = []
    elif change == "requestId is a number":
        task["requestId"] = 42
    elif change == "status is null":
        task["status"] = None
    else:
        raise AssertionError(change)
    return json.dumps(document, indent=2).encode()


@pytest.mark.parametrize(
    "change",
    [
        "empty file",
        "not an object",
        "no version",
        "version as text",
        "version true",
        "version 1.0",
        "unknown top-level field",
        "tasks is a list",
        "task is a string",
        "missing name",
        "unknown field",
        "key is not a sha256",
        "upper-case key",
        "bad timestamp",
        "request is a list",
        "requestId is a number",
        "status is null",
    ],
)
def test_every_wrong_shape_is_refused(store: StateStore, change: str) -> None:
    data = mutated(change)
    store.path.write_bytes(data)
    with pytest.raises(StateError) as caught:
        store.load()
    assert str(caught.value).startswith(str(store.path))
    with pytest.raises(StateError):
        store.compact()
    assert store.path.read_bytes() == data


# -- integrity: every hash is the sha256 of its recorded request --------------------------------


def test_a_request_edited_by_hand_in_the_snapshot_is_refused(store: StateStore) -> None:
    document = json.loads((FIXTURES / "v1.json").read_bytes())
    document["tasks"][FIXTURE_HASHES[1]]["request"]["body"]["saveBucket"] = "elsewhere"
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    store.path.write_bytes(data)
    with pytest.raises(StateError) as caught:
        store.load()
    message = str(caught.value)
    assert message.startswith(f"{store.path}: task {FIXTURE_HASHES[1]}: ")
    assert "edited by hand" in message and "left untouched" in message
    assert_every_write_refused(store)
    assert store.path.read_bytes() == data
    assert files_in(store.path.parent) == {store.path.name}


def test_a_request_edited_by_hand_in_a_journal_line_is_refused(store: StateStore) -> None:
    use_fixture(store, "v1.json", journal="journal-torn.jsonl")
    lines = store.journal_path.read_bytes().split(b"\n")
    assert b'"recordFileType":"mp4"' in lines[1]
    lines[1] = lines[1].replace(b'"recordFileType":"mp4"', b'"recordFileType":"flv;mp4"')
    journal = b"\n".join(lines)
    store.journal_path.write_bytes(journal)
    with pytest.raises(StateError) as caught:
        store.load()
    message = str(caught.value)
    assert message.startswith(f"{store.journal_path}:2: ")
    assert "edited by hand" in message and "journal was left untouched" in message
    assert_every_write_refused(store)
    assert store.journal_path.read_bytes() == journal


def test_reformatting_a_request_by_hand_changes_nothing(store: StateStore) -> None:
    # The hash is of the canonical form: key order and layout are not part of a request.
    document = json.loads((FIXTURES / "v1.json").read_bytes())
    for task in document["tasks"].values():
        task["request"] = {key: task["request"][key] for key in reversed(task["request"])}
    store.path.write_text(json.dumps(document, ensure_ascii=False))
    assert store.load() == StateStore(FIXTURES / "v1.json").load()


def test_a_request_that_cannot_be_hashed_is_an_error_naming_the_task(store: StateStore) -> None:
    data = (FIXTURES / "v1.json").read_bytes().replace(b'"highlights"', b'"\\ud800"', 1)
    store.path.write_bytes(data)
    with pytest.raises(StateError, match=re.escape(f"{store.path}: task ")):
        store.load()


def test_append_refuses_an_entry_filed_under_another_hash(store: StateStore) -> None:
    store.append([make_entry(1)])
    journal = store.journal_path.read_bytes()
    misfiled = make_entry(2, hash=make_entry(3).hash)
    with pytest.raises(ValueError, match="not the sha256 of its request"):
        store.append([make_entry(4), misfiled])
    assert store.journal_path.read_bytes() == journal
    assert store.load() == state_of(make_entry(1))


# -- the journal ----------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_journal_is_created_0644_and_keeps_a_mode_it_was_given(store: StateStore) -> None:
    previous = os.umask(0o022)
    try:
        store.append([make_entry(1)])
        assert stat.S_IMODE(store.journal_path.stat().st_mode) == 0o644, "Git records 0755"
        store.journal_path.chmod(0o600)
        store.append([make_entry(2)])
        assert stat.S_IMODE(store.journal_path.stat().st_mode) == 0o600
        store.compact()
        store.append([make_entry(3)])  # a new journal after the compaction removed the old one
        assert stat.S_IMODE(store.journal_path.stat().st_mode) == 0o644
    finally:
        os.umask(previous)


def test_a_torn_last_journal_line_is_ignored(store: StateStore) -> None:
    use_fixture(store, "v1.json", journal="journal-torn.jsonl")
    state = store.load()
    assert sorted(state.entries) == sorted([*FIXTURE_HASHES, JOURNAL_HASH])
    # The two whole lines count; the torn third would have made goal-3 submitted.
    assert state.entries[JOURNAL_HASH].status is TaskStatus.PENDING
    assert state.entries[FIXTURE_HASHES[1]].status is TaskStatus.SUBMITTED


def test_appending_after_a_torn_line_keeps_the_new_entries(store: StateStore) -> None:
    use_fixture(store, "v1.json", journal="journal-torn.jsonl")
    before = store.load()
    store.append([make_entry(1)])
    assert store.load() == before.with_entries([make_entry(1)])
    lines = store.journal_path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def test_a_last_line_of_zeros_is_ignored_and_repaired(store: StateStore) -> None:
    # What a power cut can leave: the file grew, but the block never reached the disk.
    store.append([make_entry(1)])
    with store.journal_path.open("ab") as journal:
        journal.write(b"\0" * 300 + b"\n")
    assert store.load() == state_of(make_entry(1))
    store.append([make_entry(2)])
    assert store.load() == state_of(make_entry(1), make_entry(2))


@pytest.mark.parametrize("torn", [b"", b'{"hash":"', b"x" * 30_000, b"\0" * 30_000 + b"\n"])
def test_repairing_the_tail_reads_back_as_far_as_long_lines_need(
    store: StateStore, torn: bytes
) -> None:
    long = make_entry(1, request={"padding": "y" * 20_000})  # longer than one tail read
    store.append([make_entry(0), long])
    with store.journal_path.open("ab") as journal:
        journal.write(torn)
    store.append([make_entry(2)])
    assert store.load() == state_of(make_entry(0), long, make_entry(2))


def test_a_corrupt_line_in_the_middle_is_an_error_naming_the_journal_line(
    store: StateStore,
) -> None:
    use_fixture(store, "v1.json", journal="journal-corrupt-middle.jsonl")
    journal = store.journal_path.read_bytes()
    with pytest.raises(StateError, match=re.escape(f"{store.journal_path}:2:")):
        store.load()
    with pytest.raises(StateError):
        store.compact()
    assert store.journal_path.read_bytes() == journal


def test_a_journal_line_of_the_wrong_shape_is_an_error_naming_the_line(store: StateStore) -> None:
    store.append([make_entry(1)])
    line = json.loads(store.journal_path.read_bytes())
    line["status"] = "sent"
    with store.journal_path.open("a") as journal:
        journal.write(json.dumps(line) + "\n")
    store.append([make_entry(2)])
    with pytest.raises(StateError, match=re.escape(f"{store.journal_path}:2: unknown status")):
        store.load()


def test_names_with_line_separators_stay_on_one_journal_line(store: StateStore) -> None:
    odd = make_entry(1, name="a\nb\u2028c\u0085d\re", source="x\u2029y.yaml")
    store.append([odd, make_entry(2)])
    assert store.journal_path.read_bytes().count(b"\n") == 2
    assert store.load() == state_of(odd, make_entry(2))
    store.compact()
    assert store.load() == state_of(odd, make_entry(2))


def test_replaying_a_journal_the_snapshot_already_holds_changes_nothing(
    store: StateStore,
) -> None:
    store.append([make_entry(1), make_entry(2)])
    store.append([submitted(make_entry(1))])
    journal = store.journal_path.read_bytes()
    folded = store.compact()
    snapshot = store.path.read_bytes()
    # A crash between os.replace and removing the journal leaves both behind.
    store.journal_path.write_bytes(journal)
    assert store.load() == folded
    assert store.compact() == folded
    assert store.path.read_bytes() == snapshot
    assert not store.journal_path.exists()


def test_append_writes_and_syncs_once_per_batch_and_never_touches_the_snapshot(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(state_of(*(make_entry(n) for n in range(100))))
    snapshot = os.stat(store.path)
    store.append([make_entry(1000)])  # creates the journal (and syncs its directory)
    calls: list[str] = []
    for name in ("write", "fsync", "replace"):
        real = getattr(os, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(os, name, spy)
    for start in range(2000, 2200, 20):
        size = store.journal_path.stat().st_size
        batch = [make_entry(n) for n in range(start, start + 20)]
        store.append(batch)
        grown = store.journal_path.stat().st_size - size
        assert grown == sum(len(state_module._journal_line(entry)) for entry in batch)
    monkeypatch.undo()
    assert calls == ["write", "fsync"] * 10
    after = os.stat(store.path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        snapshot.st_ino,
        snapshot.st_mtime_ns,
        snapshot.st_size,
    )
    assert len(store.load()) == 100 + 1 + 200


def test_a_failed_append_leaves_nothing_behind(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([make_entry(1)])
    journal = store.journal_path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError, match=re.escape(str(store.journal_path))):
        store.append([make_entry(2), make_entry(3)])
    monkeypatch.undo()
    assert store.journal_path.read_bytes() == journal


def test_an_entry_that_cannot_be_stored_is_refused_before_anything_is_written(
    store: StateStore,
) -> None:
    store.append([make_entry(1)])
    journal = store.journal_path.read_bytes()
    for request in ({"when": datetime.now(UTC)}, {"ratio": float("nan")}, {"name": "\ud800"}):
        with pytest.raises(ValueError, match="cannot be stored"):
            store.append([make_entry(2), make_entry(3, request=request)])
    assert store.journal_path.read_bytes() == journal


def test_appends_from_many_threads_all_arrive_whole(store: StateStore) -> None:
    def work(worker: int) -> None:
        for batch in range(25):
            base = worker * 1000 + batch * 4
            store.append([make_entry(n) for n in range(base, base + 4)])

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.load()) == 8 * 25 * 4
    assert store.journal_path.read_bytes().count(b"\n") == 8 * 25 * 4


# -- compaction and write -------------------------------------------------------------------------


def test_a_crash_at_the_rename_of_a_compaction_loses_nothing(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(state_of(make_entry(1), make_entry(2)))
    store.append([submitted(make_entry(1)), make_entry(3)])
    snapshot = store.path.read_bytes()
    journal = store.journal_path.read_bytes()
    expected = store.load()

    def crash(source: Any, target: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateError, match=re.escape(str(store.path))):
        store.compact()
    monkeypatch.undo()
    assert store.path.read_bytes() == snapshot
    assert store.journal_path.read_bytes() == journal
    assert files_in(store.path.parent) == {store.path.name, store.journal_path.name}
    assert store.load() == expected
    assert store.compact() == expected


def test_compaction_removes_temporary_files_of_killed_writers(store: StateStore) -> None:
    store.append([make_entry(1)])
    leftovers = [f"{store.path.name}.0badc0de.tmp", f"{store.path.name}.lock.info.12345678.tmp"]
    for name in leftovers:
        (store.path.parent / name).write_text("{")
    unrelated = store.path.parent / "notes.0badc0de.tmp"
    unrelated.write_text("mine")
    store.compact()
    assert files_in(store.path.parent) == {store.path.name, unrelated.name}


def test_write_is_not_undone_by_an_older_journal(store: StateStore) -> None:
    store.append([make_entry(1), make_entry(2)])
    state = store.load()
    # `state rm` and `mark-submitted`: the journal still says otherwise about both tasks.
    store.write(state.without(make_entry(1).hash).with_entries([submitted(make_entry(2))]))
    assert store.load() == state_of(submitted(make_entry(2)))
    assert not store.journal_path.exists()


def test_a_crash_inside_write_leaves_the_state_before_or_after_it(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([make_entry(1), make_entry(2)])
    before = store.load()
    real_replace = os.replace
    replaced: list[str] = []

    def crash_on_the_second(source: Any, target: Any) -> None:
        if replaced:
            raise OSError(5, "Input/output error")
        replaced.append(str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_the_second)
    with pytest.raises(StateError):
        store.write(before.without(make_entry(1).hash))
    monkeypatch.undo()
    assert store.load() == before


def test_a_reader_without_the_lock_survives_a_compaction_between_its_reads(
    store: StateStore,
) -> None:
    store.write(state_of(make_entry(1)))
    store.append([submitted(make_entry(1)), make_entry(2)])
    expected = store.load()
    writer = StateStore(store.path)
    reader = StateStore(store.path)
    real_read_journal = reader._read_journal
    compacted: list[bool] = []

    def read_journal_after_a_compaction() -> bytes:
        if not compacted:
            compacted.append(True)
            writer.compact()  # the snapshot the reader holds is now stale, the journal gone
        return real_read_journal()

    with mock.patch.object(reader, "_read_journal", read_journal_after_a_compaction):
        assert reader.load() == expected
    assert compacted


# -- the lock -------------------------------------------------------------------------------------


def test_the_lock_records_its_holder_while_held(store: StateStore) -> None:
    with store.lock():
        holder = store.lock_holder()
        assert holder is not None
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", holder.since)
        with store.lock():  # re-entrant
            pass
        assert store.lock_holder() == holder
    assert store.lock_holder() is None
    assert not store.lock_info_path.exists()


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    with holding_lock(tmp_path / "reconciler-state.json") as process:
        yield process


@contextlib.contextmanager
def holding_lock(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds the lock of the state at `path` until the block ends."""
    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "hold_lock.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        assert process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def test_a_second_process_waits_then_fails_naming_the_holder(
    tmp_path: Path, lock_holder: subprocess.Popen[str]
) -> None:
    store = StateStore(tmp_path / "reconciler-state.json", lock_timeout=0.2)
    with pytest.raises(StateLockedError) as caught, store.lock():
        pytest.fail("the lock was taken while another process held it")
    error = caught.value
    assert error.holder is not None and error.holder.pid == lock_holder.pid
    message = str(error)
    assert str(store.path) in message
    assert f"pid {lock_holder.pid}" in message
    assert socket.gethostname() in message
    assert error.holder.since in message

    assert lock_holder.stdin is not None
    lock_holder.stdin.close()
    lock_holder.wait(timeout=30)
    with store.lock():
        holder = store.lock_holder()
        assert holder is not None and holder.pid == os.getpid()


def test_the_lock_error_says_so_when_the_holder_is_unknown(
    tmp_path: Path, lock_holder: subprocess.Popen[str]
) -> None:
    store = StateStore(tmp_path / "reconciler-state.json", lock_timeout=0)
    store.lock_info_path.unlink()
    with pytest.raises(StateLockedError, match="unknown process") as caught, store.lock():
        pass
    assert caught.value.holder is None


# -- a state path that is a symbolic link ---------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """`reconciler-state.json` -> `shared/state.json` (relative, as `ln -s` is usually used)."""
    (tmp_path / "shared").mkdir()
    link = tmp_path / "reconciler-state.json"
    link.symlink_to(Path("shared") / "state.json")
    return link, tmp_path / "shared" / "state.json"


def assert_still_a_link(link: Path) -> None:
    assert link.is_symlink(), f"{link} was replaced by a regular file"
    assert os.readlink(link) == os.path.join("shared", "state.json")


def test_every_write_through_a_link_goes_to_its_target(linked: tuple[Path, Path]) -> None:
    link, target = linked
    original = (FIXTURES / "v2.json").read_bytes()
    target.write_bytes(original)
    store = StateStore(link, lock_timeout=5)
    with store.lock():
        store.append([make_entry(1)])
        assert (target.parent / "state.json.journal").exists()
        assert (target.parent / "state.json.lock.info").exists()
        assert files_in(link.parent) == {"shared", link.name}, "nothing beside the link"
        store.compact()
    assert_still_a_link(link)
    assert StateStore(target).load() == store.load()
    assert make_entry(1).hash in store.load().entries
    store.write(store.load().without(make_entry(1).hash))
    assert_still_a_link(link)
    assert target.read_bytes() == original
    assert files_in(link.parent) == {"shared", link.name}
    assert files_in(target.parent) == {"state.json", "state.json.lock"}


def test_a_chain_of_links_is_followed_to_its_end(linked: tuple[Path, Path]) -> None:
    link, target = linked
    (link.parent / "alias.json").symlink_to(link.name)
    store = StateStore(link.parent / "alias.json")
    assert (store.path, store.target) == (link.parent / "alias.json", target)
    store.create(sandbox=True)
    store.append([make_entry(1)])
    store.compact()
    assert (link.parent / "alias.json").is_symlink()
    assert_still_a_link(link)
    assert StateStore(target).load() == State(state_of(make_entry(1)).entries, sandbox=True)


def test_a_link_to_a_file_not_there_yet_is_created_as_its_target(
    linked: tuple[Path, Path],
) -> None:
    link, target = linked
    store = StateStore(link)
    assert not store.exists()
    assert store.load() == State()
    store.create()
    assert_still_a_link(link)
    assert target.read_bytes() == b'{\n  "tasks": {},\n  "version": 2\n}\n'
    with pytest.raises(StateExistsError):
        store.create()
    # And a journal first (no snapshot yet): compaction creates the target, not a file at the link.
    target.unlink()
    store.append([make_entry(1)])
    assert store.exists()
    store.compact()
    assert_still_a_link(link)
    assert StateStore(target).load() == state_of(make_entry(1))


def test_two_names_of_one_state_share_its_lock(linked: tuple[Path, Path]) -> None:
    link, target = linked
    other = link.parent / "other-name.json"
    other.symlink_to(target)  # absolute, unlike the first
    with holding_lock(link) as holder:
        for name in (other, target):
            store = StateStore(name, lock_timeout=0.1)
            with pytest.raises(StateLockedError) as caught, store.lock():
                pytest.fail(f"{name} was locked while {link} held the lock")
            assert caught.value.holder is not None and caught.value.holder.pid == holder.pid
    with StateStore(other, lock_timeout=5).lock():
        pass


def test_messages_name_the_link_and_its_target(linked: tuple[Path, Path]) -> None:
    link, target = linked
    target.write_bytes(b'{"tasks": {}, "version": 3}\n')
    store = StateStore(link, lock_timeout=0)
    shown = f"{link} (-> {os.path.join(link.parent, 'shared', 'state.json')})"
    assert store.shown == shown
    with pytest.raises(StateError) as caught:
        store.load()
    assert str(caught.value).startswith(f"{shown}: the state file is version 3")
    with holding_lock(target), pytest.raises(StateLockedError) as locked, store.lock():
        pass
    assert str(locked.value).startswith(f"{shown} is locked by pid")
    plain = StateStore(target)
    assert plain.shown == str(target) and plain.target == target


def test_a_loop_of_links_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "a.json").symlink_to("b.json")
    (tmp_path / "b.json").symlink_to("a.json")
    store = StateStore(tmp_path / "a.json")
    with pytest.raises(StateError, match=re.escape(str(tmp_path / "a.json"))):
        store.load()
    with pytest.raises(StateError, match="a loop of symbolic links"):
        store.create()
    with pytest.raises(StateError):
        store.write(State())
    assert (tmp_path / "a.json").is_symlink() and (tmp_path / "b.json").is_symlink()


# -- crash at any instant: kill -9 ----------------------------------------------------------------


def check_acknowledged(state: State, acked: dict[int, int], batch: int) -> None:
    """Every acknowledged iteration is in `state`; nothing else is, but the one in flight."""
    by_name = {entry.name: entry for entry in state.entries.values()}
    for group in acked:
        for index in range(batch):
            entry = by_name.get(f"g{group}-t{index}")
            assert entry is not None, f"acknowledged task g{group}-t{index} was lost"
            if group + 1 in acked and group + 1 > acked[group + 1]:
                assert entry.status is TaskStatus.SUBMITTED, f"g{group}-t{index} went back"
    for name in by_name:
        group = int(name[1:].split("-")[0])
        assert group in acked or group - 1 in acked, f"{name} appeared from nowhere"


@pytest.mark.parametrize("seed", [1, 2])
def test_a_kill_at_any_instant_loses_no_acknowledged_entry(tmp_path: Path, seed: int) -> None:
    chance = random.Random(seed)
    path = tmp_path / "reconciler-state.json"
    batch = 25
    acked: dict[int, int] = {}  # group -> first group of its writer
    for trial in range(8):
        first = trial * 1000
        script = FIXTURES / "append_until_killed.py"
        process = subprocess.Popen(
            [sys.executable, str(script), str(path), str(first), str(batch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert process.stdout is not None
        assert process.stdout.readline() == f"acked {first}\n", "the writer did not start"
        # Then a random instant, spread over appends, syncs, compactions and the steps between
        # (a compaction takes longer as the state grows, so later trials often die inside one).
        time.sleep(chance.uniform(0, 0.04))
        process.kill()
        process.wait(timeout=30)
        # Read through the text buffers: the readline above may already hold later lines,
        # which communicate() (reading the raw pipes) would never return.
        assert process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()
        process.stdout.close()
        process.stderr.close()
        assert "Traceback" not in err, err
        late = out.splitlines()  # printed before the kill, read only now: acknowledged too
        assert all(line.startswith("acked ") for line in late), late
        for group in range(first, first + 1 + len(late)):
            acked[group] = first
        check_acknowledged(StateStore(path).load(), acked, batch)
    # A killed holder's lock is released by the system; its leftover details do not block.
    store = StateStore(path, lock_timeout=1)
    with store.lock():
        folded = store.compact()
    check_acknowledged(folded, acked, batch)
    assert store.load() == folded


# -- State ----------------------------------------------------------------------------------------


def test_the_fingerprint_changes_exactly_when_the_state_does() -> None:
    state = state_of(make_entry(1), make_entry(2))
    same = state_of(make_entry(2), make_entry(1))
    assert state.fingerprint() == same.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", state.fingerprint())
    assert state.with_entries([make_entry(1)]).fingerprint() == state.fingerprint()
    changed = [
        state.with_entries([submitted(make_entry(1))]),
        state.with_entries([make_entry(1, name="renamed")]),
        state.with_entries([make_entry(1, source="elsewhere.yaml")]),
        state.with_entries([make_entry(1, updated_at="2026-11-20T19:10:01Z")]),
        state.with_entries([make_entry(3)]),
        state.without(make_entry(2).hash),
        State(),
    ]
    prints = {state.fingerprint(), *(other.fingerprint() for other in changed)}
    assert len(prints) == len(changed) + 1


def test_the_fingerprint_survives_a_round_trip(store: StateStore) -> None:
    state = state_of(make_entry(1), submitted(make_entry(2)))
    store.append(list(state.entries.values()))
    assert store.load().fingerprint() == state.fingerprint()
    assert store.compact().fingerprint() == state.fingerprint()
    assert store.load().fingerprint() == state.fingerprint()


def test_find_by_full_hash_or_unique_prefix() -> None:
    one, two = make_entry(1), make_entry(2)
    state = state_of(one, two)
    assert state.find(one.hash) == one
    assert state.find(one.hash[:6]) == one
    assert state.find(two.hash[:12].upper()) == two


def test_find_refuses_short_unknown_and_ambiguous_prefixes() -> None:
    one = make_entry(1)
    twin = make_entry(2, hash=one.hash[:10] + "0" * 54)
    state = state_of(one, twin)
    with pytest.raises(StateError, match="at least 6"):
        state.find(one.hash[:5])
    with pytest.raises(StateError, match="not a task hash"):
        state.find("clip-1")
    with pytest.raises(StateError, match="no task"):
        state.find("ffffffffff" if not one.hash.startswith("ff") else "0000000000")
    with pytest.raises(StateError, match="ambiguous") as caught:
        state.find(one.hash[:8])
    assert one.hash[:12] in str(caught.value) and twin.hash[:12] in str(caught.value)
    assert state.find(one.hash[:11]) in (one, twin)


def test_a_state_is_read_only_and_keeps_entries_under_their_hash() -> None:
    state = state_of(make_entry(1))
    with pytest.raises(TypeError):
        state.entries[make_entry(2).hash] = make_entry(2)  # type: ignore[index]
    with pytest.raises(ValueError, match="filed under"):
        State({make_entry(2).hash: make_entry(1)})
    assert state.get(make_entry(1).hash) == make_entry(1)
    assert state.get(make_entry(2).hash) is None
    assert state.without(make_entry(9).hash) == state


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hash": "abc123"}, "64 lower-case hex"),
        ({"hash": sha("x").upper()}, "64 lower-case hex"),
        ({"status": "sent"}, "unknown status"),
        ({"name": None}, "name must be a string"),
        ({"request": ["path", "body"]}, "request must be a JSON object"),
        ({"updated_at": "2026-11-20T19:10:00"}, "updated_at"),
        ({"submitted_at": "yesterday"}, "submitted_at"),
        ({"request_id": 7}, "request_id"),
    ],
)
def test_an_entry_checks_its_fields(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_entry(1, **change)


def test_a_status_given_as_text_becomes_the_enum() -> None:
    text: Any = "submitted"  # as JSON gives it
    assert make_entry(1, status=text).status is TaskStatus.SUBMITTED


def test_utc_timestamp() -> None:
    east = timezone(timedelta(hours=8))
    assert (
        utc_timestamp(datetime(2026, 11, 21, 3, 4, 5, 999, tzinfo=east)) == "2026-11-20T19:04:05Z"
    )
    with pytest.raises(ValueError, match="naive"):
        utc_timestamp(datetime(2026, 11, 21))


# -- properties -----------------------------------------------------------------------------------

# Same hash, same request: entries that share a hash differ in everything but the request.
REQUEST_POOL = [{"path": {"streamName": f"pool-{n}"}, "body": {"n": n}} for n in range(6)]
HASH_POOL = [request_hash(request) for request in REQUEST_POOL]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(utc_timestamp)


@st.composite
def entries_of(draw: st.DrawFn, requests: st.SearchStrategy[dict[str, Any]]) -> StateEntry:
    request = draw(requests)
    return StateEntry(
        request_hash(request),
        draw(st.sampled_from(TaskStatus)),
        draw(st.text(max_size=20)),
        draw(st.text(max_size=20)),
        request,
        draw(timestamps),
        draw(st.none() | st.text(max_size=32)),
        draw(st.none() | timestamps),
    )


entries = entries_of(st.sampled_from(REQUEST_POOL))
any_entries = entries_of(st.dictionaries(st.text(max_size=6), json_values, max_size=3))


class Killed(BaseException):
    """The process died here."""


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(entries, min_size=1, max_size=4)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("compact killed at rename")),
        st.tuples(st.just("append killed mid-write"), entries, st.floats(0, 1)),
        st.tuples(st.just("remove"), st.sampled_from(HASH_POOL)),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_any_sequence_of_operations_loads_as_the_model(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = StateStore(Path(directory) / "state.json")
        model: dict[str, StateEntry] = {}
        for step in steps:
            kind = step[0]
            if kind == "append":
                store.append(step[1])
                model.update((entry.hash, entry) for entry in step[1])
            elif kind == "compact":
                assert store.compact() == State(model)
            elif kind == "compact killed at rename":
                with (
                    mock.patch.object(os, "replace", side_effect=Killed),
                    contextlib.suppress(Killed),
                ):
                    store.compact()
            elif kind == "append killed mid-write":
                _, entry, fraction = step
                # Dies part-way through the entry's line: never further than its last byte.
                cut = min(
                    int(len(state_module._journal_line(entry)) * fraction),
                    len(state_module._journal_line(entry)) - 1,
                )

                def torn_write(fd: int, data: bytes, _cut: int = cut) -> None:
                    os.write(fd, data[:_cut])
                    raise Killed

                with (
                    mock.patch.object(state_module, "_write_all", torn_write),
                    contextlib.suppress(Killed),
                ):
                    store.append([entry])
            elif kind == "remove":
                store.write(store.load().without(step[1]))
                model.pop(step[1], None)
            loaded = store.load()
            assert loaded == State(model)
            assert loaded.fingerprint() == State(model).fingerprint()


@settings(max_examples=100, deadline=None)
@given(any_entries)
def test_any_entry_round_trips_byte_stably(entry: StateEntry) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = StateStore(Path(directory) / "state.json")
        store.append([entry])
        assert store.load() == state_of(entry)
        store.compact()
        assert store.load() == state_of(entry)
        snapshot = store.path.read_bytes()
        store.write(store.load())
        assert store.path.read_bytes() == snapshot


def test_removal_records_drop_marked_tasks_and_survive_compaction(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    kept, dropped = make_entry(1), make_entry(2)
    store.append([kept, dropped])
    store.append([], removed=[dropped.hash])
    assert set(store.load().entries) == {kept.hash}
    # A later re-mark of the same hash wins over the earlier removal (journal order).
    store.append([dropped])
    assert set(store.load().entries) == {kept.hash, dropped.hash}
    store.append([], removed=[dropped.hash])
    assert set(store.compact().entries) == {kept.hash}
    assert set(StateStore(tmp_path / "state.json").load().entries) == {kept.hash}
    with pytest.raises(ValueError, match="not a task hash"):
        store.append([], removed=["nope"])


# -- version 2: evidence of recordings (DESIGN §7), and version 1 states still read ------------


def test_a_version_1_state_reads_as_it_is_and_is_written_as_version_2(store: StateStore) -> None:
    """A state written before recording evidence keeps every entry and every identity."""
    original = use_fixture(store, "v1.json")
    before = json.loads(original)
    state = store.load()
    assert sorted(state.entries) == sorted(before["tasks"]), "identities unchanged"
    assert not state.recordings and not state.unmatched
    for key, entry in state.entries.items():
        assert entry.external_id is None, "nothing says an id was sent before version 2"
        assert entry_fields(entry) == before["tasks"][key]
    assert store.path.read_bytes() == original, "reading never rewrites"
    store.write(state)
    after = json.loads(store.path.read_bytes())
    assert after["version"] == 2
    assert after["tasks"] == before["tasks"]


def test_evidence_survives_a_round_trip_through_the_journal_and_the_snapshot(
    store: StateStore,
) -> None:
    use_fixture(store, "v2.json")
    state = store.load()
    done = next(k for k, e in state.entries.items() if e.status is TaskStatus.SUBMITTED)
    assert [r.format for r in state.recordings_of(done)] == ["mp4", "flv"]
    assert state.recording(done).state.value == "recorded"  # type: ignore[union-attr]
    assert len(state.unmatched) == 1
    extra = Recording("8" * 64, "storage", "mp4", "success", "2026-11-21T00:00:00Z")
    with store.lock():
        assert store.record_evidence([(done, extra), (done, extra)]) == 1
        assert store.record_evidence([(done, extra)]) == 0, "the same evidence is kept once"
        store.append([submitted(state.entries[done])])  # apply's record never erases evidence
        folded = store.load()
        store.compact()
    assert store.load() == folded
    assert [r.evidence for r in folded.recordings_of(done)] == ["5" * 64, "6" * 64, "8" * 64]


def test_a_removed_mark_with_evidence_stays(store: StateStore) -> None:
    """apply removes the marks of tasks it never sent; evidence says the service processed it."""
    store.create()
    entry = make_entry(1)
    with store.lock():
        store.claim([entry])
        found = Recording("9" * 64, "callback", "mp4", "success", "2026-11-21T00:00:00Z")
        store.record_evidence([(entry.hash, found)])
        store.append([], removed=[entry.hash])
        state = store.load()
    assert entry.hash in state.entries and state.settled(entry.hash)


def test_a_version_1_file_with_version_2_fields_is_refused(store: StateStore) -> None:
    document = json.loads((FIXTURES / "v1.json").read_bytes())
    first = next(iter(document["tasks"].values()))
    first["taskExternalId"] = "rc-" + "0" * 32
    store.path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(StateError, match="taskExternalId in a version 1 state"):
        store.load()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda task: task.__setitem__("recordings", {}), "'recordings' must be a JSON array"),
        (
            lambda task: task.__setitem__("recordings", [{"format": "mp4"}]),
            "recording 1: recording: missing",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("source", "rumour"),
            "unknown evidence source",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("evidence", "x"),
            "evidence must be a sha256",
        ),
        (lambda task: task["recordings"][0].__setitem__("size", 3), "unknown field(s) size"),
        # Values JSON can hold that are no text at all (unhashable ones included): refused,
        # never a traceback.
        (
            lambda task: task["recordings"][0].__setitem__("source", []),
            "unknown evidence source []",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("source", {"x": 1}),
            "unknown evidence source {'x': 1}",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("status", ["success"]),
            "status must be a string",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("evidence", {"x": 1}),
            "evidence must be a sha256",
        ),
        (
            lambda task: task["recordings"][0].__setitem__("downloadUrl", 3),
            "download_url must be a string",
        ),
    ],
)
def test_a_hand_edited_recording_is_refused_naming_the_task(
    store: StateStore, change: Any, message: str
) -> None:
    document = json.loads((FIXTURES / "v2.json").read_bytes())
    task = next(t for t in document["tasks"].values() if "recordings" in t)
    change(task)
    store.path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(StateError) as caught:
        store.load()
    assert message in str(caught.value) and str(store.path) in str(caught.value)


# -- the load cache: a second load reads only what was appended --------------------------------


def count_snapshot_parses(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    parses = [0]
    parse = store._parse_snapshot

    def counted(data: Any) -> Any:
        parses[0] += 1
        return parse(data)

    monkeypatch.setattr(store, "_parse_snapshot", counted)
    return parses


def test_a_second_load_of_an_unchanged_state_parses_nothing_again(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fixture(store, "v2.json")
    parses = count_snapshot_parses(store, monkeypatch)
    first = store.load()
    assert store.load() is first and parses == [1]  # nothing new: the same (immutable) State
    with store.lock():
        store.append([make_entry(1)])
    assert store.load() == first.with_entries([make_entry(1)])
    assert parses == [1], "appended journal lines are folded onto the cached state"
    fresh = StateStore(store.path).load()
    assert store.load() == fresh


def test_the_cache_follows_the_content_not_the_file_identity(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process rewrites the snapshot or the journal: what is there now is read."""
    store.create()
    with store.lock():
        store.append([make_entry(1)])
    store.load()
    # The journal replaced by another one, holding another task.
    entry2 = make_entry(2)
    line = state_module._journal_line(entry2)
    store.journal_path.write_bytes(line)
    assert set(store.load().entries) == {entry2.hash}
    # The snapshot rewritten in place with other content of the same length.
    store.compact()
    data = store.path.read_bytes()
    swapped = json.loads(data)
    swapped["tasks"][entry2.hash]["name"] = swapped["tasks"][entry2.hash]["name"][::-1]
    rewritten = json.dumps(swapped, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"
    assert len(rewritten) == len(data) and rewritten != data
    with open(store.path, "r+b") as handle:
        handle.write(rewritten)
    assert store.load().entries[entry2.hash].name == entry2.name[::-1]


def test_a_bad_line_appended_after_a_cached_load_is_named_by_its_line(store: StateStore) -> None:
    store.create()
    with store.lock():
        store.append([make_entry(1), make_entry(2)])
    store.load()
    with open(store.journal_path, "ab") as handle:
        handle.write(b'{"hash": 3}\n{"hash": "x"}\n')
    with pytest.raises(StateError, match=r"\.journal:3: "):
        store.load()


HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
# Any text JSON can carry in a UTF-8 file (lone surrogates cannot be written, by either writer).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)))


@given(
    key=HEX64,
    evidence=HEX64,
    source=st.sampled_from(list(EvidenceSource)),
    fmt=ANY_TEXT,
    status=ANY_TEXT,
    received_at=st.datetimes(min_value=datetime(2000, 1, 1)).map(
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
    optional=st.fixed_dictionaries(
        {}, optional={"download_url": ANY_TEXT, "file_size": ANY_TEXT, "duration": ANY_TEXT}
    ),
)
def test_a_recordings_journal_line_is_its_compact_json(
    key: str,
    evidence: str,
    source: EvidenceSource,
    fmt: str,
    status: str,
    received_at: str,
    optional: dict[str, str],
) -> None:
    # The journal writes recording lines field by field, for speed; the text must be what
    # compact_json writes of the recording's JSON, whatever its values.
    from reconciler.state.model import compact_json

    recording = Recording(evidence, source, fmt, status, received_at, **optional)
    expected = compact_json({"hash": key, "recording": recording.to_json()}) + "\n"
    assert state_module._recording_line(key, recording) == expected.encode("utf-8")
