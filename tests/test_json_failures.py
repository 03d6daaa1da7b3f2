"""Failures through the real CLI: `--format json` prints one document even when a command fails
(DESIGN §4); the state commands refuse a state that does not exist; `--request-id` refuses
control characters and `state list`/`show` show stored ones escaped (DESIGN §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.sandbox import Sandbox
from reconciler.state import State, StateStore, TaskStatus
from tests.test_e2e import MANIFEST
from tests.test_state import make_entry

pytestmark = pytest.mark.e2e

OUTPUT_SCHEMA = Path(__file__).resolve().parent.parent / "reconciler" / "schemas"
SECRET = "secret-key-that-must-never-show"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env.update(NO_COLOR="1", **extra)
    return env


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def output_schema() -> Draft202012Validator:
    schema = json.loads((OUTPUT_SCHEMA / "output.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """clips/ with two manifests and an empty state beside them."""
    (tmp_path / "clips").mkdir()
    for n in range(2):
        (tmp_path / "clips" / f"clip-{n}.yaml").write_text(MANIFEST.format(n=n))
    done = run(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    return tmp_path


def failed_json(
    schema: Draft202012Validator,
    cwd: Path,
    *args: str,
    code: int = 1,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run with `--format json`: exit `code`, one failure document on stdout, valid."""
    done = run(cwd, *args, "--format", "json", env=env)
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    document = json.loads(done.stdout)  # one document: anything after it is an error here
    errors = [error.message for error in schema.iter_errors(document)]
    assert errors == [], errors
    assert document["ok"] is False
    assert document["error"]["exitCode"] == code
    assert document["error"]["message"] in done.stderr, "the document says what stderr says"
    assert SECRET not in done.stdout + done.stderr
    return document  # type: ignore[no-any-return]


# --- --format json: one document, failures included ------------------------------------------


def test_apply_without_credentials(project: Path, output_schema: Draft202012Validator) -> None:
    env = clean_env(JDCLOUD_SECRET_KEY=SECRET)  # no access key
    document = failed_json(output_schema, project, "apply", "clips", env=env)
    assert document["command"] == "apply"
    assert "JDCLOUD_ACCESS_KEY" in document["error"]["message"]


def test_apply_of_a_plan_file_that_is_not_json(
    project: Path, output_schema: Draft202012Validator
) -> None:
    (project / "plan.json").write_text("{not json")
    document = failed_json(output_schema, project, "apply", "plan.json", "--sandbox")
    assert "the plan is not valid JSON" in document["error"]["message"]


def test_apply_of_a_refused_plan(
    project: Path, output_schema: Draft202012Validator, sandbox_factory: Any
) -> None:
    box: Sandbox = sandbox_factory()
    env = clean_env(
        JDCLOUD_ACCESS_KEY=box.credentials.access_key,
        JDCLOUD_SECRET_KEY=box.credentials.secret_key,
        RECONCILER_ENDPOINT=box.url,
    )
    made = run(project, "plan", "clips", "--out", "plan.json")
    assert made.returncode == 0, made.stderr
    document = json.loads((project / "plan.json").read_text())
    document["items"].append(dict(document["items"][0]))
    (project / "plan.json").write_text(json.dumps(document))
    failure = failed_json(output_schema, project, "apply", "plan.json", env=env)
    assert "listed more than once" in failure["error"]["message"]
    assert box.received() == []


def test_apply_without_a_state(tmp_path: Path, output_schema: Draft202012Validator) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "clip.yaml").write_text(MANIFEST.format(n=1))
    env = clean_env(JDCLOUD_ACCESS_KEY="ak", JDCLOUD_SECRET_KEY=SECRET)
    document = failed_json(output_schema, tmp_path, "apply", "clips", env=env)
    assert "there is no state at reconciler-state.json" in document["error"]["message"]


def test_apply_of_a_locked_state(project: Path, output_schema: Draft202012Validator) -> None:
    env = clean_env(JDCLOUD_ACCESS_KEY="ak", JDCLOUD_SECRET_KEY=SECRET)
    with StateStore(project / "reconciler-state.json").lock():
        document = failed_json(
            output_schema, project, "apply", "clips", "--lock-timeout", "0", env=env
        )
    assert "lock" in document["error"]["message"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("apply", "clips", "--endpoint", "ftp://example.com"), "'--endpoint'"),
        (("apply", "clips", "--sandbox", "--selector", "no-equals"), "'--selector'"),
        (("plan", "clips", "--selector", "no-equals"), "'--selector'"),
        (("plan", "clips", "--state", "postgresql://[::1"), "'--state'"),
        (("state", "list", "--state", "postgresql://[::1"), "'--state'"),
        (("state", "show", "abcdef123456", "--state", "postgresql://[::1"), "'--state'"),
    ],
    ids=["apply-endpoint", "apply-selector", "plan-selector", "plan-state", "list", "show"],
)
def test_a_usage_error_after_parsing(
    project: Path, output_schema: Draft202012Validator, args: tuple[str, ...], option: str
) -> None:
    env = clean_env(JDCLOUD_ACCESS_KEY="ak", JDCLOUD_SECRET_KEY=SECRET)
    document = failed_json(output_schema, project, *args, code=2, env=env)
    assert document["command"] == (" ".join(args[:2]) if args[0] == "state" else args[0])
    assert option in document["error"]["message"]


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("plan", "clips", "--settle", "-1"), "plan"),
        (("plan", "clips", "--settle", str(10**20)), "plan"),
        (("apply", "clips", "--sandbox", "--concurrency", "0"), "apply"),
        (("validate", "clips", "--no-such-option"), "validate"),
        (("plan", "clips", "--timezone", "Mars/Base"), "plan"),
        (("state", "list", "--no-such-option"), "state list"),
        (("state", "show"), "state show"),
    ],
    ids=["settle-negative", "settle-huge", "concurrency", "unknown-option", "zone", "list", "show"],
)
def test_a_usage_error_while_parsing(
    project: Path, output_schema: Draft202012Validator, args: tuple[str, ...], command: str
) -> None:
    """Found before the command runs (a value out of range, an unknown option, a missing
    argument): the arguments asked for JSON, so the failure is one JSON document too."""
    document = failed_json(output_schema, project, *args, code=2)
    assert document["command"] == command


def test_a_usage_error_while_parsing_prints_no_json_unless_asked(project: Path) -> None:
    done = run(project, "plan", "clips", "--settle", "-1")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "--settle" in done.stderr


def test_plan_out_into_a_missing_folder(project: Path, output_schema: Draft202012Validator) -> None:
    document = failed_json(output_schema, project, "plan", "clips", "--out", "nowhere/plan.json")
    assert "the folder nowhere does not exist" in document["error"]["message"]


def test_bad_manifests_give_the_validate_report_only(
    project: Path, output_schema: Draft202012Validator
) -> None:
    (project / "clips" / "bad.yaml").write_text("kind: RecordTask\n")
    for command in ("validate", "plan", "apply"):
        done = run(
            project,
            command,
            "clips",
            "--sandbox" if command == "apply" else "-q",
            "--format",
            "json",
        )
        assert done.returncode == 1, done.stdout + done.stderr
        document = json.loads(done.stdout)
        assert list(output_schema.iter_errors(document)) == []
        assert document["command"] == command and document["valid"] is False


def test_state_show_of_an_unknown_task(project: Path, output_schema: Draft202012Validator) -> None:
    document = failed_json(output_schema, project, "state", "show", "abcdef123456")
    assert document["command"] == "state show"


# --- the state commands refuse a state that does not exist -------------------------------------

STATE_COMMANDS = [
    ("state", "list"),
    ("state", "show", "abcdef123456"),
    ("state", "rm", "abcdef123456", "--yes"),
    ("state", "mark-submitted", "abcdef123456", "--request-id", "r1"),
]


@pytest.mark.parametrize("args", STATE_COMMANDS, ids=lambda args: args[1])
def test_a_state_command_refuses_a_missing_state_file(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = run(tmp_path, *args, "--state", "missing.json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0 tasks" not in done.stdout
    message = " ".join(done.stderr.split())
    assert "there is no state at missing.json" in message
    assert "wrong directory" in message and "not checked out" in message
    assert "reconciler init" in message
    assert list(tmp_path.iterdir()) == [], "a missing state was created (or its lock)"


def test_state_list_json_of_a_missing_state(
    tmp_path: Path, output_schema: Draft202012Validator
) -> None:
    document = failed_json(output_schema, tmp_path, "state", "list")
    assert document["command"] == "state list"
    assert "there is no state at reconciler-state.json" in document["error"]["message"]


@pytest.mark.parametrize("args", STATE_COMMANDS, ids=lambda args: args[1])
def test_a_state_command_refuses_a_missing_database_state(
    tmp_path: Path, postgres_database: str, args: tuple[str, ...]
) -> None:
    from tests.postgres_server import PostgresServer  # noqa: F401 (the fixture's type)

    uri = f"{postgres_database}#never-created"
    done = run(tmp_path, *args, "--state", uri)
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "there is no state at" in message and "never-created" in message
    assert "the state was never created" in message and "reconciler init" in message
    password = postgres_database.split("@", 1)[0].rsplit(":", 1)[-1]
    assert password not in done.stdout + done.stderr
    listed = run(tmp_path, "init", "--state", uri)
    assert listed.returncode == 0, listed.stderr
    assert run(tmp_path, "state", "list", "--state", uri).returncode == 0


# --- control characters: refused on the way in, escaped on the way out --------------------------


@pytest.fixture
def hand_edited(tmp_path: Path) -> tuple[Path, str]:
    """A state whose one pending entry was edited by hand to hold an ESC sequence and a line break."""
    store = StateStore(tmp_path / "reconciler-state.json")
    with store.lock():
        store.create()
        entry = make_entry(
            1,
            TaskStatus.SUBMITTED,
            name="clip-\x1b[31mred",
            source="clips/x\ny.yaml",
            request_id="req\x1b]0;title\x07",
        )
        store.write(State({entry.hash: entry}))
    return tmp_path, entry.hash


def test_state_list_and_show_escape_control_characters(hand_edited: tuple[Path, str]) -> None:
    folder, key = hand_edited
    listed = run(folder, "state", "list")
    assert listed.returncode == 0, listed.stderr
    shown = run(folder, "state", "show", key[:12])
    assert shown.returncode == 0, shown.stderr
    for out in (listed.stdout, shown.stdout):
        assert "\x1b" not in out and "\x07" not in out
        assert "clip-\\x1b[31mred" in out
        assert "clips/x\\ny.yaml" in out
        assert "req\\x1b]0;title\\x07" in out
    rows = [line for line in listed.stdout.splitlines() if key[:12] in line]
    assert len(rows) == 1 and "clips/x\\ny.yaml" in rows[0], "a line break split the row"


def test_state_show_prints_the_request_as_indented_json(hand_edited: tuple[Path, str]) -> None:
    # Escaping the values must not escape the JSON's own line breaks: the request stays one
    # member per line, and reads back as the request.
    folder, key = hand_edited
    shown = run(folder, "state", "show", key[:12])
    assert shown.returncode == 0, shown.stderr
    block = shown.stdout.split("request:\n", 1)[1]
    assert len(block.splitlines()) > 10, block
    state = json.loads((folder / "reconciler-state.json").read_text(encoding="utf-8"))
    assert json.loads(block) == state["tasks"][key]["request"]


@pytest.mark.parametrize(
    ("request_id", "shown"),
    [
        ("\x1b[31mred", "\\x1b[31mred"),
        ("abc\ndef", "abc\\ndef"),
        ("abc\n", "abc\\n"),
        ("a\u202eb", "a\\u202eb"),
        ("a\x85b", "a\\x85b"),
    ],
    ids=["esc", "newline", "trailing-newline", "bidi-override", "c1"],
)
def test_mark_submitted_refuses_control_characters(
    hand_edited: tuple[Path, str], request_id: str, shown: str
) -> None:
    folder, key = hand_edited
    before = (folder / "reconciler-state.json").read_bytes()
    done = run(folder, "state", "mark-submitted", key[:12], "--request-id", request_id, "--force")
    assert done.returncode == 2, done.stdout + done.stderr
    assert shown in done.stderr
    assert "'--request-id'" in done.stderr
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr
    assert (folder / "reconciler-state.json").read_bytes() == before
