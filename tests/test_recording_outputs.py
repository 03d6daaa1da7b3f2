"""Where users see recordings (DESIGN §7): what the evidence says of each task in every output
of plan (text, Markdown with its timeline, GitHub annotations, JSON), `state list` / `show` /
`list --unmatched` and apply's summary, with callback-supplied text shown as text everywhere.

The states are built through the state API (StateStore.claim / append / record_evidence /
record_callback), as the receiver and verify write them; the commands run as a user runs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.callbacks import parse_callback
from reconciler.plan import make_plan
from reconciler.report import plan_timelines, recording_counts, recordings_line
from reconciler.state import (
    EvidenceSource,
    Recording,
    State,
    StateEntry,
    StateStore,
    TaskStatus,
)
from reconciler.state.model import generated_external_id
from reconciler.tasks import Task, load_tasks
from reconciler.text import visible

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_SCHEMA = ROOT / "schemas" / "output.schema.json"
STAMP = "2020-07-01T10:00:00Z"
NOW = datetime(2020, 8, 1, tzinfo=UTC)

# Callback-supplied text that a terminal, a page or an annotation would act on.
HOSTILE_FORMAT = "<img src=x onerror=alert(1)>|mp4\x1b[31m"
HOSTILE_STATUS = "fail|`x`\x1b]8;;http://evil.example\x07<!--"
HOSTILE_URL = "http://s3.example.com/b/x.mp4?<script>|\x1b[2J"
HOSTILE_ID = "nobody-<b>sent</b>|this\x1b[5m"
ANSI = "\x1b"

MANIFEST = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: {name}
spec:
  publishDomain: push.example.com
  appName: live
  streamName: {stream}
  recordTimes:
    - {{startTime: "2020-06-01T19:{minute:02d}:00Z", endTime: "2020-06-01T19:{minute:02d}:40Z"}}
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""
# What each clip's state and evidence is; `new` is not in the state (to submit).
CLIPS = ("recorded", "awaiting", "failed", "missing", "settled", "pending", "new")


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env.update(NO_COLOR="1", PYTHONIOENCODING="utf-8", COLUMNS="250")
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def evidence_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def recording(name: str, status: str, fmt: str = "mp4", **extra: Any) -> Recording:
    source = EvidenceSource.STORAGE if status == "missing" else EvidenceSource.CALLBACK
    return Recording(evidence_id(name + status + fmt), source, fmt, status, STAMP, **extra)


def write_clips(
    root: Path, names: tuple[str, ...] = CLIPS, stream: str | None = None
) -> dict[str, Task]:
    """One manifest per name, a minute apart, each on its own stream unless `stream` is given."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for minute, name in enumerate(names):
        text = MANIFEST.format(name=name, minute=minute, stream=stream or name)
        (root / "clips" / f"{name}.yaml").write_text(text, encoding="utf-8")
    with contextlib.chdir(root):  # sources as the CLI run there reads them: clips/NAME.yaml
        loaded = load_tasks(["clips"])
    assert loaded.ok, loaded.problems
    return {task.name: task for task in loaded.tasks}


def entry_of(task: Task, status: TaskStatus, *, external: bool = True) -> StateEntry:
    submitted = status is TaskStatus.SUBMITTED
    return StateEntry(
        task.hash,
        status,
        task.name,
        task.source,
        task.request,
        STAMP,
        "r" * 32 if submitted else None,
        STAMP if submitted else None,
        generated_external_id(task.hash) if external else None,
    )


def build_state(
    root: Path, *, sandbox: bool = False, names: tuple[str, ...] = CLIPS
) -> dict[str, Task]:
    """Every recording state in one state: recorded, awaiting, failed (hostile callback text),
    missing (storage), a pending task settled by a callback, a pending one with no evidence
    (unless `names` leaves it out), and an unmatched callback whose id is hostile text."""
    tasks = write_clips(root, names)
    store = StateStore(root / "reconciler-state.json", lock_timeout=5)
    if sandbox:
        with store.lock():
            store.write(State(sandbox=True))
    else:
        store.create()
    with store.lock():
        store.claim(
            [
                entry_of(tasks["recorded"], TaskStatus.SUBMITTED),
                entry_of(tasks["awaiting"], TaskStatus.SUBMITTED, external=False),
                entry_of(tasks["failed"], TaskStatus.SUBMITTED),
                entry_of(tasks["missing"], TaskStatus.SUBMITTED),
                entry_of(tasks["settled"], TaskStatus.PENDING),
                *([entry_of(tasks["pending"], TaskStatus.PENDING)] if "pending" in tasks else []),
            ]
        )
    added = store.record_evidence(
        [
            (
                tasks["recorded"].hash,
                recording(
                    "recorded",
                    "success",
                    download_url=HOSTILE_URL,
                    file_size="6007851",
                    duration="40000.0",
                ),
            ),
            (tasks["failed"].hash, recording("failed", HOSTILE_STATUS, HOSTILE_FORMAT)),
            (tasks["missing"].hash, recording("missing", "missing")),
        ]
    )
    assert added == 3
    settled = store.record_callback(parse_callback(callback_for(tasks["settled"])), STAMP)
    assert settled.entry is not None and settled.entry.hash == tasks["settled"].hash
    body = callback_for(tasks["recorded"], taskExternalId=HOSTILE_ID, format=HOSTILE_FORMAT)
    unmatched = store.record_callback(parse_callback(body), STAMP)
    assert unmatched.entry is None and unmatched.reason
    return tasks


def callback_for(task: Task, **changes: Any) -> dict[str, Any]:
    body = task.request["body"]
    times = body["recordTimes"][0]
    group = [{"beginTime": str(_ms(times["startTime"])), "endTime": str(_ms(times["endTime"]))}]
    document: dict[str, Any] = {
        "publishDomain": body["publishDomain"],
        "appName": body["appName"],
        "streamName": body["streamName"],
        "event": "record_done",
        "status": "success",
        "format": "mp4",
        "group": group,
        "downloadUrl": "http://s3.example.com/highlights/settled.mp4",
        "taskExternalId": generated_external_id(task.hash),
    }
    document.update(changes)
    return document


def _ms(text: str) -> int:
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Task]]:
    """Read-only for the tests that share it."""
    root = tmp_path_factory.mktemp("recordings")
    return root, build_state(root)


def assert_no_raw_hostile_text(output: str) -> None:
    """No escape character reaches the output, and no markup the callbacks held."""
    assert ANSI not in output and "\x07" not in output
    for raw in ("<img", "<script>", "<b>", "<!--"):
        assert raw not in output, raw


# --- the pure part: counts and the summary line ---------------------------------------------


def test_counts_and_line_of_every_recording_state(workspace: tuple[Path, dict[str, Task]]) -> None:
    root, tasks = workspace
    state = StateStore(root / "reconciler-state.json").load()
    plan = make_plan(list(tasks.values()), state, now=NOW)
    assert recording_counts(plan.items) == {
        "recorded": 2,  # the settled task was recorded too
        "awaitingRecording": 1,
        "recordingFailed": 1,
        "missing": 1,
        "settledByCallback": 1,
        "settledByStorage": 0,
    }
    assert recordings_line(plan.items) == (
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing; "
        "1 pending task settled by callback: never sent again."
    )
    assert recordings_line(plan.items, tense="past") == (
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing; "
        "1 pending task was settled by callback: never sent again."
    )
    # Nothing in the state: no line at all.
    assert recordings_line(make_plan(list(tasks.values()), State(), now=NOW).items) is None


def test_timeline_bars_carry_the_recording_state(workspace: tuple[Path, dict[str, Task]]) -> None:
    root, tasks = workspace
    state = StateStore(root / "reconciler-state.json").load()
    plan = make_plan(list(tasks.values()), state, now=NOW)
    bars = {
        bar.label: (bar.section, bar.tag)
        for timeline in plan_timelines(plan)
        for bar in timeline.bars
    }
    assert bars == {
        "recorded (recorded)": ("Unchanged", "done"),
        "awaiting (awaiting recording)": ("Unchanged", "active"),
        "failed (recording failed)": ("Unchanged", "crit"),
        "missing (missing)": ("Unchanged", "crit"),
        "settled (settled by callback, recorded)": ("Unchanged", "done"),
        "pending": ("Pending", "crit"),
        "new": ("To submit", ""),
    }


def test_more_than_twenty_unchanged_collapse_per_recording_state(tmp_path: Path) -> None:
    names = tuple(f"clip-{n:02d}" for n in range(25))
    tasks = write_clips(tmp_path, names, stream="season")
    state = State().with_entries(entry_of(task, TaskStatus.SUBMITTED) for task in tasks.values())
    state = state.with_evidence(
        [(tasks[name].hash, recording(name, "success")) for name in names[:22]]
        + [(tasks["clip-24"].hash, recording("clip-24", "failed"))]
    )
    plan = make_plan(list(tasks.values()), state, now=NOW)
    (timeline,) = plan_timelines(plan)
    assert [(bar.label, bar.tag) for bar in timeline.bars] == [
        ("22 unchanged clips (recorded)", "done"),
        ("2 unchanged clips (awaiting recording)", "active"),
        ("1 unchanged clip (recording failed)", "crit"),
    ]


# --- plan: text, Markdown, GitHub annotations, JSON -----------------------------------------


def test_plan_text_says_each_recording_and_sums_them_up(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    root, _ = workspace
    result = cli(root, "plan", "clips")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[-2:] == [
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing; "
        "1 pending task settled by callback: never sent again.",
        "Plan: 1 to submit, 5 unchanged, 1 pending.",
    ]
    # Without --verbose, the unchanged tasks to look at are still listed, the others are not.
    assert "Unchanged, recording to look at (3 of 5; --verbose lists all):" in out
    shown = {line.split()[1]: line for line in lines if line.startswith("  = ")}
    assert set(shown) == {"failed", "missing", "settled"}
    assert shown["failed"].endswith("  [recording failed]")
    assert shown["missing"].endswith("  [missing]")
    assert shown["settled"].endswith("  [pending settled by callback; recorded; requestId unknown]")
    (pending,) = (line for line in lines if line.startswith("  ! "))
    assert pending.endswith("  [no evidence yet]")
    verbose = cli(root, "plan", "clips", "--verbose").stdout
    assert "Unchanged (5):" in verbose
    assert re.search(r"= recorded .*  \[recorded\]$", verbose, re.MULTILINE)
    assert re.search(r"= awaiting .*  \[awaiting recording\]$", verbose, re.MULTILINE)
    # --quiet keeps the pending section and, as something failed, the recordings line.
    quiet = cli(root, "plan", "clips", "--quiet").stdout
    assert "Recordings: " in quiet and "Unchanged" not in quiet
    assert_no_raw_hostile_text(out + verbose + quiet)


def test_plan_markdown_has_a_recording_column_escaped(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    root, _ = workspace
    result = cli(root, "plan", "clips", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert_no_raw_hostile_text(out)
    assert (
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing; "
        "1 pending task settled by callback: never sent again." in out
    )
    rows = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| name ")
    }
    assert set(rows) == set(CLIPS)
    # Every row has the header's 7 cell boundaries: the callbacks' `|` are escaped.
    assert {len(re.findall(r"(?<!\\)\|", row)) for row in rows.values()} == {7}
    assert rows["recorded"].endswith("| recorded |")
    assert rows["new"].endswith("| - |")
    assert rows["pending"].endswith("| no evidence yet |")
    assert rows["missing"].endswith("| **missing** (mp4: no file in the bucket) |")
    assert rows["settled"].endswith("| pending settled by callback; recorded; requestId unknown |")
    failed = rows["failed"]
    assert "**recording failed** (&lt;img src=x onerror=alert(1)&gt;\\|mp4\\\\x1b\\[31m" in failed
    assert "\\`x\\`" in failed and "&lt;\\!--" in failed


def test_plan_timeline_in_markdown_tags_bars_by_recording(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    root, _ = workspace
    out = cli(root, "plan", "clips", "--format", "markdown").stdout
    bars = dict(
        re.findall(
            r"^    (\S.*?) :(done|active|crit), 2000", out, re.MULTILINE
        )  # the stand-in year
    )
    assert bars == {
        "recorded (recorded)": "done",
        "awaiting (awaiting recording)": "active",
        "failed (recording failed)": "crit",
        "missing (missing)": "crit",
        "settled (settled by callback#44; recorded)": "done",
        "pending": "crit",
    }
    assert "Timeline bars (Mermaid's colours)" in out


def test_plan_github_warns_at_the_manifest_of_a_failed_or_missing_recording(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    root, _ = workspace
    result = cli(root, "plan", "clips", "--format", "github")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "Plan: 1 to submit, 5 unchanged, 1 pending."
    assert lines[-2].startswith("Recordings: 2 recorded")
    recording = [line for line in lines if "title=reconciler plan%3A recording::" in line]
    assert [line.split("::")[1].split(" ")[0] for line in recording] == [
        "warning",
        "warning",
        "notice",
    ]
    failed, missing, settled = recording
    assert failed.startswith("::warning file=clips/failed.yaml,line=1,")
    assert "::recording failed: failed  " in failed
    # The callback's text is shown as text: controls escaped, one line.
    assert "<img src=x onerror=alert(1)>|mp4\\x1b[31m: fail|`x`\\x1b]8;;" in failed
    assert missing.startswith("::warning file=clips/missing.yaml,line=1,")
    assert missing.endswith("mp4: no file in the bucket")
    assert settled.startswith("::notice file=clips/settled.yaml,line=1,")
    assert "never sent again (its requestId stays unknown)" in settled
    assert ANSI not in result.stdout and "\x07" not in result.stdout


def test_plan_json_has_recordings_and_validates(
    workspace: tuple[Path, dict[str, Task]], output_schema: Draft202012Validator
) -> None:
    root, _ = workspace
    result = cli(root, "plan", "clips", "--format", "json", "--out", "saved.json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert_valid(output_schema, document)
    assert json.loads((root / "saved.json").read_text(encoding="utf-8")) == document
    assert document["recordings"] == {
        "recorded": 2,
        "awaitingRecording": 1,
        "recordingFailed": 1,
        "missing": 1,
        "settledByCallback": 1,
        "settledByStorage": 0,
    }
    items = {item["name"]: item for item in document["items"]}
    assert "recording" not in items["new"]
    assert items["settled"]["action"] == "unchanged"
    assert items["settled"]["stateStatus"] == "pending"
    assert items["settled"]["recording"]["settled"] is True
    assert items["settled"]["recording"]["settledBy"] == "callback"
    assert items["pending"]["recording"] == {"state": None, "settled": False, "outputs": []}
    (output,) = items["failed"]["recording"]["outputs"]
    assert output["format"] == HOSTILE_FORMAT and output["status"] == HOSTILE_STATUS


def test_the_schema_refuses_what_the_evidence_rules_forbid(
    workspace: tuple[Path, dict[str, Task]], output_schema: Draft202012Validator
) -> None:
    """The schema can fail: an unchanged `pending` task must be a settled one, a `pending`
    item cannot be settled, a create has no recording, counts are closed."""
    root, _ = workspace
    document = json.loads(cli(root, "plan", "clips", "--format", "json").stdout)
    index = {item["name"]: n for n, item in enumerate(document["items"])}

    def changed(name: str, edit: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(document))
        edit(copy["items"][index[name]] if name else copy)
        return copy

    for bad in (
        changed("settled", lambda item: item["recording"].update(settled=False)),
        changed("settled", lambda item: item.pop("recording")),
        changed("settled", lambda item: item["recording"].pop("settledBy")),
        changed("pending", lambda item: item["recording"].update(settled=True)),
        changed("new", lambda item: item.update(recording=items_recording)),
        changed("recorded", lambda item: item["recording"].update(state="recordedd")),
        changed("recorded", lambda item: item["recording"]["outputs"][0].update(size="1")),
        changed("", lambda doc: doc["recordings"].update(pending=1)),
    ):
        assert not output_schema.is_valid(bad), json.dumps(bad)[:200]


items_recording = {"state": "recorded", "settled": False, "outputs": []}


# --- state list / show / list --unmatched --------------------------------------------------


def test_state_list_has_a_recording_column_and_the_outputs_count(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    root, _ = workspace
    result = cli(root, "state", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "task",
        "status",
        "recording",
        "outputs",
        "name",
        "requestId",
        "updated",
        "source",
    ]
    rows = {line.split("  clips/")[1].rstrip(): line for line in lines[1:] if "  clips/" in line}
    expected = {
        "recorded.yaml": ("submitted", "recorded", "1"),
        "awaiting.yaml": ("submitted", "awaiting recording", "0"),
        "failed.yaml": ("submitted", "recording failed", "1"),
        "missing.yaml": ("submitted", "missing", "1"),
        "settled.yaml": ("pending", "pending settled by callback; recorded", "1"),
        "pending.yaml": ("pending", "no evidence yet", "0"),
    }
    for source, (status, words, outputs) in expected.items():
        assert re.search(rf"  {status}  +{re.escape(words)}  +{outputs}  ", rows[source]), rows[
            source
        ]
    assert lines[-3:] == [
        "6 tasks in reconciler-state.json, 1 pending, "
        "1 pending settled by evidence (never sent again).",
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing.",
        "1 record callback matched no task: reconciler state list --unmatched --state "
        "reconciler-state.json",
    ]


def test_state_list_json_has_recording_and_taskexternalid(
    workspace: tuple[Path, dict[str, Task]], output_schema: Draft202012Validator
) -> None:
    root, tasks = workspace
    result = cli(root, "state", "list", "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert_valid(output_schema, document)
    assert document["unmatchedCallbacks"] == 1
    by_name = {task["name"]: task for task in document["tasks"]}
    assert by_name["recorded"]["taskExternalId"] == generated_external_id(tasks["recorded"].hash)
    assert by_name["awaiting"]["taskExternalId"] is None  # sent before reconciler sent one
    assert by_name["recorded"]["recording"]["state"] == "recorded"
    assert by_name["recorded"]["recording"]["outputs"][0]["downloadUrl"] == HOSTILE_URL
    assert by_name["settled"]["recording"]["settledBy"] == "callback"
    assert by_name["missing"]["recording"]["outputs"][0]["source"] == "storage"


def test_state_show_lists_every_output_escaped(workspace: tuple[Path, dict[str, Task]]) -> None:
    root, tasks = workspace
    recorded = cli(root, "state", "show", tasks["recorded"].hash[:12])
    assert recorded.returncode == 0, recorded.stderr
    out = recorded.stdout
    assert f"taskExternalId: {generated_external_id(tasks['recorded'].hash)}\n" in out
    assert "recording:    recorded\n" in out
    assert "outputs: 1\n  - mp4: success, from callback at 2020-07-01T10:00:00Z\n" in out
    assert "    downloadUrl: http://s3.example.com/b/x.mp4?<script>|\\x1b[2J\n" in out
    assert "    fileSize:    6007851\n    duration:    40000.0\n" in out
    failed = cli(root, "state", "show", tasks["failed"].hash[:12]).stdout
    assert "  - <img src=x onerror=alert(1)>|mp4\\x1b[31m: fail|`x`\\x1b]8;;" in failed
    awaiting = cli(root, "state", "show", tasks["awaiting"].hash[:12]).stdout
    assert "taskExternalId: none recorded\n" in awaiting
    assert "outputs: none yet\n" in awaiting
    settled = cli(root, "state", "show", tasks["settled"].hash[:12]).stdout
    assert "requestId:    unknown (the evidence settled this pending task" in settled
    assert "recording:    pending settled by callback; recorded\n" in settled
    for out in (recorded.stdout, failed, awaiting, settled):
        assert ANSI not in out and "\x07" not in out


def test_state_show_json_validates(
    workspace: tuple[Path, dict[str, Task]], output_schema: Draft202012Validator
) -> None:
    root, tasks = workspace
    result = cli(root, "state", "show", tasks["failed"].hash, "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert_valid(output_schema, document)
    assert document["task"]["recording"]["state"] == "recording failed"


def test_state_list_unmatched_text_and_json(
    workspace: tuple[Path, dict[str, Task]], output_schema: Draft202012Validator
) -> None:
    root, _ = workspace
    result = cli(root, "state", "list", "--unmatched")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "received",
        "reason",
        "stream",
        "format",
        "status",
        "taskExternalId",
    ]
    (row,) = lines[1:-1]
    assert row.startswith("2020-07-01T10:00:00Z  ")
    assert "push.example.com/live/recorded" in row and "  success  " in row
    assert "<img src=x onerror=alert(1)>|mp4\\x1b[31m" in row
    assert row.rstrip().endswith("nobody-<b>sent</b>|this\\x1b[5m")
    assert lines[-1].startswith("1 unmatched record callback in reconciler-state.json")
    assert ANSI not in result.stdout

    document = json.loads(cli(root, "state", "list", "--unmatched", "--format", "json").stdout)
    assert_valid(output_schema, document)
    (kept,) = document["unmatched"]
    assert kept["taskExternalId"] == HOSTILE_ID
    assert kept["format"] == HOSTILE_FORMAT.lower()
    assert kept["stream"] == "push.example.com/live/recorded"
    assert kept["callback"]["format"] == HOSTILE_FORMAT  # the body as received
    assert "nobody-<b>sent</b>" in kept["reason"]  # the matcher quotes it with repr()


def test_state_list_unmatched_when_there_is_none(tmp_path: Path) -> None:
    StateStore(tmp_path / "reconciler-state.json").create()
    result = cli(tmp_path, "state", "list", "--unmatched")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "No unmatched record callbacks in reconciler-state.json.\n"
    document = json.loads(cli(tmp_path, "state", "list", "--unmatched", "-f", "json").stdout)
    assert document["unmatched"] == []


# --- apply: the summary's recordings line; a settled task is not pending ----------------------


def test_apply_says_what_evidence_settled_and_does_not_count_it_pending(
    tmp_path: Path, output_schema: Draft202012Validator
) -> None:
    names = tuple(name for name in CLIPS if name != "pending")
    build_state(tmp_path, sandbox=True, names=names)
    state = ("--sandbox", "--state", "reconciler-state.json")
    result = cli(tmp_path, "apply", "clips", *state)
    # Only `new` is sent; the settled task is not, and it leaves nothing pending: exit 0.
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        [line for line in lines if line.startswith("submitted ")]
        == [line for line in lines if line.startswith("submitted new (")]
        != []
    )
    assert lines[-2:] == [
        "Recordings: 2 recorded, 1 awaiting recording, 1 recording failed, 1 missing; "
        "1 pending task was settled by callback: never sent again.",
        "SANDBOX apply complete: 1 submitted, 5 unchanged.",
    ]
    assert "Pending tasks may or may not exist" not in result.stdout
    assert_no_raw_hostile_text(result.stdout)

    again = cli(tmp_path, "apply", "clips", *state, "--format", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    document = json.loads(again.stdout)
    assert_valid(output_schema, document)
    assert document["exitCode"] == 0 and document["summary"]["submitted"] == 0
    assert document["recordings"]["settledByCallback"] == 1
    assert document["recordings"]["awaitingRecording"] == 2  # `new` was sent by the first run

    markdown = cli(tmp_path, "apply", "clips", *state, "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    assert "1 pending task was settled by callback: never sent again." in markdown.stdout
    assert_no_raw_hostile_text(markdown.stdout)

    github = cli(tmp_path, "apply", "clips", *state, "--format", "github")
    assert github.returncode == 0, github.stderr
    assert github.stdout.splitlines()[-1] == "SANDBOX apply complete: 0 submitted, 6 unchanged."
    assert "::warning file=clips/failed.yaml,line=1,title=reconciler apply%3A recording::" in (
        github.stdout
    )
    assert ANSI not in github.stdout


def test_apply_of_a_saved_plan_reads_the_recordings_from_the_state(tmp_path: Path) -> None:
    build_state(tmp_path, sandbox=True)
    assert cli(tmp_path, "plan", "clips", "--out", "plan.json").returncode == 0
    saved = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    for item in saved["items"]:  # what a plan file says of evidence is never trusted
        item.pop("recording", None)
    (tmp_path / "plan.json").write_text(json.dumps(saved), encoding="utf-8")
    result = cli(tmp_path, "apply", "plan.json", "--sandbox", "--state", "reconciler-state.json")
    assert result.returncode == 1, result.stdout + result.stderr  # `pending` is left pending
    assert "[pending settled by callback; recorded; requestId unknown]" in result.stdout
    assert "1 pending task was settled by callback: never sent again." in result.stdout
    assert "SANDBOX apply complete: 1 submitted, 1 pending (outcome unknown), 5 unchanged." in (
        result.stdout
    )


def test_plan_markdown_renders_callback_text_as_text(
    workspace: tuple[Path, dict[str, Task]],
) -> None:
    """Rendered as GitHub would (tests/test_review_text.py's checks: no raw HTML, link,
    image or comment), the failed recording's cell shows the callback's text as written."""
    from tests.test_review_text import cells_of, rendered

    root, _ = workspace
    page = rendered(cli(root, "plan", "clips", "--format", "markdown").stdout)
    cells = cells_of(page)
    detail = f"({visible(HOSTILE_FORMAT)}: {visible(HOSTILE_STATUS)} (callback))"
    assert f"recording failed {detail}" in cells
    assert "pending settled by callback; recorded; requestId unknown" in cells
