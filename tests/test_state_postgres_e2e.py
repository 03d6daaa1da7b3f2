"""The database state end to end (DESIGN §6): the real CLI, a real PostgreSQL, the sandbox.

Every state is read back through the CLI (`state list --format json`), as a user would, or
with plain SQL where a test checks that nothing in the database changed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from reconciler.sandbox import Sandbox
from tests.postgres_server import PostgresServer, free_port
from tests.test_e2e import (
    MANIFEST,
    accepted_streams,
    cli,
    env_for,
    start_cli,
    write_manifests,
)

pytestmark = pytest.mark.e2e

# Generous: a loaded 2-core machine runs several of these test sessions at once.
WAIT = 120.0


# --- helpers ----------------------------------------------------------------------------------


def clean_env(box: Sandbox | None = None) -> dict[str, str]:
    """The CLI's environment: the sandbox's credentials, no stray PG*, CI or state variables."""
    if box is not None:
        env = env_for(box)
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
        env["NO_COLOR"] = "1"
    for name in list(env):
        if name.startswith(("PG", "GITHUB_")) or name in ("CI_JOB_URL", "BUILD_URL"):
            del env[name]
    return env


def database_of(uri: str) -> str:
    return urlsplit(uri).path.lstrip("/")


def named(uri: str, name: str) -> str:
    return f"{uri}#{name}"


def shown(uri: str) -> str:
    """The URI as every message shows it: the password as `***`, the state's name spelled out."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}#{parts.fragment or 'default'}"


def no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text


def init_db(uri: str, cwd: Path) -> None:
    done = cli("init", "--state", uri, cwd=cwd, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr


def listed(state: str, cwd: Path) -> dict[str, dict[str, Any]]:
    """The state's entries by stream name, read through `state list --format json`."""
    done = cli("state", "list", "--state", state, "--format", "json", cwd=cwd, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    return {entry["request"]["path"]["streamName"]: entry for entry in document["tasks"]}


def statuses(state: str, cwd: Path) -> dict[str, str]:
    return {stream: entry["status"] for stream, entry in listed(state, cwd).items()}


def snapshot(server: PostgresServer, database: str) -> dict[str, list[str]]:
    """Every table of every non-system schema, row by row: to prove nothing changed."""
    tables = server.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " ORDER BY 1, 2",
        database,
    )
    content: dict[str, list[str]] = {}
    for schema, table in tables:
        rows = server.execute(
            f'SELECT row_to_json(t)::text FROM "{schema}"."{table}" t ORDER BY 1', database
        )
        content[f"{schema}.{table}"] = [row[0] for row in rows]
    return content


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def requested(box: Sandbox) -> int:
    return box.counts().requests


def apply_args(state: str, *extra: str) -> tuple[str, ...]:
    return ("apply", "clips", "--state", state, *extra)


# --- runner loss ------------------------------------------------------------------------------

RUNNER_TASKS = 120
RUNNER_CONCURRENCY = 4


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_a_lost_runner_loses_nothing_duplicates_nothing_and_leaves_no_lock(
    tmp_path: Path, sandbox_factory: Any, postgres_database: str, seed: int
) -> None:
    rng = random.Random(f"runner-loss-{seed}")
    state = named(postgres_database, "default")
    init_db(state, tmp_path)
    box: Sandbox = sandbox_factory(latency_ms=20, seed=seed)
    env = clean_env(box)
    args = apply_args(state, "--concurrency", str(RUNNER_CONCURRENCY), "-q")

    first = tmp_path / "runner-1"
    write_manifests(first / "clips", RUNNER_TASKS)
    victim = start_cli(*args, cwd=first, env=env)
    # A random moment: before any request (start-up, connecting, claiming) or after a random
    # number of requests have reached the sandbox (mid-send), plus a little jitter.
    target = 0 if rng.random() < 0.25 else rng.randrange(1, RUNNER_TASKS - 10)
    if target == 0:
        time.sleep(rng.uniform(0.0, 1.5))
    else:
        wait_for(lambda: requested(box) >= target or victim.poll() is not None, "requests")
        time.sleep(rng.uniform(0.0, 0.03))
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=WAIT)
    shutil.rmtree(first)  # the runner's disk is gone with it

    after_kill = accepted_streams(box)
    recorded = listed(state, tmp_path)
    assert set(after_kill) <= set(recorded), "accepted by the sandbox but not in the state"

    second = tmp_path / "runner-2"
    write_manifests(second / "clips", RUNNER_TASKS)
    again = cli(*args, "--lock-timeout", "5", cwd=second, env=env, timeout=WAIT)
    assert again.returncode in (0, 1), again.stdout + again.stderr
    assert "is locked by" not in again.stderr, "the killed runner left a stale lock"
    no_traceback(again.stdout, again.stderr)

    accepted = accepted_streams(box)
    twice = sorted(stream for stream, count in accepted.items() if count > 1)
    assert not twice, f"accepted twice: {twice}"
    final = listed(state, tmp_path)
    assert len(final) == RUNNER_TASKS, "every task is in the state: submitted or pending"
    assert set(accepted) <= set(final)
    request_ids = {task["path"]["streamName"]: task["requestId"] for task in box.accepted()}
    never_sent = []
    for stream, entry in final.items():
        if entry["status"] == "submitted":
            assert entry["requestId"] == request_ids.get(stream), f"{stream}: wrong requestId"
        else:
            assert entry["status"] == "pending", entry
            if stream not in accepted:
                never_sent.append(stream)
    # Claimed by the killed runner and never sent: only its write-ahead window.
    assert len(never_sent) <= 2 * RUNNER_CONCURRENCY, never_sent
    if again.returncode == 0:
        assert all(entry["status"] == "submitted" for entry in final.values())


# --- many appliers at once --------------------------------------------------------------------


@pytest.mark.slow
def test_six_appliers_at_once_on_one_database_send_each_task_once(
    tmp_path: Path, sandbox_factory: Any, postgres_database: str
) -> None:
    state = named(postgres_database, "default")
    init_db(state, tmp_path)
    box: Sandbox = sandbox_factory(latency_ms=20)
    env = clean_env(box)
    runners = []
    for n in range(6):
        folder = tmp_path / f"runner-{n}"
        write_manifests(folder / "clips", 60)
        runners.append(
            start_cli(*apply_args(state, "--lock-timeout", "300", "-q"), cwd=folder, env=env)
        )
    results = [(run.wait(timeout=600), *run.communicate()) for run in runners]
    assert [code for code, _, _ in results] == [0] * 6, results
    assert sorted(accepted_streams(box).values()) == [1] * 60
    assert set(statuses(state, tmp_path).values()) == {"submitted"}
    for _, out, err in results:
        no_traceback(out, err)


# --- migration --------------------------------------------------------------------------------


def file_state_with_pending(folder: Path, sandbox_factory: Any) -> Path:
    """A file state made by real applies: 5 tasks submitted, 2 pending (their answers lost)."""
    state = folder / "state.json"
    done = cli("init", "--state", str(state), cwd=folder, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    write_manifests(folder / "clips", 5)
    healthy = cli(
        "apply", "clips", "--state", str(state), cwd=folder, env=clean_env(sandbox_factory())
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    late = folder / "late"
    late.mkdir()
    (late / "late.yaml").write_text(MANIFEST.format(n=50) + "---\n" + MANIFEST.format(n=51))
    dropping = cli(
        "apply",
        "late",
        "--state",
        str(state),
        cwd=folder,
        env=clean_env(sandbox_factory(drop_rate=1.0)),
    )
    assert dropping.returncode == 1, dropping.stdout + dropping.stderr
    return state


def test_migration_round_trip_keeps_every_entry(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    original = file_state_with_pending(tmp_path, sandbox_factory)
    document = json.loads(original.read_text())
    assert Counter(e["status"] for e in document["tasks"].values()) == {
        "submitted": 5,
        "pending": 2,
    }
    database = named(postgres_database, "default")

    there = cli("state", "migrate", "state.json", database, cwd=tmp_path, env=clean_env())
    assert there.returncode == 0, there.stdout + there.stderr
    assert (
        f"Migrated 7 tasks (5 submitted, 2 pending) from state.json to {shown(database)}"
        in there.stdout
    ), there.stdout
    assert "verified entry by entry" in there.stdout
    assert postgres_server.password not in there.stdout + there.stderr
    assert json.loads(original.read_text()) == document, "the source is left as it was"

    # The database holds what the file held, entry by entry.
    from_file = cli(
        "state", "list", "-f", "json", "--state", "state.json", cwd=tmp_path, env=clean_env()
    )
    from_db = cli("state", "list", "-f", "json", "--state", database, cwd=tmp_path, env=clean_env())
    assert from_db.returncode == 0, from_db.stdout + from_db.stderr
    assert json.loads(from_db.stdout)["tasks"] == json.loads(from_file.stdout)["tasks"]
    assert json.loads(from_db.stdout)["state"] == shown(database)

    back = cli("state", "migrate", database, "back.json", cwd=tmp_path, env=clean_env())
    assert back.returncode == 0, back.stdout + back.stderr
    assert (
        f"Migrated 7 tasks (5 submitted, 2 pending) from {shown(database)} to back.json"
        in back.stdout
    ), back.stdout
    returned = json.loads((tmp_path / "back.json").read_text())
    # Every hash, status, requestId, name, source, request and timestamp came back unchanged.
    assert returned["tasks"] == document["tasks"]
    assert returned["version"] == document["version"]
    assert returned.get("sandbox", False) == document.get("sandbox", False)


def test_migration_refuses_a_non_empty_target_and_a_missing_source(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    original = file_state_with_pending(tmp_path, sandbox_factory)
    database = named(postgres_database, "default")
    first = cli("state", "migrate", "state.json", database, cwd=tmp_path, env=clean_env())
    assert first.returncode == 0, first.stdout + first.stderr
    before_db = snapshot(postgres_server, database_of(postgres_database))
    before_file = original.read_bytes()

    into_full_db = cli("state", "migrate", "state.json", database, cwd=tmp_path, env=clean_env())
    assert into_full_db.returncode == 1, into_full_db.stdout + into_full_db.stderr
    assert shown(database) in into_full_db.stderr
    into_full_file = cli("state", "migrate", database, "state.json", cwd=tmp_path, env=clean_env())
    assert into_full_file.returncode == 1, into_full_file.stdout + into_full_file.stderr
    missing_file = cli(
        "state",
        "migrate",
        "missing.json",
        named(postgres_database, "other"),
        cwd=tmp_path,
        env=clean_env(),
    )
    assert missing_file.returncode == 1, missing_file.stdout + missing_file.stderr
    assert "missing.json" in missing_file.stderr
    missing_db = cli(
        "state",
        "migrate",
        named(postgres_database, "nosuch"),
        "new.json",
        cwd=tmp_path,
        env=clean_env(),
    )
    assert missing_db.returncode == 1, missing_db.stdout + missing_db.stderr
    assert shown(named(postgres_database, "nosuch")) in missing_db.stderr

    assert snapshot(postgres_server, database_of(postgres_database)) == before_db
    assert original.read_bytes() == before_file
    assert not (tmp_path / "new.json").exists()
    for done in (into_full_db, into_full_file, missing_file, missing_db):
        no_traceback(done.stdout, done.stderr)
        assert postgres_server.password not in done.stdout + done.stderr


def test_a_migrated_sandbox_state_stays_a_sandbox_state(
    tmp_path: Path, sandbox_factory: Any, postgres_database: str
) -> None:
    write_manifests(tmp_path / "clips", 2)
    demo = cli("apply", "clips", "--sandbox", cwd=tmp_path, env=clean_env())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    database = named(postgres_database, "demo")
    moved = cli(
        "state", "migrate", "reconciler-state.sandbox.json", database, cwd=tmp_path, env=clean_env()
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    box: Sandbox = sandbox_factory()
    refused = cli(*apply_args(database), cwd=tmp_path, env=clean_env(box))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is a sandbox state" in refused.stderr
    assert box.accepted() == []


# --- the same commands, the same output -------------------------------------------------------

RUN_ID = re.compile(r"\b[a-z0-9]{32}\b")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
LOOPBACK = re.compile(r"127\.0\.0\.1:\d+")  # the sandboxes' ports differ between the runs


def normalised(text: str, state_shown: str) -> str:
    text = text.replace(state_shown, "<STATE>")
    text = RUN_ID.sub("<REQUEST-ID>", text)
    text = LOOPBACK.sub("<SANDBOX>", text)
    return TIMESTAMP.sub("<TIME>", text)


def scenario(folder: Path, state: str, sandbox_factory: Any) -> list[tuple[str, int, str, str]]:
    """One user's session with a state: every command, its exit code and its output."""
    write_manifests(folder / "clips", 3)
    (folder / "late").mkdir()
    (folder / "late" / "late.yaml").write_text(MANIFEST.format(n=7))
    healthy = clean_env(sandbox_factory())
    dropping = clean_env(sandbox_factory(drop_rate=1.0))
    for env in (healthy, dropping):
        env["RECONCILER_STATE"] = state
    steps: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        ("plan-empty", healthy, ("plan", "clips", "late")),
        ("apply", healthy, ("apply", "clips", "-c", "1")),
        ("apply-dropped", dropping, ("apply", "late", "-c", "1")),
        ("plan-pending", healthy, ("plan", "clips", "late", "--detailed-exitcode")),
        ("apply-pending", healthy, ("apply", "clips", "late", "-c", "1")),
        ("list", healthy, ("state", "list")),
        ("list-json", healthy, ("state", "list", "-f", "json")),
    ]
    outputs: list[tuple[str, int, str, str]] = []

    def run(
        step: str, env: dict[str, str], args: tuple[str, ...]
    ) -> subprocess.CompletedProcess[str]:
        done = cli(*args, cwd=folder, env=env)
        outputs.append((step, done.returncode, done.stdout, done.stderr))
        return done

    for step, env, args in steps:
        run(step, env, args)
    entries = json.loads(outputs[-1][2])["tasks"]
    by_name = {entry["name"]: entry["hash"] for entry in entries}
    run("show", healthy, ("state", "show", by_name["clip-0"][:12]))
    run("show-json", healthy, ("state", "show", by_name["clip-7"], "-f", "json"))
    run(
        "mark",
        healthy,
        ("state", "mark-submitted", by_name["clip-7"][:12], "--request-id", "manual-0001"),
    )
    run("rm", healthy, ("state", "rm", by_name["clip-1"][:12], "--yes"))
    (folder / "extra").mkdir()
    (folder / "extra" / "extra.yaml").write_text(MANIFEST.format(n=9))
    run("plan-out", healthy, ("plan", "clips", "late", "extra", "--out", "plan.json"))
    run("apply-plan", healthy, ("apply", "plan.json", "-c", "1"))
    run("apply-again", healthy, ("apply", "clips", "late", "extra"))
    run("list-end", healthy, ("state", "list"))
    run("list-end-json", healthy, ("state", "list", "-f", "json"))
    return outputs


def test_every_command_gives_the_same_output_with_a_file_or_a_database(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    as_file = tmp_path / "file"
    as_file.mkdir()
    assert cli("init", "--state", "state.json", cwd=as_file, env=clean_env()).returncode == 0
    database = named(postgres_database, "default")
    as_db = tmp_path / "db"
    as_db.mkdir()
    created = cli("init", "--state", database, cwd=as_db, env=clean_env())
    assert created.returncode == 0, created.stdout + created.stderr
    assert shown(database) in created.stdout
    assert postgres_server.password not in created.stdout + created.stderr

    file_run = scenario(as_file, "state.json", sandbox_factory)
    db_run = scenario(as_db, database, sandbox_factory)
    codes = [(step, code) for step, code, _, _ in file_run]
    assert codes == [
        ("plan-empty", 0),
        ("apply", 0),
        ("apply-dropped", 1),
        ("plan-pending", 0),
        ("apply-pending", 1),
        ("list", 0),
        ("list-json", 0),
        ("show", 0),
        ("show-json", 0),
        ("mark", 0),
        ("rm", 0),
        ("plan-out", 0),
        ("apply-plan", 0),
        ("apply-again", 0),
        ("list-end", 0),
        ("list-end-json", 0),
    ], file_run
    for (step, code, out, err), (_, db_code, db_out, db_err) in zip(file_run, db_run, strict=True):
        assert db_code == code, (step, db_out, db_err)
        if step.endswith("-json"):
            # Equal as values first (the clearer failure), then equal as text.
            file_document = json.loads(normalised(out, "state.json"))
            assert json.loads(normalised(db_out, shown(database))) == file_document, step
        assert normalised(db_out, shown(database)) == normalised(out, "state.json"), step
        assert normalised(db_err, shown(database)) == normalised(err, "state.json"), step
    final = json.loads(db_run[-1][2])
    assert final["state"] == shown(database)
    assert {task["name"]: task["status"] for task in final["tasks"]} == {
        "clip-0": "submitted",
        "clip-1": "submitted",
        "clip-2": "submitted",
        "clip-7": "submitted",
        "clip-9": "submitted",
    }
    for _, _, out, err in db_run:
        no_traceback(out, err)


# --- sandbox and real states in the database ---------------------------------------------------


def test_sandbox_and_real_database_states_never_mix(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    write_manifests(tmp_path / "clips", 2)
    sandbox_state = named(postgres_database, "demo")
    demo = cli(*apply_args(sandbox_state, "--sandbox"), cwd=tmp_path, env=clean_env())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "SANDBOX apply complete: 2 submitted." in demo.stdout
    assert set(statuses(sandbox_state, tmp_path).values()) == {"submitted"}
    assert not list(tmp_path.glob("reconciler-state*")), "the database state, not a file"

    box: Sandbox = sandbox_factory()
    before = snapshot(postgres_server, database_of(postgres_database))
    real_into_sandbox = cli(*apply_args(sandbox_state), cwd=tmp_path, env=clean_env(box))
    assert real_into_sandbox.returncode == 1, real_into_sandbox.stdout + real_into_sandbox.stderr
    assert "is a sandbox state" in real_into_sandbox.stderr
    assert box.accepted() == []
    assert snapshot(postgres_server, database_of(postgres_database)) == before

    real_state = named(postgres_database, "real")
    init_db(real_state, tmp_path)
    before = snapshot(postgres_server, database_of(postgres_database))
    sandbox_into_real = cli(*apply_args(real_state, "--sandbox"), cwd=tmp_path, env=clean_env())
    assert sandbox_into_real.returncode == 1, sandbox_into_real.stdout + sandbox_into_real.stderr
    assert "is a real state" in sandbox_into_real.stderr
    assert snapshot(postgres_server, database_of(postgres_database)) == before
    no_traceback(real_into_sandbox.stderr, sandbox_into_real.stderr)


# --- bad URIs and unreachable databases ---------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://[::1",
        "postgresql://ci@127.0.0.1:notaport/ops",
        "postgresql://ci@127.0.0.1:5432/ops#Not_A_Name",
        "postgres://ci@127.0.0.1:5432/ops#-dash-first",
    ],
    ids=["unclosed-ipv6", "port-not-a-number", "name-with-capitals", "name-starting-with-dash"],
)
@pytest.mark.parametrize("command", ["init", "plan", "apply", "state-list"])
def test_a_malformed_uri_is_a_usage_error(
    tmp_path: Path, sandbox_factory: Any, uri: str, command: str
) -> None:
    write_manifests(tmp_path / "clips", 2)
    box: Sandbox = sandbox_factory()
    args = {
        "init": ("init", "--state", uri),
        "plan": ("plan", "clips", "--state", uri),
        "apply": apply_args(uri),
        "state-list": ("state", "list", "--state", uri),
    }[command]
    done = cli(*args, cwd=tmp_path, env=clean_env(box))
    assert done.returncode == 2, done.stdout + done.stderr
    assert box.accepted() == []
    no_traceback(done.stdout, done.stderr)


def unreachable(
    server: PostgresServer, database_uri: str, kind: str
) -> tuple[str, dict[str, str], list[str]]:
    """(--state value, extra environment, secrets that must never be shown) for one fault."""
    database = database_of(database_uri)
    wrong = "wrong-password-" + os.urandom(8).hex()
    if kind == "wrong-password":
        return (
            server.uri(database, user=server.superuser, password=wrong),
            {},
            [wrong, server.password],
        )
    if kind == "wrong-pgpassword":
        return (
            server.uri(database, user=server.superuser, password=""),
            {"PGPASSWORD": wrong},
            [wrong],
        )
    if kind == "unknown-database":
        return server.uri("no_such_database"), {}, [server.password]
    if kind == "server-down":
        return server.uri(database, port=free_port()), {}, [server.password]
    assert kind == "tls-refused"
    return server.uri(database, params="sslmode=require"), {}, [server.password]


@pytest.mark.parametrize(
    "kind", ["wrong-password", "wrong-pgpassword", "unknown-database", "server-down", "tls-refused"]
)
@pytest.mark.parametrize("command", ["init", "plan", "apply", "state-list"])
def test_a_database_that_cannot_be_reached_is_named_without_its_password(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    kind: str,
    command: str,
) -> None:
    write_manifests(tmp_path / "clips", 2)
    init_db(postgres_database, tmp_path)
    box: Sandbox = sandbox_factory()
    uri, extra_env, secrets = unreachable(postgres_server, postgres_database, kind)
    env = clean_env(box) | extra_env
    args = {
        "init": ("init", "--state", uri),
        "plan": ("plan", "clips", "--state", uri),
        "apply": apply_args(uri, "-v"),
        "state-list": ("state", "list", "--state", uri),
    }[command]
    done = cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    named_as = shown(uri).split("?")[0].removesuffix("#default")
    assert "cannot connect to the state database" in done.stderr, done.stderr
    assert named_as in done.stderr, done.stderr
    assert "#default" in done.stderr, done.stderr
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    assert box.accepted() == []
    no_traceback(done.stdout, done.stderr)


# --- a connection lost mid-apply ---------------------------------------------------------------


def test_a_connection_lost_mid_apply_stops_sending_and_duplicates_nothing(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    tasks, concurrency = 40, 4
    write_manifests(tmp_path / "clips", tasks)
    state = named(postgres_database, "default")
    init_db(state, tmp_path)
    slow: Sandbox = sandbox_factory(latency_ms=3000)
    run = start_cli(*apply_args(state, "-c", str(concurrency)), cwd=tmp_path, env=clean_env(slow))
    wait_for(lambda: requested(slow) >= concurrency or run.poll() is not None, "requests in flight")
    assert run.poll() is None, run.communicate()
    at_loss = requested(slow)
    assert postgres_server.terminate_backends(database_of(postgres_database)) >= 1
    out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 1, out + err
    assert shown(state) in out + err, out + err
    assert postgres_server.password not in out + err
    no_traceback(out, err)
    assert requested(slow) - at_loss <= 2 * concurrency, "sending did not stop"
    assert requested(slow) < tasks

    recorded = statuses(state, tmp_path)
    sent = {task["path"]["streamName"] for task in slow.received()}
    assert sent <= set(recorded), "a request left before its task was claimed"
    answered = accepted_streams(slow)
    for stream, status in recorded.items():
        if status == "submitted":
            assert stream in answered
    # Connected again: the answers that arrived after the loss are recorded, and the marks of
    # tasks claimed but never sent are gone (issue 18, item 17).
    assert "Connected again" in err, err
    assert "nothing was changed" not in out + err
    assert set(answered) <= {s for s, st in recorded.items() if st == "submitted"}
    assert set(recorded) <= sent, "a task never sent kept its mark"
    left = sorted(s for s, st in recorded.items() if st == "pending")
    for stream in left:
        assert f"clip-{stream.removeprefix('stream-')}" in err or stream in err

    healthy: Sandbox = sandbox_factory()
    later = cli(*apply_args(state), cwd=tmp_path, env=clean_env(healthy))
    assert later.returncode == (1 if left else 0), later.stdout + later.stderr
    both = accepted_streams(slow) + accepted_streams(healthy)
    assert [s for s, n in both.items() if n > 1] == [], "a later apply duplicated a task"
    assert set(accepted_streams(healthy)).isdisjoint(recorded)
    final = statuses(state, tmp_path)
    assert len(final) == tasks


# --- tables that are not ours ---------------------------------------------------------------------


def set_schema_version(server: PostgresServer, database: str, version: int) -> None:
    """Rewrite the version in reconciler.meta, whatever its layout (a column, or key/value)."""
    columns = [
        name
        for (name,) in server.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'reconciler' AND table_name = 'meta'",
            database,
        )
    ]
    assert columns, "init created no reconciler.meta table"
    with_version = [name for name in columns if "version" in name]
    if with_version:
        changed = server.execute(
            f'UPDATE reconciler.meta SET "{with_version[0]}" = %s RETURNING 1', database, [version]
        )
    else:
        assert {"key", "value"} <= set(columns), columns
        changed = server.execute(
            "UPDATE reconciler.meta SET value = %s WHERE key LIKE '%%version%%' RETURNING 1",
            database,
            [str(version)],
        )
    assert changed, "no version found in reconciler.meta"


def test_tables_of_a_newer_reconciler_are_refused_and_left_alone(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, postgres_database: str
) -> None:
    write_manifests(tmp_path / "clips", 3)
    state = named(postgres_database, "default")
    init_db(state, tmp_path)
    box: Sandbox = sandbox_factory()
    assert cli(*apply_args(state), cwd=tmp_path, env=clean_env(box)).returncode == 0
    database = database_of(postgres_database)
    set_schema_version(postgres_server, database, 999)
    before = snapshot(postgres_server, database)
    fresh: Sandbox = sandbox_factory()
    write_manifests(tmp_path / "clips", 5)
    attempts = [
        ("plan", "clips", "--state", state),
        apply_args(state),
        ("state", "list", "--state", state),
        ("init", "--state", named(postgres_database, "another")),
        ("state", "migrate", state, "copy.json"),
    ]
    for args in attempts:
        done = cli(*args, cwd=tmp_path, env=clean_env(fresh))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert shown(state).removesuffix("#default") in done.stderr, done.stderr
        no_traceback(done.stdout, done.stderr)
    assert fresh.accepted() == []
    assert snapshot(postgres_server, database) == before
    assert not (tmp_path / "copy.json").exists()


@pytest.mark.parametrize(
    "foreign",
    [
        (
            "CREATE TABLE reconciler.invoices (id int PRIMARY KEY, total numeric)",
            "INSERT INTO reconciler.invoices VALUES (1, 9.5)",
        ),
        (
            "CREATE TABLE reconciler.tasks (id serial PRIMARY KEY, title text, done boolean)",
            "INSERT INTO reconciler.tasks (title, done) VALUES ('buy milk', false)",
        ),
    ],
    ids=["a-table-of-another-name", "a-table-named-like-ours"],
)
def test_a_reconciler_schema_holding_tables_not_ours_is_refused(
    tmp_path: Path,
    sandbox_factory: Any,
    postgres_server: PostgresServer,
    postgres_database: str,
    foreign: tuple[str, str],
) -> None:
    database = database_of(postgres_database)
    postgres_server.execute("CREATE SCHEMA reconciler", database)
    for statement in foreign:
        postgres_server.execute(statement, database)
    before = snapshot(postgres_server, database)
    write_manifests(tmp_path / "clips", 2)
    state = named(postgres_database, "default")
    for args in (("init", "--state", state), apply_args(state, "--sandbox")):
        done = cli(*args, cwd=tmp_path, env=clean_env())
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert shown(state).removesuffix("#default") in done.stderr, done.stderr
        no_traceback(done.stdout, done.stderr)
    assert snapshot(postgres_server, database) == before


# --- named states ---------------------------------------------------------------------------------


def test_two_named_states_in_one_database_are_independent(
    tmp_path: Path, sandbox_factory: Any, postgres_database: str
) -> None:
    alpha, beta = named(postgres_database, "alpha"), named(postgres_database, "beta")
    init_db(alpha, tmp_path)
    init_db(beta, tmp_path)
    repo_a, repo_b = tmp_path / "repo-a", tmp_path / "repo-b"
    write_manifests(repo_a / "clips", 4)  # streams 0..3
    write_manifests(repo_b / "clips", 6)  # streams 0..5: the same first four, in another state
    box: Sandbox = sandbox_factory()
    env = clean_env(box)
    a = cli(*apply_args(alpha), cwd=repo_a, env=env)
    assert a.returncode == 0, a.stdout + a.stderr
    assert sorted(statuses(alpha, tmp_path)) == [f"stream-{n}" for n in range(4)]
    assert statuses(beta, tmp_path) == {}, "beta saw alpha's tasks"
    b = cli(*apply_args(beta), cwd=repo_b, env=env)
    assert b.returncode == 0, b.stdout + b.stderr
    assert "Apply complete: 6 submitted." in b.stdout, "each state records its own tasks"
    assert len(statuses(beta, tmp_path)) == 6 and len(statuses(alpha, tmp_path)) == 4

    # Removing a task from one state leaves the other alone.
    alpha_entries = listed(alpha, tmp_path)
    removed = cli(
        "state",
        "rm",
        alpha_entries["stream-0"]["hash"],
        "--yes",
        "--state",
        alpha,
        cwd=tmp_path,
        env=env,
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "stream-0" not in statuses(alpha, tmp_path)
    assert statuses(beta, tmp_path)["stream-0"] == "submitted"

    # One state's lock does not hold the other: beta applies while alpha is locked.
    slow: Sandbox = sandbox_factory(latency_ms=1000)
    write_manifests(repo_a / "clips", 20)
    holder = start_cli(*apply_args(alpha, "-c", "1"), cwd=repo_a, env=clean_env(slow))
    try:
        wait_for(lambda: requested(slow) >= 1 or holder.poll() is not None, "alpha's apply")
        assert holder.poll() is None
        write_manifests(repo_b / "clips", 7)
        meanwhile = cli(*apply_args(beta, "--lock-timeout", "1"), cwd=repo_b, env=env)
        assert meanwhile.returncode == 0, meanwhile.stdout + meanwhile.stderr
        assert holder.poll() is None, "alpha's apply was still running: beta did not wait for it"
    finally:
        holder.kill()
        holder.communicate(timeout=WAIT)


# --- the lock holder -------------------------------------------------------------------------------


def test_a_waiter_names_the_lock_holder_and_a_killed_holder_leaves_no_lock(
    tmp_path: Path, sandbox_factory: Any, postgres_database: str
) -> None:
    write_manifests(tmp_path / "clips", 20)
    state = named(postgres_database, "default")
    init_db(state, tmp_path)
    slow: Sandbox = sandbox_factory(latency_ms=1000)
    holder_env = clean_env(slow) | {
        "GITHUB_SERVER_URL": "https://github.example.com",
        "GITHUB_REPOSITORY": "team/clips",
        "GITHUB_RUN_ID": "4242",
    }
    holder = start_cli(*apply_args(state, "-c", "1"), cwd=tmp_path, env=holder_env)
    try:
        wait_for(lambda: requested(slow) >= 1 or holder.poll() is not None, "the holder's apply")
        assert holder.poll() is None, holder.communicate()
        box: Sandbox = sandbox_factory()
        waiter = cli(*apply_args(state, "--lock-timeout", "1"), cwd=tmp_path, env=clean_env(box))
        assert holder.poll() is None, (
            "the holder must still hold the lock for this test to mean much"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=WAIT)
    assert waiter.returncode == 1, waiter.stdout + waiter.stderr
    message = waiter.stderr
    assert f"pid {holder.pid}" in message, message
    assert f"on host {socket.gethostname()}" in message, message
    assert "since " in message, message
    assert "https://github.example.com/team/clips/actions/runs/4242" in message, message
    assert shown(state) in message, message
    assert box.accepted() == []
    no_traceback(waiter.stdout, waiter.stderr)

    # The holder was killed: its session ended and the server released the lock.
    after: Sandbox = sandbox_factory()
    free = cli(*apply_args(state, "--lock-timeout", "10"), cwd=tmp_path, env=clean_env(after))
    assert free.returncode in (0, 1), free.stdout + free.stderr
    assert "is locked by" not in free.stderr, free.stderr
    both = accepted_streams(slow) + accepted_streams(after)
    assert [s for s, n in both.items() if n > 1] == []
    assert len(statuses(state, tmp_path)) == 20
