"""The CI examples (examples/ci/) and our JSON Schemas, checked by the tools users run.

The workflows are validated against SchemaStore's schemas (shipped in check-jsonschema), their
safety properties are read from the YAML, and their shell steps are run for real against a
local Git remote and the sandbox: validate, plan, apply, then the state committed back.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import git

ROOT = Path(__file__).resolve().parent.parent
CI_EXAMPLES = ROOT / "examples" / "ci"
# The recommended set-up for teams: the state in PostgreSQL, its URI in a secret.
GITHUB_DATABASE = CI_EXAMPLES / "github-actions.yml"
GITLAB_DATABASE = CI_EXAMPLES / "gitlab-ci.yml"
# The simple one: the state in a file committed to Git, pushed back after every apply.
GITHUB_GIT_STATE = CI_EXAMPLES / "github-actions-git-state.yml"
GITLAB_GIT_STATE = CI_EXAMPLES / "gitlab-ci-git-state.yml"
EXAMPLES = {
    GITHUB_DATABASE: "vendor.github-workflows",
    GITLAB_DATABASE: "vendor.gitlab-ci",
    GITHUB_GIT_STATE: "vendor.github-workflows",
    GITLAB_GIT_STATE: "vendor.gitlab-ci",
}
RECORD_TASK_SCHEMA = ROOT / "schemas" / "record-task.schema.json"
OUTPUT_SCHEMA = ROOT / "schemas" / "output.schema.json"
CUP_FINAL = ROOT / "examples" / "cup-final"
# goal-1 as a single RecordTask (the examples hold it in a clip set, clips.yaml), same task.
SINGLE_GOAL = ROOT / "tests" / "fixtures" / "sets" / "cup-final-singles" / "goal-1.yaml"
BIN = Path(sys.executable).parent  # where `reconciler` and the test tools are installed


def check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--color", "never", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def shell_scripts(path: Path) -> list[str]:
    """Every shell script an example runs: GitHub's `run:` steps, GitLab's script lists."""
    document = load(path)
    if "jobs" in document:
        return [
            step["run"]
            for job in document["jobs"].values()
            for step in job["steps"]
            if "run" in step
        ]
    return [
        line
        for job in document.values()
        if isinstance(job, dict)
        for key in ("before_script", "script", "after_script")
        for line in job.get(key, [])
    ]


def example_variables(path: Path) -> dict[str, str]:
    """The variables an example sets for every job (GitHub's `env:`, GitLab's `variables:`)."""
    document = load(path)
    return {
        key: str(value) for key, value in document.get("env", document.get("variables", {})).items()
    }


# --- against SchemaStore's schemas -----------------------------------------------------------------


IDS = [path.stem for path in EXAMPLES]


@pytest.mark.parametrize(("path", "schema"), EXAMPLES.items(), ids=IDS)
def test_ci_example_is_valid(path: Path, schema: str) -> None:
    result = check_jsonschema("--builtin-schema", schema, path)
    assert result.returncode == 0, result.stdout + result.stderr


GITHUB_BREAKAGE = ("jobs", "apply", "concurrency", "cancel-in-progress")
GITLAB_BREAKAGE = ("reconciler-apply", "resource_group")


@pytest.mark.parametrize(
    ("path", "schema", "breakage"),
    [
        (path, schema, GITHUB_BREAKAGE if "github" in schema else GITLAB_BREAKAGE)
        for path, schema in EXAMPLES.items()
    ],
    ids=IDS,
)
def test_ci_schema_check_can_fail(
    tmp_path: Path, path: Path, schema: str, breakage: tuple[str, ...]
) -> None:
    # The control: the same check rejects the example with one wrong value.
    document = load(path)
    target = document
    for key in breakage[:-1]:
        target = target[key]
    target[breakage[-1]] = {"not": "valid here"}
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_jsonschema("--builtin-schema", schema, broken)
    assert result.returncode == 1, result.stdout


# --- what makes them safe -----------------------------------------------------------------------


def steps_named(job: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {step.get("name") or step.get("uses", ""): step for step in job["steps"]}


def test_github_pull_requests_validate_and_plan_to_the_summary() -> None:
    workflow = load(GITHUB_GIT_STATE)
    check = workflow["jobs"]["check"]
    assert check["if"] == "github.event_name == 'pull_request'"
    runs = [step.get("run", "") for step in check["steps"]]
    assert 'reconciler validate "$MANIFESTS" --format github' in runs
    assert 'reconciler plan "$MANIFESTS" --format markdown >> "$GITHUB_STEP_SUMMARY"' in runs
    assert workflow["permissions"] == {"contents": "read"}


def test_github_apply_never_overlaps_and_always_commits_the_state() -> None:
    workflow = load(GITHUB_GIT_STATE)
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as "on".
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) >= {"pull_request", "push", "schedule"}
    assert triggers["push"]["branches"] == ["main"]
    apply = workflow["jobs"]["apply"]
    assert "github.event_name != 'pull_request'" in apply["if"]
    assert apply["concurrency"]["group"]
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert apply["permissions"] == {"contents": "write"}
    names = list(steps_named(apply))
    steps = steps_named(apply)
    checkout = steps["actions/checkout@v4"]
    assert checkout["with"]["ref"] == "main"  # the newest state, not the triggering commit
    run_apply = steps["Apply"]
    assert run_apply["run"] == 'reconciler apply "$MANIFESTS" --format github'
    assert run_apply["env"] == {
        "JDCLOUD_ACCESS_KEY": "${{ secrets.JDCLOUD_ACCESS_KEY }}",
        "JDCLOUD_SECRET_KEY": "${{ secrets.JDCLOUD_SECRET_KEY }}",
    }
    assert "if" not in run_apply
    commit = steps["Commit the state file back to main"]
    assert names.index("Commit the state file back to main") > names.index("Apply")
    assert commit["if"] == "always()"
    assert "git add --force -- reconciler-state.json\n" in commit["run"]
    assert "git add --all --force -- reconciler-state.json.journal" in commit["run"]
    assert "git push" in commit["run"]
    artifact = steps["Keep the state file as an artifact (in case the push failed)"]
    assert artifact["if"] == "always()"
    # Credentials reach only the steps that need them: apply's and verify's.
    text = GITHUB_GIT_STATE.read_text(encoding="utf-8")
    assert text.count("secrets.") == 4


def test_gitlab_merge_requests_validate_and_plan_as_an_artifact() -> None:
    pipeline = load(GITLAB_GIT_STATE)
    plan = pipeline["reconciler-plan"]
    assert plan["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    script = "\n".join(plan["script"])
    assert 'reconciler validate "$MANIFESTS" --format junit > validate.xml' in script
    assert "--format markdown | tee plan.md" in script
    assert plan["artifacts"]["paths"] == ["plan.md"]
    assert plan["artifacts"]["reports"]["junit"] == "validate.xml"
    assert plan["artifacts"]["when"] == "always"


def test_gitlab_apply_never_overlaps_and_always_commits_the_state() -> None:
    pipeline = load(GITLAB_GIT_STATE)
    apply = pipeline["reconciler-apply"]
    assert apply["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert apply["resource_group"]
    assert apply["interruptible"] is False
    script = apply["script"]
    commit = next(line for line in script if "git add --force -- reconciler-state.json" in line)
    assert apply["after_script"] == [commit]  # the same commit, also after a cancel or timeout
    applying = next(i for i, line in enumerate(script) if "reconciler apply" in line)
    assert "|| status=$?" in script[applying]  # apply's failure does not skip the commit
    assert script.index(commit) > applying
    assert script[-1] == 'exit "$status"'
    header = GITLAB_GIT_STATE.read_text(encoding="utf-8").split("\nvariables:")[0]
    for variable in ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY", "RECONCILER_PUSH_TOKEN"):
        assert variable in header  # every variable to set is documented at the top
    assert "RECONCILER_PUSH_TOKEN" in commit


# --- verify: hourly, after apply, what is missing on the summary -------------------------------

VERIFY_CRON = "7 * * * *"
GITHUB_VERIFY_IF = (
    "!cancelled() && github.ref == 'refs/heads/main' && "
    f"(github.event.schedule == '{VERIFY_CRON}' || github.event_name == 'workflow_dispatch')"
)
GITHUB_VERIFY_RUN = 'reconciler verify "$MANIFESTS" --format markdown >> "$GITHUB_STEP_SUMMARY"'
GITLAB_VERIFY_RULES = [
    {
        "if": '$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $RECONCILER_VERIFY == "true"',
        "when": "always",
    }
]


def without_comments(script: str) -> list[str]:
    return [line for line in script.splitlines() if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", [GITHUB_GIT_STATE, GITHUB_DATABASE], ids=lambda p: p.stem)
def test_github_verify_runs_hourly_after_apply(path: Path) -> None:
    workflow = load(path)
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as True
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert VERIFY_CRON in crons and len(set(crons)) == len(crons) == 2  # a run of its own
    verify = workflow["jobs"]["verify"]
    # After this run's apply, also when apply failed (a `pending` clip is what it settles),
    # and only on its own schedule or by hand: never for a pull request or a push.
    assert verify["needs"] == "apply"
    assert verify["if"] == GITHUB_VERIFY_IF
    assert verify["concurrency"]["cancel-in-progress"] is False
    steps = steps_named(verify)
    assert steps["actions/checkout@v4"]["with"]["ref"] == "main"
    step = steps["Verify (what is missing, on the run's summary page)"]
    assert step["run"].splitlines()[-1] == GITHUB_VERIFY_RUN
    assert "if" not in step
    credentials = {
        key: f"${{{{ secrets.{key} }}}}" for key in ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY")
    }
    if path == GITHUB_DATABASE:
        assert step["env"] == {"RECONCILER_STATE": "${{ secrets.RECONCILER_STATE }}", **credentials}
    else:
        assert step["env"] == credentials


def test_github_verify_commits_the_state_as_apply_does() -> None:
    workflow = load(GITHUB_GIT_STATE)
    apply, verify = workflow["jobs"]["apply"], workflow["jobs"]["verify"]
    # Both write the state file: one group, so that they never overlap.
    assert verify["concurrency"]["group"] == apply["concurrency"]["group"]
    assert verify["permissions"] == {"contents": "write"}
    names, steps = list(steps_named(verify)), steps_named(verify)
    step = "Commit the state file back to main"
    assert (
        names.index(step) == names.index("Verify (what is missing, on the run's summary page)") + 1
    )
    commit, applys = steps[step], steps_named(apply)[step]
    assert commit["if"] == "always()"
    # The same script line for line, but for the commit's message and the artifact's name.
    expected = [
        line.replace("record apply outcomes", "record verify findings").replace(
            "reconciler-state artifact", "reconciler-state-after-verify artifact"
        )
        for line in without_comments(applys["run"])
    ]
    assert without_comments(commit["run"]) == expected
    assert expected != without_comments(applys["run"])
    artifact = steps["Keep the state file as an artifact (in case the push failed)"]
    assert artifact["if"] == "always()"
    assert artifact["with"]["name"] == "reconciler-state-after-verify"
    assert (
        artifact["with"]["path"]
        == steps_named(apply)["Keep the state file as an artifact (in case the push failed)"][
            "with"
        ]["path"]
    )


def test_github_database_verify_pushes_nothing_and_never_waits_for_apply() -> None:
    workflow = load(GITHUB_DATABASE)
    apply, verify = workflow["jobs"]["apply"], workflow["jobs"]["verify"]
    assert verify["concurrency"]["group"] != apply["concurrency"]["group"]
    steps = steps_named(verify)
    assert list(steps)[-1] == "Verify (what is missing, on the run's summary page)"
    assert "permissions" not in verify


@pytest.mark.parametrize("path", [GITLAB_GIT_STATE, GITLAB_DATABASE], ids=lambda p: p.stem)
def test_gitlab_verify_runs_on_its_schedule_after_apply(path: Path) -> None:
    pipeline = load(path)
    assert pipeline["stages"] == ["check", "apply", "verify"]
    verify = pipeline["reconciler-verify"]
    assert verify["stage"] == "verify"
    # Only in the schedule that sets RECONCILER_VERIFY, and also when apply failed.
    assert verify["rules"] == GITLAB_VERIFY_RULES
    header = path.read_text(encoding="utf-8").split("\nvariables:")[0]
    assert "RECONCILER_VERIFY set to `true`" in header and VERIFY_CRON in header
    [line] = [line for line in verify["script"] if "reconciler verify" in line]
    assert 'reconciler verify "$MANIFESTS" --format markdown | tee verify.md' in line
    assert "verify.md" in verify["artifacts"]["paths"]
    assert verify["artifacts"]["when"] == "always"
    if path == GITLAB_DATABASE:
        assert verify["resource_group"] != pipeline["reconciler-apply"]["resource_group"]
        assert "after_script" not in verify
        assert verify["artifacts"]["paths"] == ["verify.md"]


def test_gitlab_verify_commits_the_state_as_apply_does() -> None:
    pipeline = load(GITLAB_GIT_STATE)
    apply, verify = pipeline["reconciler-apply"], pipeline["reconciler-verify"]
    assert verify["resource_group"] == apply["resource_group"]  # never beside an apply
    [commit] = apply["after_script"]
    script = verify["script"]
    assert verify["after_script"] == [commit]  # the very same commit, also after a cancel
    verifying = next(i for i, line in enumerate(script) if "reconciler verify" in line)
    assert "|| status=$?" in script[verifying]  # a missing clip does not skip the commit
    assert script.index(commit) > verifying
    assert script[-1] == 'exit "$status"'
    assert script[: script.index(commit)][:2] == apply["script"][:2]  # the tip of the branch
    assert '"reconciler: record $CI_JOB_NAME outcomes [skip ci]"' in commit
    assert set(apply["artifacts"]["paths"]) < set(verify["artifacts"]["paths"])


# --- the database mode: the URI from a secret, nothing pushed back --------------------------------

DATABASE_EXAMPLES = [GITHUB_DATABASE, GITLAB_DATABASE]
# The one way an example may name the state's variable in its shell: bash's "stop if unset or
# empty" expansion, which prints the message and never the value.
GUARD = re.compile(r'^: "\$\{(RECONCILER_STATE):\?[^"$`]*\}"$', re.MULTILINE)


def test_github_database_workflow_takes_the_uri_from_a_secret_and_pushes_nothing() -> None:
    workflow = load(GITHUB_DATABASE)
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as True
    assert set(triggers) >= {"pull_request", "push", "schedule"}
    assert triggers["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in workflow["jobs"].values())  # none writes

    check = steps_named(workflow["jobs"]["check"])
    assert workflow["jobs"]["check"]["if"] == "github.event_name == 'pull_request'"
    assert check["Validate the manifests"]["run"] == (
        'reconciler validate "$MANIFESTS" --format github'
    )
    assert "env" not in check["Validate the manifests"]  # validate needs no state
    plan = check["Plan (shown on the run's summary page)"]
    assert plan["env"] == {"RECONCILER_STATE": "${{ secrets.RECONCILER_STATE }}"}
    assert plan["run"].splitlines()[-1] == (
        'reconciler plan "$MANIFESTS" --format markdown >> "$GITHUB_STEP_SUMMARY"'
    )

    apply_job = workflow["jobs"]["apply"]
    assert "github.event_name != 'pull_request'" in apply_job["if"]
    assert apply_job["concurrency"]["group"]
    assert apply_job["concurrency"]["cancel-in-progress"] is False
    steps = steps_named(apply_job)
    assert steps["actions/checkout@v4"]["with"]["ref"] == "main"
    apply = steps["Apply"]
    assert apply["env"] == {
        "RECONCILER_STATE": "${{ secrets.RECONCILER_STATE }}",
        "JDCLOUD_ACCESS_KEY": "${{ secrets.JDCLOUD_ACCESS_KEY }}",
        "JDCLOUD_SECRET_KEY": "${{ secrets.JDCLOUD_SECRET_KEY }}",
    }
    assert apply["run"].splitlines()[-1] == 'reconciler apply "$MANIFESTS" --format github'
    assert "if" not in apply
    # Nothing after apply: no commit, no push, no artifact of a state that is not a file.
    assert list(steps)[-1] == "Apply"
    assert not any("upload-artifact" in name for name in steps)
    # Secrets reach only the steps that need them: the plan's one, apply's and verify's three.
    assert GITHUB_DATABASE.read_text(encoding="utf-8").count("secrets.") == 7


def test_gitlab_database_pipeline_takes_the_uri_from_a_variable_and_pushes_nothing() -> None:
    pipeline = load(GITLAB_DATABASE)
    plan = pipeline["reconciler-plan"]
    assert plan["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert plan["script"][-1] == 'reconciler plan "$MANIFESTS" --format markdown | tee plan.md'
    assert plan["artifacts"]["paths"] == ["plan.md"]
    assert plan["artifacts"]["reports"]["junit"] == "validate.xml"

    apply = pipeline["reconciler-apply"]
    assert apply["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert apply["resource_group"]
    assert apply["interruptible"] is False
    assert apply["script"][-1].endswith('reconciler apply "$MANIFESTS"')
    # Nothing after apply: no after_script, no artifacts, no token to push with.
    assert "after_script" not in apply and "artifacts" not in apply
    text = GITLAB_DATABASE.read_text(encoding="utf-8")
    assert "RECONCILER_PUSH_TOKEN" not in text
    # The URI comes from the project's CI/CD settings, never from the file itself.
    assert all(
        "RECONCILER_STATE" not in job.get("variables", {})
        for job in [pipeline, *(v for v in pipeline.values() if isinstance(v, dict))]
    )
    header = text.split("\nvariables:")[0]
    for variable in ("RECONCILER_STATE", "JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY"):
        assert f"#   {variable}" in header  # every variable to set is documented at the top
    assert re.search(r"RECONCILER_STATE\s+Masked", header)


@pytest.mark.parametrize("path", list(EXAMPLES), ids=IDS)
def test_examples_install_the_extras_their_jobs_need(path: Path) -> None:
    # The database driver where the state is in PostgreSQL; everywhere, the S3 client that
    # verify lists the buckets with.
    requirement = Requirement(example_variables(path)["RECONCILER"])
    assert requirement.name == "reconciler"
    expected = {"postgres", "storage"} if path in DATABASE_EXAMPLES else {"storage"}
    assert requirement.extras == expected
    assert 'pip install "$RECONCILER"' in shell_scripts(path)


@pytest.mark.parametrize("path", DATABASE_EXAMPLES, ids=lambda p: p.stem)
def test_database_examples_never_show_the_uri_and_never_push_back(path: Path) -> None:
    scripts = shell_scripts(path)
    for script in scripts:
        # The state's URI (with its password) is read by reconciler from the environment: no
        # script prints it, puts it on a command line (`--state`, visible to `ps`) or traces.
        assert "RECONCILER_STATE" not in GUARD.sub("", script), script
        assert "PGPASSWORD" not in script, script
        assert not re.search(r"--state\b|\bset\s+-\w*x|\b(printenv|env)\b", script), script
        # Nothing goes back to Git: no state file, no commit, no push.
        assert not re.search(r"\bgit\s+(add|commit|push)\b", script), script
        assert STATE not in script, script
    # Each job that reads the state stops with a message when the variable is missing.
    guards = [script for script in scripts if GUARD.search(script)]
    assert len(guards) == 3, scripts  # plan, apply and verify


def guard_lines(path: Path) -> list[str]:
    return [m.group(0) for script in shell_scripts(path) for m in GUARD.finditer(script)]


@pytest.mark.parametrize("path", DATABASE_EXAMPLES, ids=lambda p: p.stem)
def test_database_examples_stop_when_the_secret_is_missing(tmp_path: Path, path: Path) -> None:
    """A fork's pull request (no secrets) or a forgotten variable: a message, not a wrong plan."""
    secret = "postgresql://ci:s3cr3t-pa55@db.example.com:5432/ops#clips"
    for guard in guard_lines(path):
        for value in ("", None):
            env = {} if value is None else {"RECONCILER_STATE": value}
            result = shell(guard + "\necho went-on", tmp_path, env, check=False)
            assert result.returncode != 0 and "went-on" not in result.stdout
            assert "RECONCILER_STATE: is not set: add the" in result.stderr
        result = shell(guard + "\necho went-on", tmp_path, {"RECONCILER_STATE": secret})
        assert result.stdout == "went-on\n" and result.stderr == ""  # and the value never shown


# --- every reconciler command they run is a real one, with real options ---------------------------

SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}"}
REDIRECTS = {">", ">>", "<", "2>", "2>>"}


def reconciler_invocations(script: str, variables: Mapping[str, str]) -> list[list[str]]:
    """The argument lists of every `reconciler ...` command in a shell script, variables set.

    Words are split as bash splits them (shlex, with the shell's operators as their own tokens);
    a command ends at an operator, and a redirection's target is not an argument. `timeout`
    and its options in front of a command are what GitLab's apply wraps it in.
    """
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        tokens = iter([*lexer, ";"])
        for token in tokens:
            if token in REDIRECTS or token.endswith(">"):
                next(tokens, None)  # its target
            elif token in SHELL_OPERATORS:
                if words and words[0] == "timeout":
                    words = list(itertools.dropwhile(lambda w: w.startswith("-"), words[1:]))[1:]
                if words and words[0] == "reconciler":
                    found.append(words[1:])
                words = []
            else:
                words.append(re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m[1], m[0]), token))
    return found


def click_refusal(arguments: list[str]) -> str | None:
    """Why the CLI's own parser refuses `reconciler ARGUMENTS`, or None when it accepts them.

    Only parses (the command, its options, their values): nothing runs.
    Typer carries its own copy of Click, so only Typer's public names are used here.
    """
    import typer.main

    from reconciler.cli import app

    command: Any = typer.main.get_command(app)
    parent = typer.Context(command, info_name="reconciler")
    name, words = "reconciler", list(arguments)
    try:
        while hasattr(command, "get_command"):  # a group: `reconciler`, `reconciler state`
            if not words:
                return "no command"
            name = words.pop(0)
            sub = command.get_command(parent, name)
            if sub is None:
                return f"no command {name!r}"
            if hasattr(sub, "get_command"):
                parent = typer.Context(sub, info_name=name, parent=parent)
            command = sub
        command.make_context(name, words, parent=parent)
    except typer.TyperException as error:
        return str(error)
    return None


@pytest.mark.parametrize("path", list(EXAMPLES), ids=IDS)
def test_examples_run_only_real_commands_with_real_options(path: Path) -> None:
    variables = example_variables(path)
    invocations = [
        words
        for script in shell_scripts(path)
        for words in reconciler_invocations(script, variables)
    ]
    assert {words[0] for words in invocations} == {"validate", "plan", "apply", "verify"}
    for words in invocations:
        assert click_refusal(words) is None, f"{path.name}: reconciler {shlex.join(words)}"


@pytest.mark.parametrize(
    ("script", "refused"),
    [
        ('reconciler plan "$MANIFESTS" --format gitlab | tee plan.md', "gitlab"),
        ('timeout --signal=TERM 50m reconciler aply "$MANIFESTS"', "aply"),
        ('x || { reconciler apply "$MANIFESTS" --stat x; exit 1; }', "--stat"),
        ("reconciler state lst", "lst"),
    ],
    ids=["bad-value", "bad-command", "bad-option", "bad-subcommand"],
)
def test_command_check_can_fail(script: str, refused: str) -> None:
    [words] = reconciler_invocations(script, {"MANIFESTS": "clips"})
    reason = click_refusal(words)
    assert reason is not None and refused in reason, reason


# --- their shell, run for real --------------------------------------------------------------------

STATE = "reconciler-state.json"
JOURNAL = "reconciler-state.json.journal"
# What apply may leave beside the state besides the state and its journal: the lock, its
# holder's details, and temporary files of an atomic write cut short. Never committed.
LEFTOVERS = (
    "reconciler-state.json.lock",
    "reconciler-state.json.lock.info",
    "reconciler-state.json.0123abcd.tmp",
    "reconciler-state.json.lock.info.4567cdef.tmp",
)


def runner_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without our variables, the tools first on PATH, plus `env`."""
    full = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RECONCILER_", "JDCLOUD_", "GIT_", "NO_COLOR"))
    }
    full["PATH"] = f"{BIN}{os.pathsep}{full.get('PATH', '')}"
    full.update(env)
    return full


@functools.cache
def cli_has_init() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "init", "--help"],
        capture_output=True,
        env=runner_env({}),
        check=False,
    )
    return result.returncode == 0


def initialise_state(work: Path) -> None:
    """The one-time set-up the README and the examples' headers ask for: `reconciler init`."""
    if cli_has_init():
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "init"],
            cwd=work,
            capture_output=True,
            text=True,
            env=runner_env({}),
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    else:  # until the CLI has `init`: the file it writes
        (work / STATE).write_text('{"tasks": {}, "version": 1}\n', encoding="utf-8")
    assert json.loads((work / STATE).read_text(encoding="utf-8"))["tasks"] == {}


def make_remote(
    tmp_path: Path, manifests: Callable[[Path], None], *, initialised: bool = True
) -> Path:
    """A bare 'origin' whose main holds manifests in clips/ and, initialised, an empty state."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    git(seed, "config", "user.name", "Seed")
    git(seed, "config", "user.email", "seed@example.com")
    manifests(seed / "clips")
    git(seed, "add", "clips")
    if initialised:
        initialise_state(seed)
        git(seed, "add", STATE)  # as the README says: the state, not the lock beside it
    git(seed, "commit", "-q", "-m", "manifests")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(bare))
    git(bare, "config", "receive.advertisePushOptions", "true")  # for GitLab's -o ci.skip
    return bare


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """The example manifests, set up as the README says: `reconciler init` committed."""
    return make_remote(tmp_path, copy_manifests)


def copy_manifests(target: Path) -> None:
    """The example manifests, moved to 2020 so that none is `waiting`, whatever today is."""
    target.mkdir(parents=True)
    for path in CUP_FINAL.glob("*.yaml"):
        text = path.read_text(encoding="utf-8").replace("2026-11-20T", "2020-11-20T")
        (target / path.name).write_text(text, encoding="utf-8")


CLIPS = 40


def many_clips(target: Path) -> None:
    """CLIPS manifests, one stream each (`match-00`...), none `waiting`."""
    target.mkdir(parents=True)
    goal = SINGLE_GOAL.read_text(encoding="utf-8").replace("2026-11-20T", "2020-11-20T")
    for n in range(CLIPS):
        name = f"match-{n:02d}"
        text = goal.replace("cup-final-goal-1", name).replace(
            "streamName: cup-final", f"streamName: {name}"
        )
        (target / f"{name}.yaml").write_text(text, encoding="utf-8")


def clone(remote: Path, where: Path) -> Path:
    git(remote.parent, "clone", "-q", str(remote), str(where))
    return where


def shell(
    script: str, cwd: Path, env: Mapping[str, str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a step the way the CI runners do: bash, stop at the first failing command."""
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=runner_env(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def descendants(pid: int) -> list[int]:
    """The live processes below `pid`, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def apply_processes(pid: int) -> list[int]:
    """`pid` and those below it that are `reconciler apply` (not a bash or `timeout` around it).

    `pid` itself may be the apply: bash runs the last command of a script in its own process.
    """
    found = []
    for child in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"apply" in argv and any(arg.endswith(b"reconciler") for arg in argv[:2]):
                found.append(child)
    return found


def run_killing_apply(
    script: str, cwd: Path, env: Mapping[str, str], box: Any, *, after: int
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run a step; once the sandbox has accepted `after` tasks, kill -9 the apply in it."""
    with subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=runner_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as step:
        try:
            deadline = time.monotonic() + 120  # a guard against a hang, not a measurement
            while step.poll() is None and len(box.accepted()) < after:
                assert time.monotonic() < deadline, "apply never got going"
                time.sleep(0.005)
            killed = apply_processes(step.pid)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            output, _ = step.communicate(timeout=300)
        finally:
            if step.poll() is None:  # only after a failed assertion: leave nothing running
                for pid in [*apply_processes(step.pid), step.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(step.args, step.returncode, output, ""), killed


@pytest.fixture
def sandbox() -> Iterator[dict[str, str]]:
    """A local stand-in of the API; the variables that point reconciler at it."""
    pytest.importorskip("reconciler.sandbox")
    from reconciler.sandbox import running_sandbox

    with running_sandbox() as box:
        yield sandbox_env(box)


def sandbox_env(box: Any) -> dict[str, str]:
    return {
        "JDCLOUD_ACCESS_KEY": box.credentials.access_key,
        "JDCLOUD_SECRET_KEY": box.credentials.secret_key,
        "RECONCILER_ENDPOINT": box.url,
    }


def github_env(
    workflow: Mapping[str, Any], step: Mapping[str, Any], secrets: Mapping[str, str]
) -> dict[str, str]:
    env = {key: str(value) for key, value in workflow.get("env", {}).items()}
    for key, value in step.get("env", {}).items():
        env[key] = re.sub(
            r"\$\{\{\s*secrets\.(\w+)\s*\}\}", lambda m: secrets[m.group(1)], str(value)
        )
    return env


def state_on(remote: Path, branch: str = "main") -> dict[str, Any]:
    text = git(remote, "show", f"{branch}:{STATE}")
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


def add_extra_clip(work: Path) -> None:
    """A new clip, cup-final-extra: goal-1 ten seconds longer, so it hashes differently."""
    extra = SINGLE_GOAL.read_text(encoding="utf-8").replace("2026-11-20T", "2020-11-20T")
    (work / "clips" / "extra.yaml").write_text(
        extra.replace("goal-1", "extra").replace("19:13:10Z", "19:13:20Z"), encoding="utf-8"
    )


def files_on(remote: Path, branch: str = "main") -> set[str]:
    return set(git(remote, "ls-tree", "--name-only", branch).splitlines())


def submitted_names(state: Mapping[str, Any]) -> set[str]:
    return {entry["name"] for entry in state["tasks"].values() if entry["status"] == "submitted"}


def known_streams(work: Path) -> dict[str, str]:
    """streamName -> status of every task the state in `work` knows, its journal folded in."""
    from reconciler.state import StateStore

    if not (work / STATE).exists() and not (work / JOURNAL).exists():
        return {}
    state = StateStore(work / STATE).load()
    return {
        entry.request["path"]["streamName"]: entry.status.value for entry in state.entries.values()
    }


@pytest.mark.e2e
def test_github_workflow_steps_run(tmp_path: Path, remote: Path, sandbox: dict[str, str]) -> None:
    workflow = load(GITHUB_GIT_STATE)
    # Pull request: validate, and the plan appended to the step summary.
    work = clone(remote, tmp_path / "pr")
    summary = tmp_path / "summary.md"
    for step in workflow["jobs"]["check"]["steps"]:
        if "run" in step and "pip install" not in step["run"]:
            env = github_env(workflow, step, {})
            shell(step["run"], work, {**env, "GITHUB_STEP_SUMMARY": str(summary)})
    assert "### reconciler plan" in summary.read_text(encoding="utf-8")

    # main: apply, then the state committed back, as the runner's `github-actions[bot]`.
    work = clone(remote, tmp_path / "main")
    steps = steps_named(workflow["jobs"]["apply"])
    secrets = {
        "JDCLOUD_ACCESS_KEY": sandbox["JDCLOUD_ACCESS_KEY"],
        "JDCLOUD_SECRET_KEY": sandbox["JDCLOUD_SECRET_KEY"],
    }
    endpoint = {"RECONCILER_ENDPOINT": sandbox["RECONCILER_ENDPOINT"]}
    apply, commit = steps["Apply"], steps["Commit the state file back to main"]
    result = shell(apply["run"], work, {**github_env(workflow, apply, secrets), **endpoint})
    assert result.stdout.count("::notice file=clips/") == 7
    # Meanwhile someone merged a manifest change: the commit step rebases onto it.
    other = clone(remote, tmp_path / "other")
    git(other, "config", "user.name", "Other")
    git(other, "config", "user.email", "other@example.com")
    (other / "README.md").write_text("clips\n", encoding="utf-8")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "a concurrent change")
    git(other, "push", "-q", "origin", "main")
    shell(commit["run"], work, github_env(workflow, commit, secrets))
    assert "[skip ci]" in git(remote, "log", "-1", "--format=%s", "main")
    assert "a concurrent change" in git(remote, "log", "--format=%s", "main")
    assert len(submitted_names(state_on(remote))) == 7
    assert files_on(remote) == {"clips", "README.md", STATE}  # no lock, no journal left

    # The next run: nothing to submit, nothing to commit.
    work = clone(remote, tmp_path / "main-again")
    result = shell(apply["run"], work, {**github_env(workflow, apply, secrets), **endpoint})
    assert "::notice" not in result.stdout
    result = shell(commit["run"], work, github_env(workflow, commit, secrets))
    assert "The state did not change." in result.stdout


def gitlab_env(pipeline: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, str]:
    env = {key: str(value) for key, value in pipeline.get("variables", {}).items()}
    env.update({key: str(value) for key, value in job.get("variables", {}).items()})
    env.update(
        CI_JOB_NAME=next(name for name, value in pipeline.items() if value is job),
        CI_DEFAULT_BRANCH="main",
        CI_SERVER_PROTOCOL="https",
        CI_SERVER_HOST="gitlab.example.com",
        CI_SERVER_FQDN="gitlab.example.com",
        CI_PROJECT_PATH="team/clips",
        CI_PROJECT_DIR="",
        RECONCILER_PUSH_TOKEN="project-access-token",
    )
    return env


GITLAB_PUSH_URL = "https://reconciler-bot:project-access-token@gitlab.example.com/team/clips.git"


def gitlab_clone(remote: Path, where: Path) -> Path:
    """A clone whose pushes to GitLab's URL (with the project access token) reach `remote`."""
    work = clone(remote, where)
    git(work, "config", f"url.{remote}.insteadOf", GITLAB_PUSH_URL)
    return work


@pytest.mark.e2e
def test_gitlab_pipeline_scripts_run(tmp_path: Path, remote: Path, sandbox: dict[str, str]) -> None:
    pipeline = load(GITLAB_GIT_STATE)
    # Merge request: validate (JUnit) and the plan as Markdown, against the target's state.
    work = clone(remote, tmp_path / "mr")
    plan = pipeline["reconciler-plan"]
    env = {**gitlab_env(pipeline, plan), "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"}
    shell("\n".join(plan["script"]), work, env)
    assert "### reconciler plan" in (work / "plan.md").read_text(encoding="utf-8")
    assert "<testsuites" in (work / "validate.xml").read_text(encoding="utf-8")

    # Default branch: apply, then the state pushed with the project access token.
    work = gitlab_clone(remote, tmp_path / "main")
    apply = pipeline["reconciler-apply"]
    env = {**gitlab_env(pipeline, apply), **sandbox}
    result = shell("\n".join(apply["script"]), work, env)
    assert "Apply complete: 7 submitted" in result.stdout
    assert "[skip ci]" in git(remote, "log", "-1", "--format=%s", "main")
    assert len(submitted_names(state_on(remote))) == 7
    assert files_on(remote) == {"clips", STATE}
    # after_script then finds nothing more to commit.
    result = shell("\n".join(apply["after_script"]), work, env)
    assert "The state did not change." in result.stdout

    # An apply that leaves a task `pending` (the API answered 500) fails the job, and the
    # pending mark still reaches main: the next run must not send that task again.
    from reconciler.sandbox import SandboxConfig, running_sandbox

    work = gitlab_clone(remote, tmp_path / "failing")
    add_extra_clip(work)
    with running_sandbox(SandboxConfig(failures={500: 1.0})) as failing:
        env.update(sandbox_env(failing))
        result = shell("\n".join(apply["script"]), work, env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 pending (outcome unknown)" in result.stdout
    tasks = state_on(remote)["tasks"].values()
    assert [t["name"] for t in tasks if t["status"] == "pending"] == ["cup-final-extra"]


@dataclass(frozen=True)
class ApplyJob:
    """One CI example's apply job, run as its runner would: the apply, then the state commit."""

    apply: str  # the script that runs `reconciler apply` (GitLab: and commits after it)
    commit: str  # what runs afterwards whatever happened (GitHub: always(); GitLab: after_script)
    env: dict[str, str]
    clone: Callable[[Path, Path], Path]


def apply_job(ci: str, endpoint: Mapping[str, str]) -> ApplyJob:
    if ci == "github":
        workflow = load(GITHUB_GIT_STATE)
        steps = steps_named(workflow["jobs"]["apply"])
        apply, commit = steps["Apply"], steps["Commit the state file back to main"]
        secrets = {key: endpoint[key] for key in ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY")}
        env = {
            **github_env(workflow, commit, secrets),
            **github_env(workflow, apply, secrets),
            "RECONCILER_ENDPOINT": endpoint["RECONCILER_ENDPOINT"],
        }
        return ApplyJob(apply["run"], commit["run"], env, clone)
    pipeline = load(GITLAB_GIT_STATE)
    job = pipeline["reconciler-apply"]
    env = {**gitlab_env(pipeline, job), **endpoint}
    return ApplyJob("\n".join(job["script"]), "\n".join(job["after_script"]), env, gitlab_clone)


@pytest.mark.e2e
@pytest.mark.parametrize("start", ["initialised", "no-state-committed"])
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_a_first_apply_killed_mid_send_sends_nothing_twice(
    tmp_path: Path, ci: str, start: str
) -> None:
    """Issue 11 finding 2: kill -9 the very first apply mid-send; the next run re-sends nothing.

    What the killed apply leaves beside the state (its journal: the write-ahead `pending` marks
    and the answers received) must reach the branch, even when no state file existed before.
    `no-state-committed` is a repository where nobody ran `reconciler init`: a CLI without
    `init` applied from nothing and left only a journal; one with `init` refuses to apply, and
    the examples must not run `init` themselves.
    """
    from reconciler.sandbox import SandboxConfig, running_sandbox

    remote = make_remote(tmp_path, many_clips, initialised=start == "initialised")
    # The latency keeps requests in flight, so the kill lands mid-send.
    with running_sandbox(SandboxConfig(latency_ms=100)) as box:
        job = apply_job(ci, sandbox_env(box))
        work = job.clone(remote, tmp_path / "first")
        first, killed = run_killing_apply(job.apply, work, job.env, box, after=CLIPS // 5)
        shell(job.commit, work, job.env)
        assert not files_on(remote) & set(LEFTOVERS), first.stdout
        sent_before_the_kill = len(box.accepted())
        if ci == "gitlab":
            # A merge request opened now plans against main's state, journal included.
            check_gitlab_merge_request_plan(tmp_path, remote)

        work = job.clone(remote, tmp_path / "second")
        second = shell(job.apply, work, job.env, check=False)
        shell(job.commit, work, job.env)
        sent = Counter(record["path"]["streamName"] for record in box.accepted())

    output = first.stdout + second.stdout + second.stderr
    assert [stream for stream, times in sent.items() if times > 1] == [], output
    known = known_streams(clone(remote, tmp_path / "after"))
    assert set(sent) <= set(known), output  # every task the API accepted is in the state
    assert not files_on(remote) & set(LEFTOVERS)
    if start == "initialised" or not cli_has_init():
        assert killed and 0 < sent_before_the_kill < CLIPS, first.stdout  # killed mid-send
        assert first.returncode != 0
        assert len(known) == CLIPS, output  # each clip submitted, or pending for a person
    else:
        assert not sent, output  # a state that does not exist is refused, never created
        assert "reconciler init" in output
        assert STATE not in files_on(remote)


def verify_job(ci: str, credentials: Mapping[str, str], summary: Path) -> ApplyJob:
    """The git-state example's verify job, run as its runner would: verify, then the commit."""
    if ci == "github":
        workflow = load(GITHUB_GIT_STATE)
        steps = steps_named(workflow["jobs"]["verify"])
        verify = steps["Verify (what is missing, on the run's summary page)"]
        commit = steps["Commit the state file back to main"]
        env = {
            **github_env(workflow, commit, credentials),
            **github_env(workflow, verify, credentials),
            "GITHUB_STEP_SUMMARY": str(summary),
            # What the test points verify at: the test's S3 server, not https://{saveEndpoint}.
            "RECONCILER_STORAGE_ENDPOINT": credentials["RECONCILER_STORAGE_ENDPOINT"],
        }
        return ApplyJob(verify["run"], commit["run"], env, clone)
    pipeline = load(GITLAB_GIT_STATE)
    job = pipeline["reconciler-verify"]
    env = {**gitlab_env(pipeline, job), **credentials}
    return ApplyJob("\n".join(job["script"]), "\n".join(job["after_script"]), env, gitlab_clone)


def settle_recorder(box: Any, server: Any) -> dict[str, Any]:
    """Wait until the sandbox has recorded every task, and the S3 server lists every file it
    wrote; the recordings document."""
    deadline = time.monotonic() + 60  # a guard against a hang, not a measurement
    while box.counts().recorder_pending:
        assert time.monotonic() < deadline, box.recordings()
        time.sleep(0.02)
    document: dict[str, Any] = box.recordings()
    client = server.client()
    written = {
        (urlsplit(r["downloadUrl"]).path.split("/")[1], r["key"])
        for r in document["recordings"]
        if r["storage"] == "written"
    }
    while True:
        listed = {
            (bucket, item.object_name)
            for bucket in {bucket for bucket, _ in written}
            for item in client.list_objects(bucket, recursive=True)
        }
        if written <= listed:
            return document
        assert time.monotonic() < deadline, written - listed
        time.sleep(0.05)


@contextlib.contextmanager
def buckets(server: Any, *names: str) -> Iterator[None]:
    """The examples' buckets on the test S3 server, emptied and removed after."""
    for name in names:
        server.bucket(name)
    try:
        yield
    finally:
        client = server.client()
        for name in names:
            for item in client.list_objects(name, recursive=True):
                client.remove_object(name, item.object_name)
            client.remove_bucket(name)


@pytest.mark.e2e
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_verify_job_finds_what_was_recorded_and_names_what_is_missing(
    tmp_path: Path, seaweed_server: Any, ci: str
) -> None:
    """apply against a sandbox that records into a real S3 server, some clips never recorded;
    then the hourly verify job: the recorded ones found, the others missing on the summary, the
    job red, and what it found committed back like apply's outcomes."""
    from reconciler.sandbox import SandboxConfig, running_sandbox

    remote = make_remote(tmp_path, copy_manifests)
    admin = seaweed_server.admin
    # The sandbox takes the S3 server's keys as its own: JD Cloud OSS takes the JD Cloud keys,
    # and so verify reads the buckets with the same JDCLOUD_* the apply job signs with.
    config = SandboxConfig(
        access_key=admin.access_key,
        secret_key=admin.secret_key,
        record_after=0.0,
        # Whatever order apply's requests arrive in, seed 8 leaves 2 to 4 of the 7 unrecorded.
        record_fail_rate=0.4,
        seed=8,
        storage_endpoint=seaweed_server.endpoint,
    )
    summary = tmp_path / "summary.md"
    with buckets(seaweed_server, "highlights", "club-archive"), running_sandbox(config) as box:
        job = apply_job(ci, sandbox_env(box))
        work = job.clone(remote, tmp_path / "apply")
        shell(job.apply, work, job.env)
        shell(job.commit, work, job.env)
        recordings = settle_recorder(box, seaweed_server)
        ids = {record["requestId"]: record["body"] for record in box.accepted()}
        never = {ids[entry["requestId"]]["taskExternalId"] for entry in recordings["notRecorded"]}
        assert 0 < len(never) < 7, recordings  # the seed leaves some clips unrecorded, not all
        assert recordings["counts"]["objectsWritten"] > 0
        assert recordings["counts"]["objectsFailed"] == 0

        credentials = {
            "JDCLOUD_ACCESS_KEY": admin.access_key,
            "JDCLOUD_SECRET_KEY": admin.secret_key,
            "RECONCILER_STORAGE_ENDPOINT": seaweed_server.endpoint,
        }
        verify = verify_job(ci, credentials, summary)
        work = verify.clone(remote, tmp_path / "verify")
        result = shell(verify.apply, work, verify.env, check=False)
        shell(verify.commit, work, verify.env)
        objects = {
            bucket: {
                o.object_name for o in seaweed_server.client().list_objects(bucket, recursive=True)
            }
            for bucket in ("highlights", "club-archive")
        }

    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # something is missing: the job is red
    state = state_on(remote)
    names = {entry["name"]: entry for entry in state["tasks"].values()}
    sent_ids = {name: entry["taskExternalId"] for name, entry in names.items()}
    missing = {name for name, sent in sent_ids.items() if sent in never}
    assert len(missing) == len(never), sent_ids
    recorded = set(names) - missing
    report = (
        summary.read_text(encoding="utf-8")
        if ci == "github"
        else (work / "verify.md").read_text(encoding="utf-8")
    )
    assert "#### Missing" in report, report
    for name in missing:
        assert name in report, report
    # What reached main (the state, and the journal verify appended its findings to): the
    # recorded clips carry what verify found, the others `missing`.
    from reconciler.state import StateStore

    assert files_on(remote) == {"clips", STATE, JOURNAL}
    after = StateStore(clone(remote, tmp_path / "after") / STATE).load()
    for task_hash, entry in after.entries.items():
        outputs = after.recordings_of(task_hash)
        if entry.name in recorded:
            assert {output.status for output in outputs} == {"success"}, entry.name
            assert {output.source.value for output in outputs} == {"storage"}
        else:
            assert {output.status for output in outputs} == {"missing"}, entry.name
    assert "verify" in git(remote, "log", "-1", "--format=%s", "main")
    # Read-only in the buckets: verify wrote nothing there.
    assert sum(len(keys) for keys in objects.values()) == recordings["counts"]["objectsWritten"]


def check_gitlab_merge_request_plan(tmp_path: Path, remote: Path) -> None:
    pipeline = load(GITLAB_GIT_STATE)
    job = pipeline["reconciler-plan"]
    work = clone(remote, tmp_path / "merge-request")
    env = {**gitlab_env(pipeline, job), "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"}
    shell("\n".join(job["script"]), work, env)
    main = clone(remote, tmp_path / "main-plan")
    expected = shell("reconciler plan clips --format markdown", main, {"NO_COLOR": "1"})
    summary = [line for line in expected.stdout.splitlines() if line.startswith("**Plan")]
    assert summary and summary[0] in (work / "plan.md").read_text(encoding="utf-8")


def commit_script(
    ci: str, job_name: str = "apply"
) -> tuple[str, dict[str, str], Callable[[Path, Path], Path]]:
    """The step that commits the state after the job `job_name` ("apply" or "verify")."""
    if ci == "github":
        workflow = load(GITHUB_GIT_STATE)
        commit = steps_named(workflow["jobs"][job_name])["Commit the state file back to main"]
        return commit["run"], github_env(workflow, commit, {}), clone
    pipeline = load(GITLAB_GIT_STATE)
    job = pipeline[f"reconciler-{job_name}"]
    return "\n".join(job["after_script"]), gitlab_env(pipeline, job), gitlab_clone


@pytest.mark.parametrize("job_name", ["apply", "verify"])
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_commit_step_commits_what_apply_leaves_and_nothing_else(
    tmp_path: Path, ci: str, job_name: str
) -> None:
    script, env, clone_for = commit_script(ci, job_name)
    remote = make_remote(tmp_path, copy_manifests, initialised=False)
    commits = int(git(remote, "rev-list", "--count", "main"))

    # Nothing beside the state at all (apply refused, or never ran): nothing to commit.
    work = clone_for(remote, tmp_path / "nothing")
    shell(script, work, env)
    assert int(git(remote, "rev-list", "--count", "main")) == commits

    # A first apply killed before its first compaction: no state file, only the journal, and
    # the lock and temporary files. The journal is committed, even where a .gitignore (as
    # older advice had it) leaves journals out; the rest never is.
    work = clone_for(remote, tmp_path / "killed")
    (work / ".gitignore").write_text("*.journal\nreconciler-state*\n", encoding="utf-8")
    (work / JOURNAL).write_text('{"pending": "mark"}\n', encoding="utf-8")
    for leftover in LEFTOVERS:
        (work / leftover).write_text("x\n", encoding="utf-8")
    shell(script, work, env)
    assert files_on(remote) == {"clips", JOURNAL}
    assert git(remote, "show", f"main:{JOURNAL}") == '{"pending": "mark"}'

    # A later apply folded the journal into a new state file and removed the journal: the
    # state is committed and the journal's removal too.
    work = clone_for(remote, tmp_path / "compacted")
    (work / JOURNAL).unlink()
    (work / STATE).write_text('{"tasks": {}, "version": 1}\n', encoding="utf-8")
    shell(script, work, env)
    assert files_on(remote) == {"clips", STATE}
    # The commit says which job made it, and keeps CI from running on it.
    subject = git(remote, "log", "-1", "--format=%s", "main")
    assert job_name in subject and subject.endswith("[skip ci]"), subject

    # And a run that changed nothing commits nothing.
    commits = int(git(remote, "rev-list", "--count", "main"))
    work = clone_for(remote, tmp_path / "unchanged")
    result = shell(script, work, env)
    assert "The state did not change." in result.stdout
    assert int(git(remote, "rev-list", "--count", "main")) == commits


# --- the database mode's steps, run for real against PostgreSQL -----------------------------------

# A password that needs percent-encoding in the URI, as the examples' headers say.
CI_PASSWORD = "s3cret/p@ss#1%"


@dataclass(frozen=True)
class DatabaseState:
    """A named state in a fresh database, as a team sets it up from the examples' headers."""

    uri: str  # with the password: what goes into the RECONCILER_STATE secret
    password: str

    def never_shown_in(self, output: str) -> None:
        assert self.password not in output and quote(self.password, safe="") not in output


def database_state(server: Any, rights: str = "schema-by-dba") -> DatabaseState:
    """A CI user that is not a superuser, its rights as the README says, then `reconciler init`.

    `schema-by-dba`: a DBA created schema `reconciler`, owned by the CI user. `create-on-database`:
    the CI user may CREATE in the database, so its first `init` creates the schema itself.
    """
    from psycopg import sql

    database = server.create_database()
    database = database.rsplit("/", 1)[1].split("?")[0]
    user = f"ci_{uuid.uuid4().hex[:8]}"
    server.create_user(user, CI_PASSWORD)
    role = sql.Identifier(user)
    if rights == "schema-by-dba":
        server.execute(sql.SQL("CREATE SCHEMA reconciler AUTHORIZATION {}").format(role), database)
    else:
        grant = sql.SQL("GRANT CREATE ON DATABASE {} TO {}")
        server.execute(grant.format(sql.Identifier(database), role), database)
    uri = server.uri(database, user=user, password=CI_PASSWORD) + "#team-clips"
    # The one-time set-up, from a person's machine: the URI without the password, which comes
    # from PGPASSWORD.
    without_password = server.uri(database, user=user, password="") + "#team-clips"
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "init", "--state", without_password],
        capture_output=True,
        text=True,
        env=runner_env({"PGPASSWORD": CI_PASSWORD}),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    state = DatabaseState(uri, CI_PASSWORD)
    state.never_shown_in(result.stdout + result.stderr)
    return state


@pytest.fixture
def state_in_database(postgres_server: Any) -> DatabaseState:
    return database_state(postgres_server)


def database_tasks(state: DatabaseState) -> dict[str, str]:
    """name -> status of every task in the database state, read with `state list`."""
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "state", "list", "--format", "json"],
        capture_output=True,
        text=True,
        env=runner_env({"RECONCILER_STATE": state.uri}),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    state.never_shown_in(result.stdout + result.stderr)
    listing = json.loads(result.stdout)
    assert listing["state"].endswith("#team-clips") and ":***@" in listing["state"]
    return {task["name"]: task["status"] for task in listing["tasks"]}


def left_in(work: Path) -> str:
    """What a step left in the checkout besides what Git holds (nothing to push back: '')."""
    return git(work, "status", "--porcelain", "--ignored", "--untracked-files=all")


def database_apply_job(ci: str, variables: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """One database example's apply job: its script, and the environment its runner gives it."""
    if ci == "github":
        workflow = load(GITHUB_DATABASE)
        step = steps_named(workflow["jobs"]["apply"])["Apply"]
        secrets = {key: variables[key] for key in ("RECONCILER_STATE", *CREDENTIALS)}
        env = github_env(workflow, step, secrets)
        env["RECONCILER_ENDPOINT"] = variables["RECONCILER_ENDPOINT"]
        return step["run"], env
    pipeline = load(GITLAB_DATABASE)
    job = pipeline["reconciler-apply"]
    return "\n".join(job["script"]), {**gitlab_env(pipeline, job), **variables}


CREDENTIALS = ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY")


@pytest.mark.e2e
@pytest.mark.parametrize("rights", ["schema-by-dba", "create-on-database"])
def test_github_database_workflow_steps_run(
    tmp_path: Path, postgres_server: Any, sandbox: dict[str, str], rights: str
) -> None:
    state = database_state(postgres_server, rights)
    remote = make_remote(tmp_path, copy_manifests, initialised=False)  # no state in Git
    workflow = load(GITHUB_DATABASE)
    secrets = {"RECONCILER_STATE": state.uri, **{key: sandbox[key] for key in CREDENTIALS}}
    outputs = []

    # Pull request: validate, and the plan against the database state in the step summary.
    work = clone(remote, tmp_path / "pr")
    summary = tmp_path / "summary.md"
    for step in workflow["jobs"]["check"]["steps"]:
        if "run" in step and "pip install" not in step["run"]:
            env = {**github_env(workflow, step, secrets), "GITHUB_STEP_SUMMARY": str(summary)}
            result = shell(step["run"], work, env)
            outputs.append(result.stdout + result.stderr)
    assert "#### To submit (7)" in summary.read_text(encoding="utf-8")
    assert left_in(work) == ""

    # main: apply. Every outcome is in the database; nothing is left to push back.
    script, env = database_apply_job("github", {**sandbox, "RECONCILER_STATE": state.uri})
    work = clone(remote, tmp_path / "main")
    result = shell(script, work, env)
    outputs.append(result.stdout + result.stderr)
    assert result.stdout.count("::notice file=clips/") == 7
    assert left_in(work) == ""
    assert Counter(database_tasks(state).values()) == {"submitted": 7}

    # The next run, on another runner: nothing to submit.
    work = clone(remote, tmp_path / "main-again")
    result = shell(script, work, env)
    outputs.append(result.stdout + result.stderr)
    assert "::notice" not in result.stdout
    for output in outputs:
        state.never_shown_in(output)


@pytest.mark.e2e
def test_gitlab_database_pipeline_scripts_run(
    tmp_path: Path, state_in_database: DatabaseState, sandbox: dict[str, str]
) -> None:
    state = state_in_database
    remote = make_remote(tmp_path, copy_manifests, initialised=False)
    pipeline = load(GITLAB_DATABASE)
    outputs = []

    # Merge request: validate (JUnit) and the plan as Markdown, against the database state.
    work = clone(remote, tmp_path / "mr")
    plan = pipeline["reconciler-plan"]
    env = {**gitlab_env(pipeline, plan), "RECONCILER_STATE": state.uri}
    result = shell("\n".join(plan["script"]), work, env)
    outputs.append(result.stdout + result.stderr)
    assert "#### To submit (7)" in (work / "plan.md").read_text(encoding="utf-8")
    assert "<testsuites" in (work / "validate.xml").read_text(encoding="utf-8")

    # Default branch: apply; nothing is left to push back.
    script, env = database_apply_job("gitlab", {**sandbox, "RECONCILER_STATE": state.uri})
    work = clone(remote, tmp_path / "main")
    result = shell(script, work, env)
    outputs.append(result.stdout + result.stderr)
    assert "Apply complete: 7 submitted" in result.stdout
    assert left_in(work) == ""
    assert Counter(database_tasks(state).values()) == {"submitted": 7}

    # A task left `pending` (the API answered 500) fails the job; the mark is in the database
    # already, so the next run, from any runner, does not send it again.
    from reconciler.sandbox import SandboxConfig, running_sandbox

    git(work, "config", "user.name", "Editor")
    git(work, "config", "user.email", "editor@example.com")
    add_extra_clip(work)
    git(work, "add", "clips/extra.yaml")
    git(work, "commit", "-q", "-m", "one more clip")
    git(work, "push", "-q", "origin", "HEAD:main")
    with running_sandbox(SandboxConfig(failures={500: 1.0})) as failing:
        env.update(sandbox_env(failing))
        result = shell(script, clone(remote, tmp_path / "failing"), env, check=False)
    outputs.append(result.stdout + result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 pending (outcome unknown)" in result.stdout
    assert database_tasks(state)["cup-final-extra"] == "pending"
    with running_sandbox() as box:
        env.update(sandbox_env(box))
        result = shell(script, clone(remote, tmp_path / "after"), env, check=False)
        assert box.accepted() == []  # the pending clip waits for a person
    outputs.append(result.stdout + result.stderr)
    assert Counter(database_tasks(state).values()) == {"submitted": 7, "pending": 1}
    for output in outputs:
        state.never_shown_in(output)


@pytest.mark.e2e
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_database_verify_job_records_what_it_finds_in_the_database(
    tmp_path: Path, state_in_database: DatabaseState, seaweed_server: Any, ci: str
) -> None:
    """The database examples' verify job: its findings go to the database, nothing is left
    to push back, the URI's password is never shown, and the job is red for what is missing."""
    from reconciler.sandbox import SandboxConfig, running_sandbox
    from reconciler.state import open_state

    state = state_in_database
    remote = make_remote(tmp_path, copy_manifests, initialised=False)
    admin = seaweed_server.admin
    config = SandboxConfig(
        access_key=admin.access_key,
        secret_key=admin.secret_key,
        record_after=0.0,
        # Whatever order apply's requests arrive in, seed 8 leaves 2 to 4 of the 7 unrecorded.
        record_fail_rate=0.4,
        seed=8,
        storage_endpoint=seaweed_server.endpoint,
    )
    variables = {
        "RECONCILER_STATE": state.uri,
        "JDCLOUD_ACCESS_KEY": admin.access_key,
        "JDCLOUD_SECRET_KEY": admin.secret_key,
    }
    summary = tmp_path / "summary.md"
    with buckets(seaweed_server, "highlights", "club-archive"), running_sandbox(config) as box:
        script, env = database_apply_job(ci, {**variables, "RECONCILER_ENDPOINT": box.url})
        shell(script, clone(remote, tmp_path / "apply"), env)
        recordings = settle_recorder(box, seaweed_server)
        never = {
            record["body"]["taskExternalId"]
            for record in box.accepted()
            if record["requestId"] in {e["requestId"] for e in recordings["notRecorded"]}
        }
        assert 0 < len(never) < 7, recordings

        if ci == "github":
            workflow = load(GITHUB_DATABASE)
            step = steps_named(workflow["jobs"]["verify"])[
                "Verify (what is missing, on the run's summary page)"
            ]
            script = step["run"]
            env = {**github_env(workflow, step, variables), "GITHUB_STEP_SUMMARY": str(summary)}
        else:
            pipeline = load(GITLAB_DATABASE)
            job = pipeline["reconciler-verify"]
            script, env = "\n".join(job["script"]), {**gitlab_env(pipeline, job), **variables}
        env["RECONCILER_STORAGE_ENDPOINT"] = seaweed_server.endpoint
        work = clone(remote, tmp_path / "verify")
        result = shell(script, work, env, check=False)

    output = result.stdout + result.stderr
    state.never_shown_in(output)
    assert result.returncode == 1, output
    report = summary if ci == "github" else work / "verify.md"
    text = report.read_text(encoding="utf-8")
    assert "#### Missing" in text, text
    missing_rows = text.partition("#### Missing")[2].partition("####")[0]
    assert left_in(work) == ("?? verify.md" if ci == "gitlab" else "")  # its artifact only
    backend = open_state(state.uri)
    try:
        loaded = backend.load()
    finally:
        backend.close()
    for task_hash, entry in loaded.entries.items():
        statuses = {output.status for output in loaded.recordings_of(task_hash)}
        expected = "missing" if entry.sent_external_id in never else "success"
        assert statuses == {expected}, entry.name
        assert (f"| {entry.name} |" in missing_rows) is (expected == "missing"), text


@pytest.mark.e2e
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_a_lost_runner_with_the_database_state_sends_nothing_twice(
    tmp_path: Path, state_in_database: DatabaseState, ci: str
) -> None:
    """Issue 12: kill -9 an apply mid-send and lose its runner's disk; the next run re-sends
    nothing, loses nothing, and does not wait on the dead runner's lock."""
    from reconciler.sandbox import SandboxConfig, running_sandbox

    state = state_in_database
    remote = make_remote(tmp_path, many_clips, initialised=False)
    with running_sandbox(SandboxConfig(latency_ms=100)) as box:
        script, env = database_apply_job(ci, {**sandbox_env(box), "RECONCILER_STATE": state.uri})
        work = clone(remote, tmp_path / "first")
        first, killed = run_killing_apply(script, work, env, box, after=CLIPS // 5)
        sent_before_the_kill = len(box.accepted())
        shutil.rmtree(work)  # the runner is gone, and its disk with it
        second = shell(script, clone(remote, tmp_path / "second"), env, check=False)
        sent = Counter(record["path"]["streamName"] for record in box.accepted())

    output = first.stdout + second.stdout + second.stderr
    assert killed and 0 < sent_before_the_kill < CLIPS, first.stdout  # killed mid-send
    assert first.returncode != 0
    assert [stream for stream, times in sent.items() if times > 1] == [], output
    known = database_tasks(state)  # many_clips names each clip after its stream
    assert set(sent) <= set(known), output  # every task the API accepted is in the state
    assert len(known) == CLIPS, output  # each clip submitted, or pending for a person
    # The second apply did not give up on a stale lock: it sent the clips the first never got
    # to. The first left at most 2 x --concurrency (default 4) tasks claimed and unsent, and
    # at most 4 in flight that may have landed after the count above.
    assert sum(sent.values()) > sent_before_the_kill + 2 * 4 + 4, output
    state.never_shown_in(output)


@pytest.mark.e2e
def test_two_pipelines_on_one_database_state_send_each_clip_once(
    tmp_path: Path, state_in_database: DatabaseState
) -> None:
    """A GitHub and a GitLab pipeline (or two of either) applying at once: one waits its turn."""
    from reconciler.sandbox import SandboxConfig, running_sandbox

    state = state_in_database
    remote = make_remote(tmp_path, many_clips, initialised=False)
    with running_sandbox(SandboxConfig(latency_ms=20)) as box:
        variables = {**sandbox_env(box), "RECONCILER_STATE": state.uri}
        jobs = [database_apply_job(ci, variables) for ci in ("github", "gitlab")]
        steps = [
            subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                cwd=clone(remote, tmp_path / f"runner-{n}"),
                env=runner_env(env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n, (script, env) in enumerate(jobs)
        ]
        results = [(step.communicate(timeout=300)[0], step.returncode) for step in steps]
        sent = Counter(record["path"]["streamName"] for record in box.accepted())
    output = "".join(text for text, _ in results)
    assert [code for _, code in results] == [0, 0], output
    assert len(sent) == CLIPS and set(sent.values()) == {1}, output
    assert Counter(database_tasks(state).values()) == {"submitted": CLIPS}
    state.never_shown_in(output)


@pytest.mark.e2e
@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_moving_from_the_git_file_to_the_database_sends_nothing_again(
    tmp_path: Path, remote: Path, state_in_database: DatabaseState, ci: str
) -> None:
    """The README's migration: the Git-file example applied; `state migrate`; the file removed
    from the repository; the database example then sends only what is new."""
    from reconciler.sandbox import running_sandbox

    state = state_in_database
    with running_sandbox() as box:
        job = apply_job(ci, sandbox_env(box))
        work = job.clone(remote, tmp_path / "file-mode")
        shell(job.apply, work, job.env, check=False)
        shell(job.commit, work, job.env)
        assert len(box.accepted()) == 7

        # A person, in an up-to-date checkout of main.
        work = clone(remote, tmp_path / "migrate")
        git(work, "config", "user.name", "Person")
        git(work, "config", "user.email", "person@example.com")
        moved = shell(
            f'reconciler state migrate {STATE} "$RECONCILER_STATE"',
            work,
            {"RECONCILER_STATE": state.uri},
        )
        assert "Migrated 7 tasks" in moved.stdout and "verified entry by entry" in moved.stdout
        state.never_shown_in(moved.stdout + moved.stderr)
        git(work, "rm", "-q", STATE)
        add_extra_clip(work)
        git(work, "add", "clips/extra.yaml")
        git(work, "commit", "-q", "-m", "reconciler: the state moves to PostgreSQL")
        git(work, "push", "-q", "origin", "HEAD:main")
        assert STATE not in files_on(remote)

        script, env = database_apply_job(ci, {**sandbox_env(box), "RECONCILER_STATE": state.uri})
        result = shell(script, clone(remote, tmp_path / "database-mode"), env)
        names = [record["body"].get("taskExternalId") for record in box.accepted()[7:]]
    assert len(names) == 1, result.stdout  # only the new clip
    assert Counter(database_tasks(state).values()) == {"submitted": 8}
    state.never_shown_in(result.stdout + result.stderr)


def test_ci_examples_never_initialise_the_state() -> None:
    """`reconciler init` is a one-time step done by a person; in CI it would hide a lost state."""
    for path in EXAMPLES:
        for script in shell_scripts(path):
            assert not re.search(r"reconciler\s+init", script), f"{path.name}: {script}"
        # But their headers tell the person to run it once.
        lines = path.read_text(encoding="utf-8").splitlines()
        header = " ".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
        if path in (GITHUB_DATABASE, GITLAB_DATABASE):
            assert "reconciler init --state 'postgresql://" in header, path.name
            assert "pip install 'reconciler[postgres]'" in header, path.name
        else:
            assert "reconciler init" in header and STATE in header, path.name


# --- our own schemas, as editors and standard validators see them ------------------------------


@pytest.mark.parametrize("schema", [RECORD_TASK_SCHEMA, OUTPUT_SCHEMA], ids=lambda p: p.name)
def test_schema_passes_the_metaschema_with_ecma_262_regexes(schema: Path) -> None:
    for variant in ("default", "nonunicode"):  # both ECMAScript modes (regress)
        result = check_jsonschema("--check-metaschema", "--regex-variant", variant, schema)
        assert result.returncode == 0, result.stdout + result.stderr


def split_documents(path: Path, into: Path) -> list[Path]:
    """One file per YAML document: check-jsonschema reads one document per file."""
    parts = re.split(r"^---[ \t]*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    out = []
    for index, text in enumerate(part for part in parts if part.strip()):
        target = into / f"{path.stem}.{index}.yaml"
        target.write_text(text, encoding="utf-8")
        out.append(target)
    return out


def test_example_manifests_pass_a_standard_validator(tmp_path: Path) -> None:
    documents = [
        part
        for path in sorted(CUP_FINAL.glob("*.yaml"))
        for part in split_documents(path, tmp_path)
    ]
    assert len(documents) == 3  # the set of five clips, and press-conference.yaml's two
    assert any("kind: RecordTaskSet" in path.read_text(encoding="utf-8") for path in documents)
    result = check_jsonschema("--schemafile", RECORD_TASK_SCHEMA, *documents)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("saveBucket:", "saveBuckte:"), "'saveBuckte' was unexpected"),
        (("recordFileType: mp4", "recordFileType: mp4,flv"), "recordFileType"),
        (('endTime: "2026-11-20T19:13:10Z"', 'endTime: "2026-11-20 19:13:10"'), "endTime"),
        (("apiVersion: reconciler/v1", "apiVersion: reconciler/v2"), "apiVersion"),
    ],
    ids=["typo", "file-type", "time", "api-version"],
)
@pytest.mark.parametrize("source", [SINGLE_GOAL, CUP_FINAL / "clips.yaml"], ids=["task", "set"])
def test_broken_manifest_is_rejected_by_a_standard_validator(
    tmp_path: Path, change: tuple[str, str], expected: str, source: Path
) -> None:
    original = source.read_text(encoding="utf-8")
    assert change[0] in original
    broken = tmp_path / "broken.yaml"
    broken.write_text(original.replace(*change), encoding="utf-8")
    result = check_jsonschema("--schemafile", RECORD_TASK_SCHEMA, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout
