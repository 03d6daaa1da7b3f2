"""Clip sets (`kind: RecordTaskSet`, DESIGN.md §2 "Clip sets"): each clip is the RecordTask a
hand-written manifest with the merged fields would be, every rule holds for every clip, and each
problem is reported where the offending value is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.manifests import (
    MAX_VALUES_PER_DOCUMENT,
    MAX_VALUES_PER_SET,
    load_file,
    parse_text,
)
from reconciler.plan import make_plan
from reconciler.schema import check_manifest, load_schema
from reconciler.state import State
from reconciler.tasks import Task, TaskSet, load_tasks
from tests.conftest import NOW

ROOT = Path(__file__).resolve().parent.parent
SETS = Path(__file__).parent / "fixtures" / "sets"
BAD = SETS / "bad"
SCHEMA = ROOT / "schemas" / "record-task.schema.json"
CUP_FINAL = ROOT / "examples" / "cup-final"
SINGLES = SETS / "cup-final-singles"  # the cup final's clips as they were before the set


def run(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` in `cwd`, with no credentials or reconciler settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    return subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        cwd=cwd,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=120,
    )


def reconciler(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(cwd, "reconciler", *args)


def by_name(tasks: TaskSet | list[Task]) -> dict[str, tuple[str, dict[str, str], Any]]:
    listed = tasks.tasks if isinstance(tasks, TaskSet) else tasks
    return {task.name: (task.hash, dict(task.labels), task.request) for task in listed}


def line_of(path: Path, text: str) -> int:
    """The first line of `path` that holds `text` (so the tests say which line they mean)."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --- a set is the RecordTasks it stands for -------------------------------------------------------


def test_the_design_example_is_its_hand_written_tasks() -> None:
    expanded = load_tasks([str(SETS / "valid" / "design-example.yaml")])
    by_hand = load_tasks([str(SETS / "valid" / "design-example-by-hand.yaml")])
    assert expanded.ok and by_hand.ok, expanded.problems + by_hand.problems
    assert by_name(expanded) == by_name(by_hand)
    assert by_name(expanded)["cup-final-goal-1"][1] == {"event": "cup-final", "kind": "goal"}
    assert by_name(expanded)["cup-final-goal-2"][1] == {"event": "cup-final"}
    assert [result.name for result in expanded.results] == ["cup-final-goal-1", "cup-final-goal-2"]


def test_each_clip_is_located_at_its_entry() -> None:
    """plan's manifest column, state's source and the JSON outputs' lines name the clip."""
    path = SETS / "valid" / "design-example.yaml"
    tasks = {task.name: task for task in load_tasks([str(path)]).tasks}
    for clip in ("goal-1", "goal-2"):
        task = tasks[f"cup-final-{clip}"]
        line = line_of(path, f"- name: {clip}")
        assert (task.location.file, task.location.line, task.location.column) == (
            str(path),
            line,
            7,
        )
        assert (task.name_location.line, task.name_location.column) == (line, 13)
    items = {item.name: item for item in make_plan(list(tasks.values()), State(), now=NOW).items}
    assert items["cup-final-goal-2"].line == line_of(path, "- name: goal-2")


def test_a_set_and_tasks_mixed_in_one_file() -> None:
    path = SETS / "valid" / "mixed.yaml"
    loaded = load_tasks([str(path)])
    assert loaded.ok, loaded.problems
    assert [task.name for task in loaded.tasks] == [
        "derby-kick-off",
        "derby-goal-1",
        "derby-goal-2",
        "derby-penalty-save",
        "derby-interview",
    ]
    tasks = {task.name: task for task in loaded.tasks}
    # Labels: the set's, then the clip's (which wins); any spec field the clip sets wins.
    assert tasks["derby-goal-1"].labels == {"event": "derby", "kind": "goal"}
    assert tasks["derby-penalty-save"].labels == {"event": "derby", "kind": "save"}
    assert tasks["derby-goal-1"].body["recordFileType"] == "mp4"
    assert tasks["derby-goal-2"].body["recordFileType"] == "flv;mp4"
    assert {task.location.line for task in loaded.tasks} == {
        line_of(path, "name: derby-kick-off") - 3,  # its apiVersion
        line_of(path, "- name: goal-1"),
        line_of(path, "- name: goal-2"),
        line_of(path, "- name: penalty-save"),
        line_of(path, "name: derby-interview") - 3,
    }


def test_selector_sees_the_merged_labels(tmp_path: Path) -> None:
    path = SETS / "valid" / "mixed.yaml"

    def selected(*selector: str) -> list[str]:
        args = [a for s in selector for a in ("--selector", s)]
        result = reconciler(tmp_path, "plan", path, *args, "--format", "json", "--state", "s.json")
        assert result.returncode == 0, result.stdout + result.stderr
        return sorted(item["name"] for item in json.loads(result.stdout)["items"])

    assert selected("kind=goal") == ["derby-goal-1", "derby-goal-2"]  # the set's label
    assert selected("kind=save") == ["derby-penalty-save"]  # the clip's override
    assert selected("event=derby", "kind=interview") == ["derby-interview"]
    assert len(selected("event=derby")) == 5


def test_every_output_format_works_per_clip(tmp_path: Path) -> None:
    path = SETS / "valid" / "mixed.yaml"
    names = ["derby-goal-1", "derby-goal-2", "derby-penalty-save"]
    formats = {
        "validate": ["text", "json", "github", "junit"],
        "plan": ["text", "json", "github", "markdown"],
    }
    for command, offered in formats.items():
        for fmt in offered:
            args = ["--state", "s.json"] if command == "plan" else []
            result = reconciler(tmp_path, command, path, "--format", fmt, *args)
            assert result.returncode == 0, (command, fmt, result.stdout, result.stderr)
            if command == "plan" or fmt in ("json", "junit"):
                assert all(name in result.stdout for name in names), (command, fmt, result.stdout)
    validated = json.loads(reconciler(tmp_path, "validate", path, "--format", "json").stdout)
    lines = {item["name"]: item["line"] for item in validated["manifests"]}
    assert lines["derby-penalty-save"] == line_of(path, "- name: penalty-save")


def test_check_manifest_checks_a_single_clip_with_its_set() -> None:
    result = load_file(str(BAD / "template-bad-value.yaml"))
    goal_1, _, goal_3 = result.manifests
    (problem,) = check_manifest(goal_1)
    assert problem.field == "spec.template.saveBucket"
    assert check_manifest(goal_3) == []  # it sets its own bucket


# --- property: generated sets plan exactly as their hand-written tasks ---------------------------

GOOD: dict[str, list[Any]] = {
    "publishDomain": ["push.example.com", "live.example.org"],
    "appName": ["live", "app-2"],
    "streamName": ["cup-final", "derby"],
    "saveBucket": ["highlights", "club-archive"],
    "saveEndpoint": ["s3.cn-north-1.jdcloud-oss.com", "s3.cn-east-2.jdcloud-oss.com"],
    "recordFileType": ["mp4", "MP4;flv", "ts;mp4"],
    "saveObject": ["highlights/{StreamName}/{StartTime}.{format}", "archive/goal"],
    "taskExternalId": ["ext-1", "goal"],
}
# Values that break a rule: standard ones (a pattern) and the project's own (repeats, placeholders).
BAD_VALUES: dict[str, list[Any]] = {
    "publishDomain": ["https://push.example.com"],
    "saveBucket": ["Bad_Bucket"],
    "recordFileType": ["mp4;MP4", "mov"],
    "saveObject": ["{Nope}/x"],
    "taskExternalId": [""],
}
REQUIRED = [
    "publishDomain",
    "appName",
    "streamName",
    "saveBucket",
    "saveEndpoint",
    "recordFileType",
]
LABELS = {"event": ["cup-final", "derby"], "kind": ["goal", "reel"], "team": ["home", "away"]}


def times(index: int, short: bool) -> list[dict[str, str]]:
    """Clip `index`'s own segment (each clip asks for other times, so none is another's twin)."""
    hour, end = 10 + index, "00:05" if short else "02:00"
    return [
        {"startTime": f"2026-11-20T{hour:02}:00:00Z", "endTime": f"2026-11-20T{hour:02}:{end}Z"}
    ]


@st.composite
def clip_sets(draw: st.DrawFn, *, bad: bool) -> dict[str, Any]:
    """A RecordTaskSet document; with bad=True, some values may break a rule."""

    def value(field: str) -> Any:
        pool = GOOD[field] + (BAD_VALUES.get(field, []) if bad else [])
        return draw(st.sampled_from(pool))

    def labels() -> dict[str, str]:
        keys = draw(st.lists(st.sampled_from(sorted(LABELS)), unique=True, max_size=2))
        return {key: draw(st.sampled_from(LABELS[key])) for key in keys}

    template_fields = draw(st.lists(st.sampled_from(sorted(GOOD)), unique=True))
    template = {field: value(field) for field in template_fields}
    clips = []
    for index in range(draw(st.integers(1, 6))):
        clip: dict[str, Any] = {"name": f"clip-{index}"}
        if draw(st.booleans()):
            clip["labels"] = labels()
        clip["recordTimes"] = times(index, bad and draw(st.booleans()))
        own = draw(st.lists(st.sampled_from(sorted(GOOD)), unique=True, max_size=3))
        missing = [field for field in REQUIRED if field not in template]
        for field in sorted(set(own) | set(missing)):
            clip[field] = value(field)
        clips.append(clip)
    metadata: dict[str, Any] = {"name": "match"}
    if draw(st.booleans()):
        metadata["labels"] = labels()
    return {
        "apiVersion": "reconciler/v1",
        "kind": "RecordTaskSet",
        "metadata": metadata,
        "spec": {"template": template, "clips": clips},
    }


def by_hand(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The RecordTasks a set stands for, as a person would write them out."""
    set_labels = document["metadata"].get("labels")
    tasks = []
    for clip in document["spec"]["clips"]:
        spec = dict(document["spec"]["template"])
        spec.update({k: v for k, v in clip.items() if k not in ("name", "labels")})
        metadata: dict[str, Any] = {"name": f"{document['metadata']['name']}-{clip['name']}"}
        if set_labels is not None or "labels" in clip:
            metadata["labels"] = {**(set_labels or {}), **clip.get("labels", {})}
        tasks.append(
            {
                "apiVersion": "reconciler/v1",
                "kind": "RecordTask",
                "metadata": metadata,
                "spec": spec,
            }
        )
    return tasks


def write_both(root: Path, document: dict[str, Any]) -> tuple[Path, Path]:
    """The set in one file, its tasks as one file each."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "by-hand").mkdir(parents=True)
    (root / "set.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    for index, task in enumerate(by_hand(document)):
        (root / "by-hand" / f"{index}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return root / "set.yaml", root / "by-hand"


PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(document=clip_sets(bad=False))
def test_a_set_plans_as_its_hand_written_tasks(tmp_path: Path, document: dict[str, Any]) -> None:
    set_file, folder = write_both(tmp_path / "case", document)
    expanded, written = load_tasks([str(set_file)]), load_tasks([str(folder)])
    assert expanded.ok and written.ok, expanded.problems + written.problems
    assert by_name(expanded) == by_name(written)
    planned = make_plan(expanded.tasks, State(), now=NOW)
    planned_by_hand = make_plan(written.tasks, State(), now=NOW)
    assert sorted((i.name, i.hash, i.action) for i in planned.items) == sorted(
        (i.name, i.hash, i.action) for i in planned_by_hand.items
    )
    # The schema describes the set: a standard validator accepts what validate accepts.
    assert list(Draft202012Validator(load_schema()).iter_errors(document)) == []


@PROPERTY
@given(document=clip_sets(bad=True))
def test_every_rule_holds_for_every_merged_clip(tmp_path: Path, document: dict[str, Any]) -> None:
    """A clip is invalid exactly when its hand-written task is; a template value no clip uses
    (every clip sets its own) is still checked, and then holds up the whole set."""
    set_file, folder = write_both(tmp_path / "case", document)
    expanded, written = load_tasks([str(set_file)]), load_tasks([str(folder)])
    invalid = {result.name for result in expanded.results if not result.valid}
    invalid_by_hand = {result.name for result in written.results if not result.valid}
    template, clips = document["spec"]["template"], document["spec"]["clips"]
    unused = [f for f in template if all(f in clip for clip in clips)]
    unused_bad = [f for f in unused if template[f] in BAD_VALUES.get(f, [])]
    if unused_bad:
        assert not expanded.ok
        assert invalid == {result.name for result in expanded.results}
        assert any("no clip uses it" in problem.message for problem in expanded.problems)
    else:
        assert invalid == invalid_by_hand
        assert expanded.ok == written.ok
    assert {t.name: t.hash for t in expanded.tasks} == {
        t.name: t.hash for t in written.tasks if t.name not in invalid
    }
    # A template problem is reported once, however many clips it affects.
    spots = [(p.location, p.field, p.message) for p in expanded.problems]
    assert len(spots) == len(set(spots))


# --- bad input: a located message, exit 1, no traceback -------------------------------------------

# fixture -> every problem line: (line, column, field, a fragment of the message)
BAD_INPUTS: dict[str, list[tuple[int, int, str, str]]] = {
    "empty-clips.yaml": [(14, 3, "spec.clips", "has 0 entries; at least 1 allowed")],
    "missing-in-a-clip.yaml": [
        (17, 7, "spec.clips[1].streamName", "required field is missing (neither this clip nor")
    ],
    "missing-everywhere.yaml": [
        (7, 3, "spec.template.saveEndpoint", "neither the template nor any clip sets it")
    ],
    "duplicate-clip.yaml": [
        (17, 13, "spec.clips[1].name", "clip name 'goal-1' is already used in this set at {}:15:13")
    ],
    "full-name-too-long.yaml": [
        (17, 13, "spec.clips[1].name", "full name 'cup-final-of-the-season-equaliser-in-the-38th")
    ],
    "set-name-too-long-for-its-clips.yaml": [
        (5, 9, "metadata.name", "every clip's full name <set>-<clip> is over 63 characters")
    ],
    "invalid-clip-name.yaml": [(15, 13, "spec.clips[0].name", "'Goal_1' must be 1 to 63 lower")],
    "collides-with-a-task.yaml": [
        (28, 13, "spec.clips[0].name", "name 'final-goal-1' is already used at {}:5:9")
    ],
    "collides-between-sets.yaml": [
        (19, 13, "spec.clips[0].name", "name 'cup-final-goal' is already used at {}:9:13")
    ],
    "unknown-template-field.yaml": [
        (7, 3, "spec.template.saveBucket", "neither the template nor any clip sets it"),
        (11, 5, "spec.template.saveBuckte", "did you mean 'saveBucket'? allowed here: publish"),
    ],
    "unknown-clip-field.yaml": [
        (17, 7, "spec.clips[0].saveObjct", "allowed here: name, labels, publishDomain")
    ],
    "template-not-a-mapping.yaml": [(7, 3, "spec.template", "must be a mapping, not a list")],
    "clips-not-a-list.yaml": [(14, 3, "spec.clips", "must be a list, not a mapping")],
    "clip-not-a-mapping.yaml": [(17, 7, "spec.clips[1]", "must be a mapping, not text 'goal-2'")],
    "template-bad-value.yaml": [
        (11, 17, "spec.template.saveBucket", "(affects clips goal-1 and goal-2)")
    ],
    "clip-bad-value.yaml": [(18, 7, "spec.clips[1].recordTimes", "total length 5 s is below")],
}


@pytest.mark.parametrize(("name", "expected"), BAD_INPUTS.items(), ids=BAD_INPUTS.keys())
def test_bad_input_is_reported_where_it_is_written(
    tmp_path: Path, name: str, expected: list[tuple[int, int, str, str]]
) -> None:
    relative = f"bad/{name}"
    result = reconciler(SETS, "validate", relative)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    *lines, summary = result.stdout.splitlines()
    assert summary.startswith("Checked "), summary
    assert len(lines) == len(expected), lines
    for line, (row, column, field, fragment) in zip(lines, expected, strict=True):
        assert line.startswith(f"{relative}:{row}:{column}: {field}: "), line
        assert fragment.format(relative) in line, line


def test_a_template_problem_is_reported_once_naming_its_clips(tmp_path: Path) -> None:
    path = tmp_path / "thirty.yaml"
    path.write_text(many_clips(30).replace("saveBucket: highlights", "saveBucket: High"))
    result = reconciler(tmp_path, "validate", path.name)
    assert result.returncode == 1
    (line, summary) = result.stdout.splitlines()
    assert line.startswith(f"thirty.yaml:{line_of(path, 'saveBucket: High')}:17: ")
    assert line.endswith(
        "(affects all 30 clips: c00000, c00001, c00002, c00003, c00004, c00005, c00006, c00007, "
        "c00008, c00009 and 20 more)"
    )
    assert summary.endswith("1 problem in 1 file; 0 of 30 manifests valid.")


def test_the_github_annotation_of_a_template_problem_points_at_the_template(
    tmp_path: Path,
) -> None:
    relative = "bad/template-bad-value.yaml"
    result = reconciler(SETS, "validate", relative, "--format", "github")
    assert result.returncode == 1
    assert result.stdout.startswith(f"::error file={relative},line=11,col=17,")


# --- size: 10,000 clips load, in linear work ------------------------------------------------------


def many_clips(count: int) -> str:
    """A set of `count` clips of one stream, one flow-style line each."""
    lines = [
        "apiVersion: reconciler/v1",
        "kind: RecordTaskSet",
        "metadata: {name: season, labels: {event: season}}",
        "spec:",
        "  template:",
        "    publishDomain: push.example.com",
        "    appName: live",
        "    streamName: season",
        "    saveBucket: highlights",
        "    saveEndpoint: s3.cn-north-1.jdcloud-oss.com",
        "    recordFileType: mp4",
        "  clips:",
    ]
    for index in range(count):
        day, minute = divmod(index, 24 * 60)
        hour, minute = divmod(minute, 60)
        start = f"2026-{1 + day // 28:02}-{1 + day % 28:02}T{hour:02}:{minute:02}"
        lines.append(
            f"    - {{name: c{index:05}, labels: {{n: '{index}'}}, "
            f'recordTimes: [{{startTime: "{start}:00Z", endTime: "{start}:30Z"}}]}}'
        )
    return "\n".join(lines) + "\n"


def test_a_set_of_10000_clips_loads(tmp_path: Path) -> None:
    path = tmp_path / "season.yaml"
    path.write_text(many_clips(10_000))
    loaded = load_tasks([str(path)])
    assert loaded.ok, loaded.problems[:3]
    assert len(loaded.tasks) == 10_000
    assert len({task.hash for task in loaded.tasks}) == 10_000
    assert loaded.tasks[-1].name == "season-c09999"
    assert loaded.tasks[-1].location.line == 12 + 10_000


def calls_to_load(tmp_path: Path, count: int) -> int:
    """How many Python function calls loading and checking a set of `count` clips makes."""
    path = tmp_path / f"set-{count}.yaml"
    path.write_text(many_clips(count).replace("saveBucket: highlights", "saveBucket: High"))
    calls = 0

    def count_calls(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count_calls)
    try:
        loaded = load_tasks([str(path)])
    finally:
        sys.setprofile(None)
    assert len(loaded.results) == count and len(loaded.problems) == 1
    return calls


def test_the_work_per_clip_does_not_grow_with_the_set(tmp_path: Path) -> None:
    """Counted in function calls, not time: quadratic work (each clip looking at every other,
    a template problem listing every clip) would make the bigger set cost 4 times as much."""
    load_tasks([str(SETS / "valid" / "mixed.yaml")])  # imports and caches, counted in neither
    small, large = calls_to_load(tmp_path, 200), calls_to_load(tmp_path, 800)
    assert large / 800 < 1.15 * (small / 200), (small, large)


def test_aliases_in_a_set_count_as_written_out_within_the_sets_budget(tmp_path: Path) -> None:
    def bomb(levels: int) -> str:
        return "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
            for i in range(levels)
        )

    head = "apiVersion: reconciler/v1\nkind: RecordTaskSet\n"
    # 111,111 values once written out: within a set's budget, so read (and then refused by
    # the schema); the same in a RecordTask is over the document's budget.
    assert parse_text("bomb.yaml", head + bomb(4)).problems == []
    (problem,) = parse_text("bomb.yaml", head.replace("Set", "") + bomb(4)).problems
    assert problem.message.startswith(f"document holds more than {MAX_VALUES_PER_DOCUMENT} values")
    assert "repeated by aliases" in problem.message
    (problem,) = parse_text("bomb.yaml", head + bomb(5)).problems
    assert problem.message.startswith(f"RecordTaskSet holds more than {MAX_VALUES_PER_SET} values")
    assert "repeated by aliases" in problem.message


def test_a_set_whose_kind_comes_last_is_told_why_it_is_too_big(tmp_path: Path) -> None:
    text = many_clips(2_000)
    text = text.replace("kind: RecordTaskSet\n", "") + "kind: RecordTaskSet\n"
    (problem,) = parse_text("late.yaml", text).problems
    assert "when its `kind` is written before its clips" in problem.message


# --- the schema, read by a standard validator (check-jsonschema) ----------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return run(ROOT, "check_jsonschema", "--color", "never", "--schemafile", SCHEMA, path)


@pytest.mark.parametrize(
    "path", [CUP_FINAL / "clips.yaml", SETS / "valid" / "design-example.yaml"], ids=lambda p: p.name
)
def test_check_jsonschema_accepts_a_valid_set(path: Path) -> None:
    result = check_jsonschema(path)
    assert result.returncode == 0, result.stdout + result.stderr


# Structural mistakes a standard validator catches, and the path it names.
STRUCTURAL = {
    "empty-clips.yaml": "$.spec.clips: [] should be non-empty",
    "invalid-clip-name.yaml": "$.spec.clips[0].name: 'Goal_1' does not match",
    "unknown-template-field.yaml": "$.spec.template: Additional properties are not allowed",
    "unknown-clip-field.yaml": "$.spec.clips[0]: Additional properties are not allowed",
    "template-not-a-mapping.yaml": "$.spec.template: [",
    "clips-not-a-list.yaml": "$.spec.clips: {",
    "clip-not-a-mapping.yaml": "$.spec.clips[1]: 'goal-2' is not of type 'object'",
    "template-bad-value.yaml": "$.spec.template.saveBucket: 'Highlights_2026' does not match",
}


@pytest.mark.parametrize(("name", "expected"), STRUCTURAL.items(), ids=STRUCTURAL.keys())
def test_check_jsonschema_refuses_a_set_with_a_structural_mistake(name: str, expected: str) -> None:
    relative = (BAD / name).relative_to(ROOT)
    result = check_jsonschema(relative)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{relative}::{expected}" in result.stdout, result.stdout


def test_the_schema_offers_both_kinds_and_keeps_ecma_patterns() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["kind"]["examples"] == [
        "RecordTask",
        "RecordTaskSet",
        "RecordNotifyConfig",
    ]
    assert schema["then"] == {"$ref": "#/$defs/recordTaskSet"}
    # A clip offers every spec field the template offers, and the template every spec field.
    spec = schema["$defs"]["spec"]["properties"]
    assert schema["$defs"]["template"]["properties"] == spec
    assert {**schema["$defs"]["clip"]["properties"]} == {
        "name": schema["$defs"]["clip"]["properties"]["name"],
        "labels": schema["$defs"]["clip"]["properties"]["labels"],
        **spec,
    }


# --- the examples: the cup final as one set keeps every hash --------------------------------------


def test_the_cup_final_set_is_the_clips_it_replaced() -> None:
    converted = load_tasks([str(CUP_FINAL / "clips.yaml")])
    before = load_tasks([str(SINGLES)])
    assert converted.ok and before.ok, converted.problems + before.problems
    assert by_name(converted) == by_name(before)
    assert len(converted.tasks) == 5


@pytest.mark.e2e
def test_a_second_sandbox_apply_after_the_conversion_sends_nothing(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for path in [*SINGLES.glob("*.yaml"), CUP_FINAL / "press-conference.yaml"]:
        shutil.copy(path, clips)
    first = reconciler(tmp_path, "apply", "clips", "--sandbox")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "SANDBOX apply complete: 7 submitted." in first.stdout
    state = tmp_path / "reconciler-state.sandbox.json"
    request_ids = {
        e["name"]: e["requestId"] for e in json.loads(state.read_text())["tasks"].values()
    }

    shutil.rmtree(clips)
    shutil.copytree(CUP_FINAL, clips)
    second = reconciler(tmp_path, "apply", "clips", "--sandbox")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "SANDBOX apply complete: 0 submitted, 7 unchanged." in second.stdout
    after = json.loads(state.read_text())["tasks"].values()
    assert {e["name"]: e["requestId"] for e in after} == request_ids
    # The state follows the move: the clips now come from the set's file.
    assert {e["source"] for e in after if "press" not in e["name"]} == {"clips/clips.yaml"}


# --- the bench's corpora: one set, and the same tasks as single files ----------------------------


def test_the_bench_set_corpus_is_its_single_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as bench/run.py imports its modules
    import sets_corpus as corpus

    set_file = corpus.write_set_corpus(tmp_path / "set", clips=60)
    singles = corpus.write_single_corpus(tmp_path / "single", clips=60)
    assert len(singles) == 60 and [p.name for p in (tmp_path / "set").iterdir()] == [set_file.name]
    expanded, written = load_tasks([str(set_file)]), load_tasks([str(tmp_path / "single")])
    assert expanded.ok and written.ok, expanded.problems + written.problems
    assert len(expanded.tasks) == 60
    assert by_name(expanded) == by_name(written)
