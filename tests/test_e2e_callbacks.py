"""End to end with real processes: a real PostgreSQL, `reconciler receive`, and the sandbox
posting JD Cloud's record callbacks over loopback after `apply` (DESIGN §7a, issue "Recorded,
not just accepted").

A `pending` task left by an apply killed with kill -9 is settled by its callback, and a
following `apply --retry-pending` does not send it again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from reconciler.state import open_state
from tests.test_e2e import accepted_streams, cli, start_cli, write_manifests
from tests.test_receiver import Receiver
from tests.test_state_postgres_e2e import (
    WAIT,
    apply_args,
    clean_env,
    init_db,
    named,
    no_traceback,
    requested,
    wait_for,
)

pytestmark = pytest.mark.e2e


def notify_url(receiver: Receiver) -> str:
    return f"http://{receiver.host}:{receiver.port}/callbacks/{receiver.token}"


def recordings_by_stream(state: str) -> dict[str, str]:
    with open_state(state) as store:
        current = store.load()
    found = {}
    for key, entry in current.entries.items():
        summary = current.recording(key)
        found[entry.request["path"]["streamName"]] = summary.words if summary else "?"
    return found


def test_callbacks_from_the_sandbox_reach_the_state_through_the_receiver(
    tmp_path: Path, sandbox_factory: Any, receiver_factory: Any, postgres_database: str
) -> None:
    state = named(postgres_database, "e2e")
    init_db(state, tmp_path)
    receiver: Receiver = receiver_factory(state, env=clean_env())
    box: Sandbox = sandbox_factory(
        record_after=0.2, notify_url=notify_url(receiver), callback_duplicates=0.3, seed=7
    )
    write_manifests(tmp_path / "clips", 12)
    done = cli(*apply_args(state), cwd=tmp_path, env=clean_env(box))
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(
        lambda: set(recordings_by_stream(state).values()) == {"recorded"},
        "every clip recorded through the receiver",
    )
    assert box.counts().callbacks_failed == 0
    listed = cli(
        "state", "list", "--state", state, "--format", "json", cwd=tmp_path, env=clean_env()
    )
    assert listed.returncode == 0, listed.stderr
    assert receiver.stop() == 0
    assert receiver.token not in receiver.output() and receiver.token not in listed.stdout
    events = receiver.events("callback")
    assert {event.get("outcome") for event in events} <= {"matched", "duplicate"}
    assert sum(event.get("outcome") == "matched" for event in events) == 12


def test_a_pending_task_left_by_kill_9_is_settled_by_its_callback_and_never_resent(
    tmp_path: Path, sandbox_factory: Any, receiver_factory: Any, postgres_database: str
) -> None:
    state = named(postgres_database, "killed")
    init_db(state, tmp_path)
    receiver: Receiver = receiver_factory(state, env=clean_env())
    # Slow answers: the apply is killed while requests are in the sandbox's hands; the
    # sandbox still accepts them, records them and calls back.
    box: Sandbox = sandbox_factory(
        latency_ms=400, record_after=0.2, notify_url=notify_url(receiver), seed=3
    )
    write_manifests(tmp_path / "clips", 8)
    env = clean_env(box)
    victim = start_cli(*apply_args(state, "--concurrency", "4", "-q"), cwd=tmp_path, env=env)
    wait_for(lambda: requested(box) >= 4 or victim.poll() is not None, "requests in flight")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=WAIT)
    with open_state(state) as store:
        left = {
            entry.request["path"]["streamName"]
            for entry in store.load().entries.values()
            if entry.status.value == "pending"
        }
    assert left, "the kill left no task pending: the test did not test anything"
    time.sleep(0.6)  # the sandbox finishes the requests the dead apply left in its latency
    reached = set(accepted_streams(box))
    settled_expected = left & reached
    assert settled_expected, "no pending task reached the sandbox before the kill"
    wait_for(
        lambda: all(
            recordings_by_stream(state)[stream].startswith("pending settled by callback")
            for stream in settled_expected
        ),
        "the pending tasks settled by their callbacks",
    )
    before = accepted_streams(box)
    again = cli(*apply_args(state, "--retry-pending"), cwd=tmp_path, env=env, timeout=WAIT)
    no_traceback(again.stdout, again.stderr)
    after = accepted_streams(box)
    resent = sorted(s for s in settled_expected if after[s] > before[s])
    assert not resent, f"sent again although its callback settled it: {resent}"
    twice = sorted(stream for stream, count in after.items() if count > 1)
    assert not twice, f"accepted twice: {twice}"
    assert again.returncode == 0, again.stdout + again.stderr
    assert "settled" in again.stdout + again.stderr
