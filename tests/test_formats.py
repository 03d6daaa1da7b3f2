"""Every output format, parsed the way its reader parses it: JSON against schemas/output.schema.json,
JUnit as XML, GitHub annotations by their grammar, Markdown tables, and plain text with no ANSI
escapes outside a terminal (and none with NO_COLOR)."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.plan import Plan, PlanAction, PlanItem
from reconciler.report import (
    TIMELINE_COLLAPSE_UNCHANGED_AFTER,
    TIMELINE_MAX_BARS,
    mermaid_text,
    plan_markdown,
    plan_timelines,
)
from reconciler.state import State, StateEntry, StateStore, TaskStatus
from reconciler.tasks import load_tasks, request_hash

ROOT = Path(__file__).resolve().parent.parent
CUP_FINAL = ROOT / "examples" / "cup-final"
# goal-1 as a single RecordTask (the examples hold it in a clip set), same task.
SINGLE_GOAL = ROOT / "tests" / "fixtures" / "sets" / "cup-final-singles" / "goal-1.yaml"
OUTPUT_SCHEMA = ROOT / "schemas" / "output.schema.json"

ANNOTATION = re.compile(
    r"^::(error|warning|notice) file=[^,]+,line=\d+(,col=\d+)?(,title=[^:]+)?::.+"
)
PROBLEM_LINE = re.compile(r"^[^:\s][^:]*:\d+:\d+: .+")
ANSI = "\x1b["
# SGR colour parameters: 30-37/90-97 foreground, 40-47/100-107 background, 38/48 extended.
ANSI_COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
MARKDOWN_TABLE_HEADER = "| name | task | stream | times | manifest | recording |"
COLLAPSE_AFTER = 10  # the README promises that longer lists collapse

SEASON_CLIPS = 15  # 01 unchanged, 02 renamed, 03 pending, 04..15 create (12: collapses)

MANIFEST = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: {name}
  labels: {{event: {event}}}
spec:
  publishDomain: push.example.com
  appName: live
  streamName: "{stream}"
  recordTimes:
    - startTime: "{start}"
      endTime: "{end}"
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


# --- helpers -----------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The user's environment without anything that changes colour, state or credentials."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "COLUMNS", "LINES")
        and not key.startswith(("RECONCILER_", "JDCLOUD_"))
    }
    env["TERM"] = "xterm-256color"  # tempt colour: only a terminal may get it
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler ARGS` in `cwd`, stdout and stderr captured (so not a terminal)."""
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


def run_json(cwd: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = run(cwd, *args, "--format", "json")
    assert result.returncode == code, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def output_schema() -> Draft202012Validator:
    schema = json.loads(OUTPUT_SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(validator: Draft202012Validator, document: Any) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5]
    )


def assert_invalid(validator: Draft202012Validator, document: Any) -> None:
    assert not validator.is_valid(document), json.dumps(document)[:300]


def write_manifest(path: Path, name: str, stream: str, start: str, end: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = MANIFEST.format(name=name, event="season", stream=stream, start=start, end=end)
    path.write_text(text, encoding="utf-8")


def season_clip(n: int) -> str:
    return f"clips/season/clip-{n:02d}.yaml"


def make_workspace(root: Path) -> Path:
    """clips/cup-final (the examples), clips/season (15 past clips, one later), broken/ (bad)."""
    # The examples, moved to 2020 so that none is `waiting`, whatever today is.
    (root / "clips" / "cup-final").mkdir(parents=True)
    for path in CUP_FINAL.glob("*.yaml"):
        text = path.read_text(encoding="utf-8").replace("2026-11-20T", "2020-11-20T")
        (root / "clips" / "cup-final" / path.name).write_text(text, encoding="utf-8")
    for n in range(1, SEASON_CLIPS + 1):
        # A '|' is allowed in a stream name; the Markdown table must escape it.
        stream = f"cam|{n}" if n == SEASON_CLIPS else f"match-{n}"
        start = f"2020-03-{n:02d}T18:00:00Z"
        write_manifest(root / season_clip(n), f"clip-{n:02d}", stream, start, start[:-3] + "30Z")
    write_manifest(
        root / "clips/season/later.yaml",
        "clip-later",
        "final-2099",
        "2099-01-01T18:00:00Z",
        "2099-01-01T18:05:00Z",
    )
    broken = root / "broken"
    broken.mkdir()
    goal = SINGLE_GOAL.read_text(encoding="utf-8").replace("2026-11-20T", "2020-11-20T")
    (broken / "goal-1.yaml").write_text(goal, encoding="utf-8")  # stays valid
    (broken / "typo.yaml").write_text(
        goal.replace("saveBucket:", "saveBuckte:").replace("goal-1", "typo"), encoding="utf-8"
    )
    (broken / "too-short.yaml").write_text(
        goal.replace("19:13:10Z", "19:11:49Z").replace("goal-1", "short"), encoding="utf-8"
    )
    (broken / "tabs.yaml").write_text("apiVersion: reconciler/v1\nkind:\n\tRecordTask\n")
    return root


def write_state(root: Path) -> Path:
    """A state that gives the season plan every action: unchanged (one renamed), pending,
    replaced, orphaned; the rest of the season is create, and clip-later is waiting."""
    loaded = load_tasks([str(root / "clips" / "season")])
    assert loaded.ok, loaded.problems
    tasks = {task.name: task for task in loaded.tasks}
    stamp = "2020-04-01T10:00:00Z"

    def entry(
        name: str, status: TaskStatus, source: str, request: Any, request_id: str | None = None
    ) -> StateEntry:
        submitted = stamp if status is TaskStatus.SUBMITTED else None
        return StateEntry(
            request_hash(request), status, name, source, request, stamp, request_id, submitted
        )

    def changed(request: Any, stream: str) -> Any:
        other = copy.deepcopy(dict(request))
        other["path"]["streamName"] = other["body"]["streamName"] = stream
        return other

    entries = [
        entry("clip-01", TaskStatus.SUBMITTED, season_clip(1), tasks["clip-01"].request, "r" * 32),
        entry(
            "old-name", TaskStatus.SUBMITTED, "old/place.yaml", tasks["clip-02"].request, "s" * 32
        ),
        entry("clip-03", TaskStatus.PENDING, season_clip(3), tasks["clip-03"].request),
        entry(
            "clip-04",
            TaskStatus.SUBMITTED,
            season_clip(4),
            changed(tasks["clip-04"].request, "match-4-old"),
            "t" * 32,
        ),
        entry(
            "gone",
            TaskStatus.SUBMITTED,
            "clips/season/gone.yaml",
            changed(tasks["clip-05"].request, "gone"),
            "u" * 32,
        ),
    ]
    path = root / "reconciler-state.json"
    store = StateStore(path)
    with store.lock():
        store.write(State().with_entries(entries))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for the tests that share it: manifests plus a state with every kind of entry."""
    root = make_workspace(tmp_path_factory.mktemp("workspace"))
    write_state(root)
    return root


@pytest.fixture(scope="module")
def season_plan(workspace: Path) -> dict[str, Any]:
    return run_json(workspace, "plan", "clips/season")


# --- the schema itself -------------------------------------------------------------------------


def test_output_schema_is_a_valid_draft_2020_12_schema(output_schema: Draft202012Validator) -> None:
    assert output_schema.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = output_schema.schema["$defs"]
    text = OUTPUT_SCHEMA.read_text(encoding="utf-8")
    unused = [name for name in defs if f'"#/$defs/{name}"' not in text]
    assert unused == []


# --- validate ----------------------------------------------------------------------------------


def test_validate_json_valid_manifests(
    workspace: Path, output_schema: Draft202012Validator
) -> None:
    document = run_json(workspace, "validate", "clips")
    assert_valid(output_schema, document)
    assert document["command"] == "validate"
    assert document["valid"] is True
    assert document["summary"] == {
        "files": 2 + SEASON_CLIPS + 1,  # the examples: a set of five clips and a file of two
        "manifests": 7 + SEASON_CLIPS + 1,
        "invalidManifests": 0,
        "problems": 0,
    }
    assert all(item["valid"] and len(item["hash"]) == 64 for item in document["manifests"])


def test_validate_json_invalid_manifests(
    workspace: Path, output_schema: Draft202012Validator
) -> None:
    document = run_json(workspace, "validate", "broken", code=1)
    assert_valid(output_schema, document)
    assert document["valid"] is False
    assert document["summary"]["files"] == 4
    # tabs.yaml cannot be parsed: it holds no manifest, only a problem.
    assert document["summary"]["manifests"] == 3
    assert document["summary"]["invalidManifests"] == 2
    fields = {(p["file"], p["field"]) for p in document["problems"]}
    assert ("broken/typo.yaml", "spec.saveBuckte") in fields
    assert ("broken/too-short.yaml", "spec.recordTimes") in fields
    assert any(file == "broken/tabs.yaml" for file, _ in fields)
    by_file = {item["file"]: item for item in document["manifests"]}
    assert by_file["broken/goal-1.yaml"]["valid"] is True
    assert by_file["broken/typo.yaml"] == {
        "file": "broken/typo.yaml",
        "line": 3,
        "column": 1,
        "name": "cup-final-typo",
        "hash": None,
        "valid": False,
    }


def test_validate_junit_has_one_testcase_per_manifest(workspace: Path) -> None:
    result = run(workspace, "validate", "broken", "--format", "junit")
    assert result.returncode == 1, result.stderr
    root = ElementTree.fromstring(result.stdout.encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    listed = run_json(workspace, "validate", "broken", code=1)
    manifests = listed["manifests"]
    # One test case per manifest, plus one per file whose problems belong to no manifest.
    unreadable = {p["file"] for p in listed["problems"]} - {m["file"] for m in manifests}
    assert unreadable == {"broken/tabs.yaml"}
    assert len(cases) == len(manifests) + len(unreadable)
    assert suite.get("tests") == root.get("tests") == str(len(cases))
    failed = [case for case in cases if case.find("failure") is not None]
    assert suite.get("failures") == root.get("failures") == str(len(failed))
    assert suite.get("errors") == "0"
    for manifest in manifests:
        (case,) = [
            c
            for c in cases
            if c.get("file") == manifest["file"] and c.get("line") == str(manifest["line"])
        ]
        assert case.get("classname") == manifest["file"]
        assert manifest["name"] in (case.get("name") or "")
        failure = case.find("failure")
        if manifest["valid"]:
            assert failure is None
            continue
        assert failure is not None
        own = [p for p in listed["problems"] if p["file"] == manifest["file"]]
        assert failure.get("message") == own[0]["message"]
        for problem in own:
            where = f"{problem['file']}:{problem['line']}:{problem['column']}: {problem['field']}"
            assert where in (failure.text or "")
    (tabs,) = [c for c in cases if c.get("file") == "broken/tabs.yaml"]
    failure = tabs.find("failure")
    assert failure is not None
    assert "tab" in (failure.get("message") or "").lower()


def test_validate_junit_all_valid(workspace: Path) -> None:
    result = run(workspace, "validate", "clips/cup-final", "--format", "junit")
    assert result.returncode == 0, result.stderr
    root = ElementTree.fromstring(result.stdout.encode("utf-8"))
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 7
    assert root.get("failures") == "0"
    assert all(case.find("failure") is None for case in cases)


def test_validate_github_annotations(workspace: Path) -> None:
    result = run(workspace, "validate", "broken", "--format", "github")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    problems = run_json(workspace, "validate", "broken", code=1)["problems"]
    assert len(annotations) == len(problems)
    for line, problem in zip(annotations, problems, strict=True):
        assert ANNOTATION.match(line), line
        assert line.startswith(
            f"::error file={problem['file']},line={problem['line']},col={problem['column']},"
        )
        assert line.endswith(problem["message"].replace("%", "%25"))
    # Anything else is the one-line summary, which the log shows as is.
    assert [line for line in lines if not line.startswith("::")] == [lines[-1]]
    assert lines[-1].startswith("Checked 3 manifests in 4 files:")


def test_validate_github_all_valid_prints_only_the_summary(workspace: Path) -> None:
    result = run(workspace, "validate", "clips", "--format", "github")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"Checked {7 + SEASON_CLIPS + 1} manifests in {2 + SEASON_CLIPS + 1} files: all valid."
    ]


def test_github_annotation_escapes_message_and_properties(tmp_path: Path) -> None:
    # A file name with ',' and ':' must not break the property list; '%' in data is escaped.
    odd = tmp_path / "a,b:c.yaml"
    odd.write_text("apiVersion: reconciler/v1\nkind: RecordTask\nmetadata: {name: x}\nspec: 100%\n")
    result = run(tmp_path, "validate", odd.name, "--format", "github")
    assert result.returncode == 1
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert annotations
    for line in annotations:
        assert ANNOTATION.match(line), line
        assert "file=a%2Cb%3Ac.yaml," in line


# --- plan --------------------------------------------------------------------------------------


def test_plan_json_has_every_action(
    season_plan: dict[str, Any], output_schema: Draft202012Validator
) -> None:
    assert_valid(output_schema, season_plan)
    assert season_plan["summary"] == {
        "create": SEASON_CLIPS - 3,
        "unchanged": 2,
        "pending": 1,
        "waiting": 1,
        "replaced": 1,
        "orphaned": 1,
    }
    by_name: dict[str, list[dict[str, Any]]] = {}
    for item in season_plan["items"]:
        by_name.setdefault(item["name"], []).append(item)
    assert by_name["clip-02"][0]["renamedFrom"] == "old-name (old/place.yaml)"
    assert "readyAt" in by_name["clip-later"][0]
    replaced = next(i for i in by_name["clip-04"] if i["action"] == "replaced")
    assert replaced["replacedBy"] == next(
        i["hash"] for i in by_name["clip-04"] if i["action"] == "create"
    )
    assert by_name["gone"][0]["action"] == "orphaned"


def test_saved_plan_validates_and_equals_the_printed_one(
    tmp_path: Path, output_schema: Draft202012Validator
) -> None:
    root = make_workspace(tmp_path)
    write_state(root)
    result = run(root, "plan", "clips", "--out", "p.json", "--format", "json")
    assert result.returncode == 0, result.stderr
    saved = json.loads((root / "p.json").read_text(encoding="utf-8"))
    assert_valid(output_schema, saved)
    assert saved == json.loads(result.stdout)
    # And a text plan saved beside it is the same document shape.
    result = run(root, "plan", "clips/season", "--out", "q.json")
    assert result.returncode == 0, result.stderr
    assert "Saved the plan to q.json" in result.stdout
    assert_valid(output_schema, json.loads((root / "q.json").read_text(encoding="utf-8")))


def test_apply_dry_run_json_is_the_plan(
    workspace: Path, output_schema: Draft202012Validator
) -> None:
    document = run_json(workspace, "apply", "clips/season", "--dry-run")
    assert_valid(output_schema, document)
    assert document["command"] == "plan"


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_refused_manifests_json(
    workspace: Path, output_schema: Draft202012Validator, command: str
) -> None:
    extra = ["--dry-run"] if command == "apply" else []
    result = run(workspace, command, "broken", *extra, "--format", "json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert_valid(output_schema, document)
    assert document["command"] == command
    assert document["valid"] is False
    assert "nothing was" in result.stderr


def test_plan_github_annotations(workspace: Path, season_plan: dict[str, Any]) -> None:
    result = run(workspace, "plan", "clips/season", "--format", "github")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("Plan: 12 to submit, 2 unchanged, 1 waiting, 1 pending")
    levels = {"create": "notice", "waiting": "notice", "pending": "warning"}
    for item in season_plan["items"]:
        if item["action"] not in levels:
            continue
        (line,) = [
            line
            for line in lines
            if f"{item['action']}: {item['name']}  {item['hash'][:12]}" in line
        ]
        assert ANNOTATION.match(line), line
        assert line.startswith(
            f"::{levels[item['action']]} file={item['source']},line={item['line']},"
        )
    assert not any("::unchanged: " in line for line in lines)


def test_plan_github_annotations_point_at_manifests_that_exist(workspace: Path) -> None:
    result = run(workspace, "plan", "clips/season", "--format", "github")
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    replaced = [line for line in annotations if "::replaced:" in line]
    orphaned = [line for line in annotations if "::orphaned:" in line]
    assert replaced and orphaned
    for line in annotations:
        if line in orphaned:
            # Its manifest is gone: a file-less annotation, shown on the run, not in a diff.
            assert line.startswith("::warning title=reconciler plan::orphaned: "), line
        else:
            assert ANNOTATION.match(line), line


def markdown_blocks(text: str) -> list[tuple[str, list[str], bool]]:
    """(heading, table rows, collapsed) for every table in a plan/apply Markdown report."""
    blocks: list[tuple[str, list[str], bool]] = []
    heading, collapsed, rows = "", False, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            blocks.append((heading, rows, collapsed))
            rows = []
        if line.startswith("#### "):
            heading, collapsed = line[5:], False
        elif line.startswith("<summary>"):
            heading, collapsed = line.removeprefix("<summary>").removesuffix("</summary>"), True
        elif line == "</details>":
            collapsed = False
    return blocks


def unescaped_pipes(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row))


def test_plan_markdown_tables_and_collapsing(workspace: Path) -> None:
    result = run(workspace, "plan", "clips/season", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("### reconciler plan\n")
    assert (
        "**Plan: 12 to submit, 2 unchanged, 1 waiting, 1 pending, 1 replaced, 1 orphaned.**" in text
    )
    assert text.count("<details>") == text.count("</details>")
    blocks = {
        heading.split(" (")[0]: (heading, rows, collapsed)
        for heading, rows, collapsed in markdown_blocks(text)
    }
    assert set(blocks) == {
        "To submit",
        "Unchanged",
        "Waiting for the recording to complete",
        "Pending: sent before, outcome unknown",
        "Replaced: submitted earlier under a name that now asks for something else",
        "Orphaned: in state, in no manifest",
    }
    for heading, rows, collapsed in blocks.values():
        assert rows[0] == MARKDOWN_TABLE_HEADER
        assert rows[1] == "|---|---|---|---|---|---|"
        count = int(heading.rsplit("(", 1)[1].rstrip(")"))
        assert len(rows) - 2 == count
        # Long lists collapse; so does `unchanged`, which nobody needs to read.
        assert collapsed == (count > COLLAPSE_AFTER or heading.startswith("Unchanged")), heading
        # Every row has exactly the header's columns: a '|' in a value is escaped.
        assert {unescaped_pipes(row) for row in rows} == {7}
    create_rows = blocks["To submit"][1]
    assert any("cam\\|15" in row for row in create_rows)


def test_plan_markdown_short_list_is_not_collapsed(workspace: Path) -> None:
    result = run(
        workspace,
        "plan",
        "clips/cup-final",
        "--format",
        "markdown",
        "--state",
        "none.json",
    )
    assert result.returncode == 0, result.stderr
    assert "<details>" not in result.stdout
    (block,) = markdown_blocks(result.stdout)
    assert block[1][0] == MARKDOWN_TABLE_HEADER
    assert len(block[1]) == 2 + 7


# --- plan --format markdown: the timeline ----------------------------------------------------
# (tests/test_timeline.py renders these charts in a real browser; these read the source.)

MERMAID_ENTITY = re.compile(r"#(\d+);")


def unescape(text: str) -> str:
    """Mermaid's entity escapes (`#58;`) decoded, as Mermaid decodes them in the SVG."""
    return MERMAID_ENTITY.sub(lambda match: chr(int(match.group(1))), text)


def gantt_charts(markdown: str) -> dict[str, dict[str, list[str]]]:
    """Every ```mermaid chart by the stream its title names: bar labels per section, with
    Mermaid's entity escapes decoded."""
    charts: dict[str, dict[str, list[str]]] = {}
    for source in re.findall(r"^```mermaid\n(.*?)\n```$", markdown, re.MULTILINE | re.DOTALL):
        lines = source.splitlines()
        assert lines[0] == "gantt"
        sections: dict[str, list[str]] = {}
        stream = None
        for line in lines[1:]:
            assert line.startswith("    "), line
            if line.startswith("    title "):
                stream = unescape(line.removeprefix("    title ")).split(", ")[0]
            elif line.startswith("    section "):
                section = sections.setdefault(unescape(line.removeprefix("    section ")), [])
            elif " :" in line:
                label, _times = line.strip().split(" :")
                section.append(unescape(label))
        assert stream is not None and stream not in charts
        charts[stream] = sections
    return charts


def test_plan_markdown_draws_a_timeline_per_stream(workspace: Path) -> None:
    result = run(workspace, "plan", "clips/season", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    charts = gantt_charts(result.stdout)
    # One chart per stream with a clip drawn; the replaced task's old stream (match-4-old) and
    # the orphaned one's (gone) have none: their manifests no longer ask for them.
    streams = {f"push.example.com/live/match-{n}" for n in range(1, 15)}
    streams |= {"push.example.com/live/cam|15", "push.example.com/live/final-2099"}
    assert set(charts) == streams
    # An unchanged clip's label names its recording (tests/test_recording_outputs.py has more).
    assert charts["push.example.com/live/match-1"] == {
        "Unchanged": ["clip-01 (awaiting recording)"]
    }
    assert charts["push.example.com/live/match-2"] == {
        "Unchanged": ["clip-02 (awaiting recording)"]
    }
    assert charts["push.example.com/live/match-3"] == {"Pending": ["clip-03"]}
    assert charts["push.example.com/live/match-4"] == {"To submit": ["clip-04"]}
    assert charts["push.example.com/live/cam|15"] == {"To submit": ["clip-15"]}
    assert charts["push.example.com/live/final-2099"] == {"Waiting": ["clip-later"]}
    # The timelines come before the tables, which are as they were.
    assert result.stdout.index("```mermaid") < result.stdout.index("#### ")
    assert "```mermaid\ngantt\n    title push.example.com/live/cam#124;15, 2020-03-15 (UTC)\n" in (
        result.stdout
    )


def test_plan_markdown_timeline_draws_each_segment(tmp_path: Path) -> None:
    write_manifest(
        tmp_path / "goal.yaml", "goal", "final", "2020-06-01T19:10:00Z", "2020-06-01T19:11:00Z"
    )
    reel = MANIFEST.format(name="reel", event="final", stream="final", start="", end="")
    segments = "".join(
        f'    - {{startTime: "2020-06-01T19:{minute}:00Z", endTime: "2020-06-01T19:{minute}:30Z"}}\n'
        for minute in ("05", "20", "40")
    )
    reel = re.sub(r"  recordTimes:\n.*\n.*\n", f"  recordTimes:\n{segments}", reel)
    (tmp_path / "reel.yaml").write_text(reel, encoding="utf-8")
    result = run(tmp_path, "plan", ".", "--format", "markdown", "--state", "none.json")
    assert result.returncode == 0, result.stderr
    # Each segment is a bar, and the bars are in the order they start.
    assert gantt_charts(result.stdout) == {
        "push.example.com/live/final": {"To submit": ["reel 1/3", "goal", "reel 2/3", "reel 3/3"]}
    }


def plan_of(*items: tuple[str, PlanAction, int]) -> Plan:
    """A Plan of (name, action, stream number) items, each clip five minutes long."""

    def item(n: int, name: str, action: PlanAction, stream: int) -> PlanItem:
        start = f"2020-05-{1 + n // 24:02d}T{n % 24:02d}:00:00Z"
        request = {
            "path": {
                "publishDomain": "push.example.com",
                "appName": "live",
                "streamName": f"s{stream}",
            },
            "body": {"recordTimes": [{"startTime": start, "endTime": start[:-6] + "05:00Z"}]},
        }
        return PlanItem(action, f"{n:064x}", name, "clips.yaml", request)

    return Plan(
        items=tuple(item(n, *spec) for n, spec in enumerate(items)),
        created_at="2020-06-01T00:00:00Z",
    )


def test_plan_markdown_timeline_collapses_more_than_twenty_unchanged() -> None:
    assert TIMELINE_COLLAPSE_UNCHANGED_AFTER == 20  # the README says so
    plan = plan_of(
        *[(f"a-{n}", PlanAction.UNCHANGED, 1) for n in range(20)],
        *[(f"b-{n}", PlanAction.UNCHANGED, 2) for n in range(21)],
        *[(f"b-new-{n}", PlanAction.CREATE, 2) for n in range(2)],
    )
    first, second = plan_timelines(plan)
    assert [bar.label for bar in first.bars] == [f"a-{n}" for n in range(20)]
    assert [(bar.section, bar.label) for bar in second.bars] == [
        ("To submit", "b-new-0"),
        ("To submit", "b-new-1"),
        ("Unchanged", "21 unchanged clips"),
    ]
    collapsed = second.bars[-1]
    # From the first unchanged clip's start to the last one's end.
    assert (collapsed.start, collapsed.end) == ("2020-05-01T20:00:00Z", "2020-05-02T16:05:00Z")


def test_plan_markdown_timeline_too_large_to_draw_is_said() -> None:
    plan = plan_of(
        *[(f"a-{n}", PlanAction.CREATE, 1) for n in range(TIMELINE_MAX_BARS + 1)],
        ("b", PlanAction.CREATE, 2),
    )
    out = io.StringIO()
    plan_markdown(plan, out)
    assert out.getvalue().count("```mermaid") == 1  # the second stream's
    assert (
        f"Timeline of push.example.com/live/s1 not drawn: {TIMELINE_MAX_BARS + 1} bars"
        in out.getvalue()
    )


@given(st.text(max_size=40))
@example("gantt-intro")  # valid clip names that begin like a gantt statement, or a date
@example("Click-here")
@example("2020-06-01-final")
@example("a:b#c;d%%e\n")
def test_mermaid_text_is_plain_and_decodes_back(text: str) -> None:
    for escaped in (mermaid_text(text), mermaid_text(text, label=False)):
        # Nothing left that Mermaid's gantt grammar reads: only letters, digits, ` ._/()-`, and
        # entity escapes, which Mermaid turns back into the characters.
        plain = MERMAID_ENTITY.sub("", escaped)
        assert all(ch.isalnum() or ch in " ._/()-" for ch in plain), escaped
        assert "\n" not in plain and ":" not in plain and ";" not in plain
        assert unescape(escaped) == text
    assert not re.match(
        r"(?i)(gantt|section|title|click|topaxis|\d{4}-\d\d-\d\d)", mermaid_text(text)
    )


# --- state list / show ---------------------------------------------------------------------------


def test_state_list_json(workspace: Path, output_schema: Draft202012Validator) -> None:
    document = run_json(workspace, "state", "list")
    assert_valid(output_schema, document)
    assert document["state"] == "reconciler-state.json"
    assert [(t["name"], t["status"]) for t in document["tasks"]] == [
        ("clip-01", "submitted"),
        ("clip-03", "pending"),
        ("clip-04", "submitted"),
        ("gone", "submitted"),
        ("old-name", "submitted"),
    ]
    pending = document["tasks"][1]
    assert pending["requestId"] is None
    assert pending["submittedAt"] is None


def test_state_list_json_without_a_state_file(
    tmp_path: Path, output_schema: Draft202012Validator
) -> None:
    # Refused like apply refuses it (DESIGN §4), and still one document on stdout.
    document = run_json(tmp_path, "state", "list", "--state", "none.json", code=1)
    assert_valid(output_schema, document)
    assert document["ok"] is False
    assert "there is no state at none.json" in document["error"]["message"]


def test_state_show_json_is_versioned(workspace: Path, output_schema: Draft202012Validator) -> None:
    document = run_json(workspace, "state", "show", _hash_of(workspace, "clip-01"))
    assert document.get("formatVersion") == 1
    assert document.get("command") == "state show"
    assert_valid(output_schema, document)


def _hash_of(workspace: Path, name: str) -> str:
    tasks = run_json(workspace, "state", "list")["tasks"]
    return str(next(task["hash"] for task in tasks if task["name"] == name))


# --- schema strictness: a changed field is caught -------------------------------------------------


@pytest.fixture(scope="module")
def documents(
    workspace: Path, season_plan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """One real document of each kind (apply only once the sandbox exists)."""
    found = {
        "validate": run_json(workspace, "validate", "broken", code=1),
        "refused": run_json(workspace, "plan", "broken", code=1),
        "plan": season_plan,
        "state list": run_json(workspace, "state", "list"),
    }
    try:
        import reconciler.sandbox  # noqa: F401
    except ImportError:
        return found
    root = make_workspace(tmp_path_factory.mktemp("apply-documents"))
    found["apply"] = run_json(root, "apply", "clips/cup-final", "--sandbox")
    return found


NESTED = {
    "validate": [("problems", 0), ("manifests", 0), ("summary",)],
    "refused": [("problems", 0), ("manifests", 0), ("summary",)],
    "apply": [("outcomes", 0), ("summary",), ("plan",)],
    "plan": [("items", 0), ("items", 0, "request"), ("items", 0, "request", "body"), ("summary",)],
    "state list": [("tasks", 0), ("tasks", 0, "request", "path")],
}


def _at(document: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@pytest.mark.parametrize("command", sorted(NESTED))
def test_schema_rejects_an_added_field(
    documents: dict[str, dict[str, Any]], output_schema: Draft202012Validator, command: str
) -> None:
    if command not in documents:
        pytest.skip(f"no {command} document without reconciler.sandbox")
    assert_valid(output_schema, documents[command])
    for path in [(), *NESTED[command]]:
        changed = copy.deepcopy(documents[command])
        _at(changed, path)["surprise"] = 1
        assert_invalid(output_schema, changed)


@pytest.mark.parametrize("command", sorted(NESTED))
def test_schema_rejects_a_dropped_or_renamed_field(
    documents: dict[str, dict[str, Any]], output_schema: Draft202012Validator, command: str
) -> None:
    if command not in documents:
        pytest.skip(f"no {command} document without reconciler.sandbox")
    for path in [(), *NESTED[command]]:
        original = _at(documents[command], path)
        for key in original:
            dropped = copy.deepcopy(documents[command])
            del _at(dropped, path)[key]
            if key in (
                "saveObject",
                "taskExternalId",
                "recording",
                "recordings",
                "unmatchedCallbacks",
            ):
                # Optional in the request body; the evidence fields (DESIGN §7) are optional so
                # that documents from before them (saved plans) still validate.
                assert_valid(output_schema, dropped)
                continue
            assert_invalid(output_schema, dropped)
            renamed = copy.deepcopy(documents[command])
            target = _at(renamed, path)
            target[key + "X"] = target.pop(key)
            assert_invalid(output_schema, renamed)


def test_schema_rejects_another_format_version_and_unknown_commands(
    documents: dict[str, dict[str, Any]], output_schema: Draft202012Validator
) -> None:
    for document in documents.values():
        assert_invalid(output_schema, {**document, "formatVersion": 2})
        assert_invalid(output_schema, {**document, "command": "frobnicate"})
    # The validate shape with command "plan" is only the refusal: it cannot say valid: true.
    assert_invalid(output_schema, {**documents["validate"], "command": "plan", "valid": True})


def test_schema_ties_plan_item_fields_to_their_action(
    season_plan: dict[str, Any], output_schema: Draft202012Validator
) -> None:
    items = {item["action"]: item for item in season_plan["items"]}
    for action, change in [
        ("create", {"line": None}),
        ("create", {"stateStatus": "submitted"}),
        ("waiting", {"readyAt": None}),
        ("unchanged", {"stateStatus": "pending"}),
        ("pending", {"stateStatus": "submitted"}),
        ("replaced", {"replacedBy": None}),
        ("orphaned", {"line": 3}),
    ]:
        item = {**items[action], **change}
        item = {key: value for key, value in item.items() if value is not None or key == "line"}
        document = {**season_plan, "items": [item]}
        assert_invalid(output_schema, document)


# --- text output: colour, terminals, --quiet -------------------------------------------------------

TEXT_COMMANDS = [
    ("validate", "clips"),
    ("validate", "broken"),
    ("plan", "clips/season"),
    ("plan", "clips/season", "--verbose"),
    ("state", "list"),
    ("state", "show", "__clip-01__"),
]


def _expand(workspace: Path, args: tuple[str, ...]) -> list[str]:
    return [_hash_of(workspace, "clip-01") if arg == "__clip-01__" else arg for arg in args]


@pytest.mark.parametrize("args", TEXT_COMMANDS, ids=" ".join)
def test_no_ansi_when_not_a_terminal(workspace: Path, args: tuple[str, ...]) -> None:
    result = run(workspace, *_expand(workspace, args))
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.strip()
    assert ANSI not in result.stdout + result.stderr


def run_in_terminal(cwd: Path, args: list[str], env: dict[str, str]) -> str:
    """Output of `python -m reconciler ARGS` with a pseudo-terminal as stdout and stderr."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(controller)
    return b"".join(chunks).decode("utf-8", errors="replace")


needs_pty = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
COLOURED = [("plan", "clips/season"), ("state", "list")]


@needs_pty
def test_terminal_gets_colour_by_default(workspace: Path) -> None:
    # The control for the tests below: on a terminal, colour is used, so they can see it.
    output = run_in_terminal(workspace, ["plan", "clips/season"], clean_env())
    assert ANSI_COLOUR.search(output), output[:200]


@needs_pty
@pytest.mark.parametrize("args", COLOURED, ids=" ".join)
@pytest.mark.parametrize("how", ["NO_COLOR", "--no-color"])
def test_no_colour_on_a_terminal_when_asked(
    workspace: Path, args: tuple[str, ...], how: str
) -> None:
    env = clean_env(NO_COLOR="1") if how == "NO_COLOR" else clean_env()
    extra = ["--no-color"] if how == "--no-color" else []
    output = run_in_terminal(workspace, [*args, *extra], env)
    assert "clip-" in output
    assert not ANSI_COLOUR.search(output), repr(output[:200])


@needs_pty
@pytest.mark.parametrize("args", COLOURED, ids=" ".join)
def test_no_escapes_at_all_on_a_terminal_with_no_color(
    workspace: Path, args: tuple[str, ...]
) -> None:
    output = run_in_terminal(workspace, list(args), clean_env(NO_COLOR="1"))
    assert "clip-" in output
    assert ANSI not in output, repr(output[:200])


def test_state_list_text_is_not_truncated_in_a_pipe(workspace: Path) -> None:
    # A CI log has no width to fit: a requestId cut short with '…' could not be copied.
    result = run(workspace, "state", "list")
    assert result.returncode == 0
    assert "…" not in result.stdout
    assert "old/place.yaml" in result.stdout
    assert "r" * 32 in result.stdout


def test_quiet_validate_prints_only_problems_and_the_summary(workspace: Path) -> None:
    for args in (("-q",), ("-q", "-v")):
        result = run(workspace, "validate", "broken", *args)
        assert result.returncode == 1
        *problems, summary = result.stdout.splitlines()
        assert problems and all(PROBLEM_LINE.match(line) for line in problems), problems
        assert summary.startswith("Checked 3 manifests in 4 files:")
        assert " ok " not in result.stdout
    verbose = run(workspace, "validate", "broken", "-v")
    assert "ok cup-final-goal-1" in verbose.stdout  # so -q really removed something


def test_quiet_plan_prints_only_what_needs_attention_and_the_summary(workspace: Path) -> None:
    loud = run(workspace, "plan", "clips/season").stdout
    quiet = run(workspace, "plan", "clips/season", "--quiet").stdout
    assert "To submit (12):" in loud
    lines = [line for line in quiet.splitlines() if line.strip()]
    assert lines[0].startswith("Pending: sent before, outcome unknown")
    assert len(lines) == 3  # the heading, the one pending task, the summary
    assert "clip-03" in lines[1]
    assert (
        lines[-1]
        == "Plan: 12 to submit, 2 unchanged, 1 waiting, 1 pending, 1 replaced, 1 orphaned."
    )


def test_quiet_plan_without_problems_prints_only_the_summary(workspace: Path) -> None:
    result = run(workspace, "plan", "clips/cup-final", "--quiet", "--state", "none.json")
    assert result.stdout.splitlines() == ["Plan: 7 to submit."]


# --- apply (needs the sandbox) -----------------------------------------------------------------


@pytest.fixture
def sandbox_workspace(tmp_path: Path) -> Iterator[Path]:
    pytest.importorskip("reconciler.sandbox")
    yield make_workspace(tmp_path)


@pytest.mark.e2e
def test_apply_sandbox_json(sandbox_workspace: Path, output_schema: Draft202012Validator) -> None:
    root = sandbox_workspace
    document = run_json(root, "apply", "clips/season", "--sandbox")
    assert_valid(output_schema, document)
    assert document["sandbox"] is True
    assert document["state"] == "reconciler-state.sandbox.json"
    assert document["exitCode"] == 0
    assert (document["interrupted"], document["aborted"]) == (False, False)
    assert (document["authenticationFailed"], document["endpointUnreachable"]) == (False, False)
    assert document["summary"] == {
        "submitted": SEASON_CLIPS,
        "failed": 0,
        "unknown": 0,
        "not-sent": 0,
    }
    assert document["plan"]["create"] == SEASON_CLIPS
    assert {o["name"] for o in document["outcomes"]} == {
        f"clip-{n:02d}" for n in range(1, SEASON_CLIPS + 1)
    }
    # Run again: everything is unchanged, nothing is sent.
    again = run_json(root, "apply", "clips/season", "--sandbox")
    assert_valid(output_schema, again)
    assert again["outcomes"] == []
    assert again["plan"]["unchanged"] == SEASON_CLIPS
    listed = run_json(root, "state", "list", "--state", "reconciler-state.sandbox.json")
    assert_valid(output_schema, listed)
    assert {t["status"] for t in listed["tasks"]} == {"submitted"}


@pytest.mark.e2e
def test_apply_json_says_the_endpoint_was_unreachable(
    workspace: Path, output_schema: Draft202012Validator
) -> None:
    assert run(workspace, "init", "--state", "unreachable.json").returncode == 0
    with socket.socket() as probe:  # bound, then closed: connecting to it is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env(JDCLOUD_ACCESS_KEY="ak-test", JDCLOUD_SECRET_KEY="sk-test-secret")
    args = ["apply", "clips/season", "--state", "unreachable.json", "--format", "json"]
    result = run(workspace, *args, "--endpoint", f"http://127.0.0.1:{port}", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert_valid(output_schema, document)
    assert document["endpointUnreachable"] is True
    assert (document["interrupted"], document["aborted"]) == (False, False)
    assert document["summary"]["submitted"] == 0
    assert "sk-test-secret" not in result.stdout + result.stderr


@pytest.mark.e2e
def test_apply_sandbox_github(sandbox_workspace: Path) -> None:
    result = run(sandbox_workspace, "apply", "clips/season", "--sandbox", "--format", "github")
    assert result.returncode == 0, result.stderr
    *annotations, summary = result.stdout.splitlines()
    assert len(annotations) == SEASON_CLIPS
    for line in annotations:
        assert ANNOTATION.match(line), line
        assert line.startswith("::notice file=clips/season/clip-")
        assert "::submitted clip-" in line
    assert summary.startswith(f"SANDBOX apply complete: {SEASON_CLIPS} submitted")


@pytest.mark.e2e
def test_apply_sandbox_markdown_collapses_long_lists(sandbox_workspace: Path) -> None:
    result = run(sandbox_workspace, "apply", "clips/season", "--sandbox", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("### reconciler apply (SANDBOX)\n")
    assert f"**SANDBOX apply complete: {SEASON_CLIPS} submitted" in text
    assert f"<summary>{SEASON_CLIPS} tasks</summary>" in text
    (block,) = markdown_blocks(text)
    assert block[2] is True
    assert block[1][0] == "| outcome | name | task | requestId / message |"
    assert len(block[1]) == 2 + SEASON_CLIPS
    assert {unescaped_pipes(row) for row in block[1]} == {5}


@pytest.mark.e2e
def test_apply_sandbox_markdown_short_list_is_a_plain_table(sandbox_workspace: Path) -> None:
    result = run(
        sandbox_workspace,
        "apply",
        "clips/cup-final",
        "--sandbox",
        "-f",
        "markdown",
    )
    assert result.returncode == 0, result.stderr
    assert "<details>" not in result.stdout
    (block,) = markdown_blocks(result.stdout)
    assert len(block[1]) == 2 + 7


@pytest.mark.e2e
def test_apply_failures_and_unknown_outcomes_in_every_format(
    sandbox_workspace: Path, output_schema: Draft202012Validator
) -> None:
    """A sandbox that answers 500 (unknown: left pending) and 403 (failed, nothing created)."""
    from reconciler.sandbox import SandboxConfig, running_sandbox

    root = sandbox_workspace
    config = SandboxConfig(failures={500: 0.5, 403: 0.5}, seed=7)
    with running_sandbox(config) as box:
        env = clean_env(
            JDCLOUD_ACCESS_KEY=box.credentials.access_key,
            JDCLOUD_SECRET_KEY=box.credentials.secret_key,
            RECONCILER_ENDPOINT=box.url,
        )
        assert run(root, "init", env=env).returncode == 0
        result = run(root, "apply", "clips/season", "--format", "json", env=env)
        assert result.returncode == 1, result.stderr
        document = json.loads(result.stdout)
        assert_valid(output_schema, document)
        kinds = {o["outcome"] for o in document["outcomes"]}
        assert kinds == {"failed", "unknown"}
        assert document["exitCode"] == 1
        assert document["summary"]["failed"] + document["summary"]["unknown"] == SEASON_CLIPS
        for outcome in document["outcomes"]:
            assert outcome["httpStatus"] == (403 if outcome["outcome"] == "failed" else 500)
            assert outcome["message"]

        # The failed ones are sent again (nothing was created); the unknown ones are not.
        github = run(root, "apply", "clips/season", "--format", "github", env=env)
        assert github.returncode == 1
        *annotations, summary = github.stdout.splitlines()
        # Each task sent again gets its annotation; each one already pending its warning.
        assert len(annotations) == SEASON_CLIPS
        for line in annotations:
            assert ANNOTATION.match(line), line
            assert line.startswith(("::error ", "::warning "))
        pending = [line for line in annotations if "outcome of an earlier apply unknown" in line]
        assert len(pending) == document["summary"]["unknown"]
        assert all(line.startswith("::warning ") for line in pending)
        assert "pending (outcome unknown)" in summary

        markdown = run(root, "apply", "clips/season", "--format", "markdown", env=env)
        assert markdown.returncode == 1
        assert "pending (outcome unknown)" in markdown.stdout
        for _heading, rows, _collapsed in markdown_blocks(markdown.stdout):
            assert {unescaped_pipes(row) for row in rows} == {5}

    listed = run_json(root, "state", "list")
    assert_valid(output_schema, listed)
    assert {t["status"] for t in listed["tasks"]} == {"pending"}


@pytest.mark.e2e
def test_apply_text_is_plain_in_a_pipe_and_quiet_hides_successes(sandbox_workspace: Path) -> None:
    loud = run(sandbox_workspace, "apply", "clips/cup-final", "--sandbox")
    assert loud.returncode == 0, loud.stderr
    assert ANSI not in loud.stdout + loud.stderr
    assert "SANDBOX" in loud.stdout
    assert loud.stdout.count("submitted cup-final-") == 7
    root = sandbox_workspace
    (root / "reconciler-state.sandbox.json").unlink()
    quiet = run(root, "apply", "clips/cup-final", "--sandbox", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in quiet.stdout.splitlines() if line.strip()]
    assert lines == ["Plan: 7 to submit.", "SANDBOX apply complete: 7 submitted."]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_json_values)
def test_json_text_is_the_text_json_dumps_writes(value: Any) -> None:
    from reconciler.text import json_text

    assert json_text(value) == json.dumps(value, indent=2, ensure_ascii=False)
