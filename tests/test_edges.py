"""Exactly once at every edge (DESIGN §3): the real CLI, real sockets, the sandbox on loopback.

Each test is one way a user could get a clip sent twice, or lost, that the CLI must refuse.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from reconciler.state import StateStore
from tests.test_e2e import (
    MANIFEST,
    accepted_streams,
    cli,
    env_for,
    init_state,
    start_cli,
    state_by_stream,
    write_manifests,
)

pytestmark = pytest.mark.e2e


def no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text


def files_beside(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.name.startswith("reconciler-state")}


# --- saved plans ----------------------------------------------------------------------------


def edited_plan(folder: Path, edit: Any) -> None:
    path = folder / "plan.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def to_create(names: set[str]) -> Any:
    def edit(document: dict[str, Any]) -> None:
        for item in document["items"]:
            if item["name"] in names:
                item["action"] = "create"

    return edit


def tripled(document: dict[str, Any]) -> None:
    creates = [item for item in document["items"] if item["action"] == "create"]
    document["items"].extend(creates * 2)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (to_create({"clip-0"}), "is create in the plan, but planning it now gives unchanged"),
        (to_create({"clip-1"}), "is create in the plan, but planning it now gives pending"),
        (tripled, "is listed more than once"),
    ],
    ids=["unchanged-to-create", "pending-to-create", "item-copied-three-times"],
)
def test_an_edited_saved_plan_sends_nothing(
    tmp_path: Path, sandbox_factory: Any, edit: Any, expected: str
) -> None:
    manifests = write_manifests(tmp_path / "clips", 3)
    init_state(tmp_path)
    # clip-0 submitted, clip-1 pending (a dropped answer), clip-2 still to send.
    for n, box in ((0, sandbox_factory()), (1, sandbox_factory(drop_rate=1.0))):
        single = tmp_path / f"single-{n}"
        single.mkdir()
        (single / "clip.yaml").write_text(MANIFEST.format(n=n))
        cli("apply", str(single), cwd=tmp_path, env=env_for(box))
    assert state_by_stream(tmp_path / "reconciler-state.json") == {
        "stream-0": "submitted",
        "stream-1": "pending",
    }
    box = sandbox_factory()
    env = env_for(box)
    made = cli("plan", str(manifests), "--out", "plan.json", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    edited_plan(tmp_path, edit)
    before = (tmp_path / "reconciler-state.json").read_bytes()
    refused = cli("apply", "plan.json", cwd=tmp_path, env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert expected in refused.stderr and "nothing was sent" in refused.stderr
    assert box.accepted() == []
    assert (tmp_path / "reconciler-state.json").read_bytes() == before
    no_traceback(refused.stdout, refused.stderr)


def test_a_waiting_item_turned_create_is_not_sent_before_its_recording_ends(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    # A clip whose recording ends in the future: `waiting`.
    future = MANIFEST.format(n=1).replace("2026-11-01T10:01:00Z", "2099-01-01T10:01:00Z")
    (folder / "future.yaml").write_text(
        future.replace("2026-11-01T10:00:00Z", "2099-01-01T10:00:00Z")
    )
    init_state(tmp_path)
    box = sandbox_factory()
    env = env_for(box)
    assert cli("plan", str(folder), "--out", "plan.json", cwd=tmp_path, env=env).returncode == 0
    edited_plan(tmp_path, to_create({"clip-1"}))
    refused = cli("apply", "plan.json", cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "planning it now gives waiting" in refused.stderr
    assert box.accepted() == []


@pytest.mark.parametrize(
    "extra",
    [("--selector", "batch=e2e"), ("--settle", "0"), ("--settle", "300"), ("clips",)],
    ids=["selector", "settle-0", "settle-default-value", "more-paths"],
)
def test_options_that_change_planning_beside_a_plan_file_are_usage_errors(
    tmp_path: Path, sandbox_factory: Any, extra: tuple[str, ...]
) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    init_state(tmp_path)
    box = sandbox_factory()
    env = env_for(box)
    assert cli("plan", str(manifests), "--out", "plan.json", cwd=tmp_path, env=env).returncode == 0
    refused = cli("apply", "plan.json", *extra, cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert box.accepted() == []
    assert state_by_stream(tmp_path / "reconciler-state.json") == {}
    no_traceback(refused.stderr)


# --- the state: missing, sandbox or real, reached through a link -----------------------------


def test_a_real_apply_refuses_a_missing_state_and_init_creates_one(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 3)
    box = sandbox_factory()
    env = env_for(box)
    refused = cli("apply", str(manifests), cwd=tmp_path, env=env)
    assert refused.returncode == 1
    message = refused.stderr
    assert "no state at reconciler-state.json" in message
    assert "wrong directory" in message and "not checked out" in message
    assert "reconciler init" in message and "nothing was sent" in message
    assert box.accepted() == [] and files_beside(tmp_path) == set()
    planned = cli("plan", str(manifests), cwd=tmp_path, env=env)
    assert planned.returncode == 0 and "warning: there is no state" in planned.stderr

    created = cli("init", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert json.loads((tmp_path / "reconciler-state.json").read_text()) == {
        "tasks": {},
        "version": 2,
    }
    again = cli("init", cwd=tmp_path, env=env)
    assert again.returncode == 1 and "already" in again.stderr
    applied = cli("apply", str(manifests), cwd=tmp_path, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(accepted_streams(box)) == ["stream-0", "stream-1", "stream-2"]
    assert cli("init", cwd=tmp_path, env=env).returncode == 1, "init never empties a state"
    assert len(state_by_stream(tmp_path / "reconciler-state.json")) == 3


def test_sandbox_and_real_states_never_mix(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    real = init_state(tmp_path)
    before = real.read_bytes()
    into_real = cli(
        "apply",
        str(manifests),
        "--sandbox",
        "--state",
        str(real),
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert into_real.returncode == 1, into_real.stdout + into_real.stderr
    assert "is a real state" in into_real.stderr
    assert real.read_bytes() == before and not Path(f"{real}.journal").exists()

    demo = cli("apply", str(manifests), "--sandbox", cwd=tmp_path, env=dict(os.environ))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    sandbox_state = tmp_path / "reconciler-state.sandbox.json"
    assert json.loads(sandbox_state.read_text())["sandbox"] is True
    box = sandbox_factory()
    into_sandbox = cli(
        "apply", str(manifests), "--state", str(sandbox_state), cwd=tmp_path, env=env_for(box)
    )
    assert into_sandbox.returncode == 1
    assert "is a sandbox state" in into_sandbox.stderr
    assert box.accepted() == []
    no_traceback(into_real.stderr, into_sandbox.stderr)


def test_a_state_reached_through_a_symbolic_link_stays_a_link(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    shared = tmp_path / "shared"
    shared.mkdir()
    target = init_state(shared, "state.json")
    link = tmp_path / "reconciler-state.json"
    link.symlink_to(target)
    box = sandbox_factory()
    applied = cli("apply", str(manifests), cwd=tmp_path, env=env_for(box))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert set(state_by_stream(target).values()) == {"submitted"}


# --- interrupts -------------------------------------------------------------------------------


def test_a_second_ctrl_c_aborts_at_once_and_records_every_answer_received(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 40)
    # Every answer takes 20 s: an apply that waited for the requests in flight would take that.
    box = sandbox_factory(latency_ms=20_000)
    state = init_state(tmp_path)
    run = start_cli("apply", str(manifests), "-c", "4", cwd=tmp_path, env=env_for(box))
    deadline = time.monotonic() + 30
    while box.counts().requests < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    run.send_signal(signal.SIGINT)
    time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=15)
    assert time.monotonic() - started < 10, "the second Ctrl-C waited for requests in flight"
    assert run.returncode == 130, out + err
    no_traceback(out, err)
    recorded = state_by_stream(state)
    assert len(recorded) == 4 and set(recorded.values()) == {"pending"}
    assert "Apply aborted" in out and "4 tasks were still in flight and stay pending" in out
    assert not Path(f"{state}.journal").exists(), "the journal was folded into the state"


# --- nothing sent is never pending ------------------------------------------------------------


def test_an_unreachable_endpoint_stops_the_run_and_leaves_nothing_pending(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 20)
    state = init_state(tmp_path)
    env = env_for(sandbox_factory())
    env["RECONCILER_ENDPOINT"] = "http://127.0.0.1:1"
    result = cli("apply", str(manifests), "-c", "1", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "19 not sent" in result.stdout
    assert "could not be reached" in result.stdout
    assert state_by_stream(state) == {}
    no_traceback(result.stdout, result.stderr)


def test_https_to_a_plain_http_server_is_nothing_sent(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 5)
    state = init_state(tmp_path)
    box: Sandbox = sandbox_factory()
    env = env_for(box)
    env["RECONCILER_ENDPOINT"] = box.url.replace("http://", "https://")
    result = cli("apply", str(manifests), "-c", "1", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert state_by_stream(state) == {}, "a TLS handshake failure sent nothing: nothing pending"
    assert box.accepted() == []


# --- endpoints and paths given by the user ----------------------------------------------------


@pytest.mark.parametrize("endpoint", ["localhost:8000", "ftp://x", "http://", "https://h/?q=1"])
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_malformed_endpoint_is_a_usage_error_before_anything(
    tmp_path: Path, sandbox_factory: Any, endpoint: str, how: str
) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    state = init_state(tmp_path)
    env = env_for(sandbox_factory())
    args: tuple[str, ...] = ("apply", str(manifests), "--lock-timeout", "0.5")
    if how == "option":
        args += ("--endpoint", endpoint)
    else:
        env["RECONCILER_ENDPOINT"] = endpoint
    # Another apply holds the lock: an apply that took the lock first would report that.
    with StateStore(state).lock():
        result = cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "endpoint" in result.stderr.lower() and result.stdout == ""
    assert "locked" not in result.stderr
    no_traceback(result.stderr)


def test_plan_out_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "clips", 1)
    init_state(tmp_path)
    result = cli(
        "plan", str(manifests), "--out", "missing/dir/p.json", cwd=tmp_path, env=dict(os.environ)
    )
    assert result.returncode == 1
    assert "cannot save the plan to missing/dir/p.json" in result.stderr
    assert "does not exist" in result.stderr
    no_traceback(result.stdout, result.stderr)


# --- messages ---------------------------------------------------------------------------------


def test_apply_github_warns_of_tasks_already_pending(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    init_state(tmp_path)
    cli("apply", str(manifests), cwd=tmp_path, env=env_for(sandbox_factory(drop_rate=1.0)))
    again = cli(
        "apply", str(manifests), "--format", "github", cwd=tmp_path, env=env_for(sandbox_factory())
    )
    assert again.returncode == 1
    warnings = [line for line in again.stdout.splitlines() if line.startswith("::warning ")]
    assert len(warnings) == 2 and all("pending clip-" in line for line in warnings), again.stdout


def test_a_selector_that_matches_nothing_says_so(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "clips", 2)
    init_state(tmp_path)
    result = cli(
        "plan",
        str(manifests),
        "-l",
        "batch=e2f",
        "--detailed-exitcode",
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert result.returncode == 0
    assert "no manifest has the label(s) batch=e2f" in result.stderr
