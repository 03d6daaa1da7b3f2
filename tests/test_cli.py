"""The command line as a user meets it: state repair commands, refusals, and no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.state import StateEntry, StateStore, TaskStatus

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    base["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose state (`reconciler-state.json`) holds the 7 examples, submitted."""
    folder = tmp_path_factory.mktemp("applied")
    result = cli(
        folder, "apply", str(EXAMPLES), "--sandbox", "--state", "reconciler-state.json", "-q"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.fixture
def workdir(applied: Path, tmp_path: Path) -> Path:
    state = (applied / "reconciler-state.json").read_bytes()
    (tmp_path / "reconciler-state.json").write_bytes(state)
    return tmp_path


def entries(folder: Path) -> dict[str, StateEntry]:
    return {e.name: e for e in StateStore(folder / "reconciler-state.json").load().entries.values()}


def test_apply_without_credentials_names_the_variables_and_suggests_the_sandbox(
    tmp_path: Path,
) -> None:
    result = cli(tmp_path, "apply", str(EXAMPLES))
    assert result.returncode == 1
    assert "JDCLOUD_ACCESS_KEY" in result.stderr and "JDCLOUD_SECRET_KEY" in result.stderr
    assert "--sandbox" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_dry_run_sends_and_writes_nothing(tmp_path: Path) -> None:
    result = cli(tmp_path, "apply", str(EXAMPLES), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Plan: 7 to submit." in result.stdout
    assert "Dry run: nothing was sent" in result.stdout
    assert "warning: there is no state" in result.stderr and "apply would refuse" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_state_list_and_show(workdir: Path) -> None:
    listed = cli(workdir, "state", "list")
    assert listed.returncode == 0
    assert "7 tasks in reconciler-state.json." in listed.stdout
    goal = entries(workdir)["cup-final-goal-1"]
    shown = cli(workdir, "state", "show", goal.hash[:8])
    assert shown.returncode == 0
    assert f"hash:         {goal.hash}" in shown.stdout
    assert '"saveBucket": "highlights"' in shown.stdout


def test_state_show_unknown_and_ambiguous_prefixes(workdir: Path) -> None:
    missing = cli(workdir, "state", "show", "ffffffffffff")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: ")
    short = cli(workdir, "state", "show", "4")
    assert short.returncode == 1 and "Traceback" not in short.stderr


def test_state_rm_needs_confirmation_without_a_terminal(workdir: Path) -> None:
    goal = entries(workdir)["cup-final-goal-1"]
    before = (workdir / "reconciler-state.json").read_bytes()
    refused = cli(workdir, "state", "rm", goal.hash)
    assert refused.returncode == 1
    assert "the next apply submits it again" in refused.stderr and "--yes" in refused.stderr
    assert (workdir / "reconciler-state.json").read_bytes() == before
    removed = cli(workdir, "state", "rm", goal.hash, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "cup-final-goal-1" not in entries(workdir)
    plan = cli(workdir, "plan", str(EXAMPLES))
    assert "Plan: 1 to submit, 6 unchanged." in plan.stdout


def test_mark_submitted_resolves_a_pending_task(workdir: Path) -> None:
    store = StateStore(workdir / "reconciler-state.json")
    goal = entries(workdir)["cup-final-goal-2"]
    pending = StateEntry(
        goal.hash, TaskStatus.PENDING, goal.name, goal.source, goal.request, goal.updated_at
    )
    store.write(store.load().with_entries([pending]))
    plan = cli(workdir, "plan", str(EXAMPLES), "--format", "json")
    assert json.loads(plan.stdout)["summary"]["pending"] == 1
    marked = cli(workdir, "state", "mark-submitted", goal.hash[:12], "--request-id", "abc123")
    assert marked.returncode == 0, marked.stderr
    after = entries(workdir)["cup-final-goal-2"]
    assert (after.status, after.request_id) == (TaskStatus.SUBMITTED, "abc123")
    empty = cli(workdir, "state", "mark-submitted", goal.hash, "--request-id", " ")
    assert empty.returncode == 2


def test_corrupt_state_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "reconciler-state.json"
    state.write_text('{"version": 1, "tasks": {')
    for args in (
        ("plan", str(EXAMPLES)),
        ("apply", str(EXAMPLES), "--sandbox", "--state", str(state)),
    ):
        result = cli(tmp_path, *args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "reconciler-state.json" in result.stderr
        assert state.read_text() == '{"version": 1, "tasks": {'


def test_newer_state_version_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "reconciler-state.json"
    state.write_text('{"version": 3, "tasks": {}}\n')
    result = cli(tmp_path, "plan", str(EXAMPLES))
    assert result.returncode == 1
    assert "version 3" in result.stderr and "Traceback" not in result.stderr


def test_invalid_manifests_stop_plan_and_apply_before_anything(tmp_path: Path) -> None:
    for command in ("plan", "apply"):
        result = cli(
            tmp_path,
            command,
            str(EXAMPLES / "invalid"),
            "--sandbox" if command == "apply" else "--quiet",
        )
        assert result.returncode == 1
        assert "nothing was" in result.stderr
        assert "too-short.yaml:10:3: spec.recordTimes: total length 9 s" in result.stdout
    assert not (tmp_path / "reconciler-state.sandbox.json").exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli(tmp_path, "validate").returncode == 2
    assert cli(tmp_path, "plan", str(EXAMPLES), "--selector", "nokey").returncode == 2
    assert cli(tmp_path, "apply", str(EXAMPLES), "--concurrency", "0").returncode == 2
    assert cli(tmp_path, "sandbox", "--fail", "200:2").returncode == 2


def test_version_and_schema(tmp_path: Path) -> None:
    version = cli(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("reconciler ")
    schema = cli(tmp_path, "schema")
    assert json.loads(schema.stdout)["title"] == "reconciler RecordTask manifest"


def test_selector_limits_apply(tmp_path: Path) -> None:
    result = cli(tmp_path, "apply", str(EXAMPLES), "--sandbox", "-l", "kind=goal", "-q")
    assert result.returncode == 0, result.stderr
    assert "SANDBOX apply complete: 3 submitted." in result.stdout


def test_mark_submitted_refuses_to_overwrite_another_request_id_without_force(
    workdir: Path,
) -> None:
    goal = entries(workdir)["cup-final-goal-1"]
    before = (workdir / "reconciler-state.json").read_bytes()
    refused = cli(workdir, "state", "mark-submitted", goal.hash[:12], "--request-id", "other")
    assert refused.returncode == 1
    assert f"already submitted with requestId {goal.request_id}" in refused.stderr
    assert "--force" in refused.stderr
    assert (workdir / "reconciler-state.json").read_bytes() == before
    same = cli(workdir, "state", "mark-submitted", goal.hash, "--request-id", goal.request_id or "")
    assert same.returncode == 0, "the same requestId again changes nothing that matters"
    forced = cli(workdir, "state", "mark-submitted", goal.hash, "--request-id", "other", "--force")
    assert forced.returncode == 0, forced.stderr
    assert entries(workdir)["cup-final-goal-1"].request_id == "other"


def test_usage_lines_name_the_arguments(tmp_path: Path) -> None:
    for args, usage in [
        (("validate",), "Usage: reconciler validate [OPTIONS] PATH..."),
        (("plan",), "Usage: reconciler plan [OPTIONS] PATH..."),
        (("apply",), "Usage: reconciler apply [OPTIONS] PATH..."),
        (("state", "show"), "Usage: reconciler state show [OPTIONS] HASH"),
    ]:
        result = cli(tmp_path, *args)
        assert result.returncode == 2
        assert usage in result.stderr, result.stderr
        assert "{" not in result.stderr.splitlines()[0]


def test_init_creates_an_empty_state_once(tmp_path: Path) -> None:
    created = cli(tmp_path, "init", "--state", "states/team.json")
    assert created.returncode == 0, created.stderr
    assert "Commit it" in created.stdout
    state = tmp_path / "states" / "team.json"
    assert state.read_text() == '{\n  "tasks": {},\n  "version": 2\n}\n'
    assert oct(state.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    refused = cli(tmp_path, "init", "--state", "states/team.json")
    assert refused.returncode == 1 and "already" in refused.stderr
    from_env = cli(tmp_path, "init", env={"RECONCILER_STATE": "other.json"})
    assert from_env.returncode == 0 and (tmp_path / "other.json").exists()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_plan_verbose_lists_what_was_ignored(tmp_path: Path) -> None:
    result = cli(tmp_path, "plan", str(EXAMPLES), "--verbose")
    assert result.returncode == 0, result.stderr
    ignored = [line for line in result.stdout.splitlines() if line.startswith("ignored ")]
    assert any("invalid/" in line and ".reconcilerignore:" in line for line in ignored), ignored
    quiet = cli(tmp_path, "plan", str(EXAMPLES))
    assert "ignored " not in quiet.stdout


def test_sandbox_and_real_refusals_name_where_the_state_came_from(tmp_path: Path) -> None:
    # A real state where apply --sandbox keeps its own: it came from no --state at all.
    assert cli(tmp_path, "init", "--state", "reconciler-state.sandbox.json").returncode == 0
    default = cli(tmp_path, "apply", str(EXAMPLES), "--sandbox")
    assert default.returncode == 1
    assert (
        "reconciler-state.sandbox.json (apply --sandbox's own state, used without --state) "
        "is a real state" in default.stderr
    ), default.stderr
    assert "Leave out --state" not in default.stderr
    assert "reconciler init" in default.stderr  # how such a file comes about

    assert cli(tmp_path, "init", "--state", "real.json").returncode == 0
    given = cli(tmp_path, "apply", str(EXAMPLES), "--sandbox", "--state", "real.json")
    assert given.returncode == 1
    assert "real.json (given with --state) is a real state" in given.stderr, given.stderr

    # A real apply pointed at a sandbox state through the environment.
    made = cli(tmp_path, "apply", str(EXAMPLES), "--sandbox", "--state", "box.json", "-q")
    assert made.returncode == 0, made.stderr
    env = {
        "RECONCILER_STATE": "box.json",
        "JDCLOUD_ACCESS_KEY": "ak",
        "JDCLOUD_SECRET_KEY": "sk",
        "RECONCILER_ENDPOINT": "http://127.0.0.1:9",
    }
    real = cli(tmp_path, "apply", str(EXAMPLES), env=env)
    assert real.returncode == 1
    assert "box.json (from $RECONCILER_STATE) is a sandbox state" in real.stderr, real.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("plan", str(EXAMPLES), "--settle", str(10**20)),
        ("apply", str(EXAMPLES), "--sandbox", "--settle", str(10**20)),
        ("apply", str(EXAMPLES), "--sandbox", "--dry-run", "--settle", str(10**20)),
    ],
)
def test_a_settle_beyond_the_calendar_is_a_usage_error(tmp_path: Path, args: tuple[str]) -> None:
    result = cli(tmp_path, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "--settle" in result.stderr and "longest settle time" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("verify", "--grace", str(10**11)), "--grace"),  # past the calendar's first day
        (("verify", "--grace", str(10**22)), "--grace"),  # past a C integer
        (("apply", str(EXAMPLES), "--sandbox", "--lock-timeout", "nan"), "--lock-timeout"),
        (("apply", str(EXAMPLES), "--sandbox", "--lock-timeout", "-inf"), "--lock-timeout"),
        (("state", "rm", "0" * 12, "--yes", "--lock-timeout", "nan"), "--lock-timeout"),
        (("receive", "--lock-timeout", "nan"), "--lock-timeout"),
    ],
)
def test_numbers_no_clock_can_hold_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    env = {
        "JDCLOUD_ACCESS_KEY": "ak",
        "JDCLOUD_SECRET_KEY": "sk",
        "RECONCILER_CALLBACK_TOKEN": "t" * 32,
    }
    result = cli(tmp_path, *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and option in result.stderr
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_the_longest_grace_is_accepted(tmp_path: Path) -> None:
    from reconciler.cli.verify import MAX_GRACE_SECONDS

    init = cli(tmp_path, "init")
    assert init.returncode == 0, init.stderr
    env = {"JDCLOUD_ACCESS_KEY": "ak", "JDCLOUD_SECRET_KEY": "sk"}
    result = cli(tmp_path, "verify", "--grace", str(MAX_GRACE_SECONDS), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_longest_settle_time_plans(tmp_path: Path) -> None:
    from reconciler.plan import MAX_SETTLE_SECONDS

    result = cli(tmp_path, "plan", str(EXAMPLES), "--settle", str(MAX_SETTLE_SECONDS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("plan", str(EXAMPLES), "--state", ""),
        ("plan", str(EXAMPLES), "--state", "  "),
        ("init", "--state", ""),
        ("state", "list", "--state", ""),
        ("apply", str(EXAMPLES), "--sandbox", "--state", ""),
    ],
)
def test_an_empty_state_option_is_refused_not_read_as_the_default(
    workdir: Path, args: tuple[str]
) -> None:
    before = (workdir / "reconciler-state.json").read_bytes()
    result = cli(workdir, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'--state'" in result.stderr and "is empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "reconciler-state.json").read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir()) == ["reconciler-state.json"]


@pytest.mark.parametrize("command", [("plan", str(EXAMPLES)), ("state", "list"), ("init",)])
def test_an_empty_reconciler_state_variable_is_refused(workdir: Path, command: tuple[str]) -> None:
    before = (workdir / "reconciler-state.json").read_bytes()
    result = cli(workdir, *command, env={"RECONCILER_STATE": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "RECONCILER_STATE" in result.stderr and "empty" in result.stderr
    assert (workdir / "reconciler-state.json").read_bytes() == before
