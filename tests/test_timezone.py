"""`--timezone ZONE` / RECONCILER_TIMEZONE: times in the outputs people read are shown in that
IANA zone, saying which; UTC by default; JSON stays UTC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from reconciler.state import State, StateEntry, StateStore, TaskStatus
from reconciler.tasks import load_tasks
from reconciler.timezones import ZoneError, display_zone, show_time, zone_note

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
    - {{startTime: "{start}", endTime: "{end}"}}
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""
# New York leaves daylight-saving time at 2026-11-01T06:00:00Z (02:00 EDT becomes 01:00 EST).
ACROSS_NEW_YORK_FALLBACK = ("2026-11-01T05:30:00Z", "2026-11-01T06:40:00Z")


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RECONCILER_", "JDCLOUD_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env={**clean, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "clips").mkdir()
    start, end = ACROSS_NEW_YORK_FALLBACK
    (tmp_path / "clips" / "goal.yaml").write_text(
        MANIFEST.format(name="goal-1", stream="final", start=start, end=end), encoding="utf-8"
    )
    (tmp_path / "clips" / "late.yaml").write_text(
        MANIFEST.format(
            name="late", stream="late", start="9999-12-31T23:00:00Z", end="9999-12-31T23:30:00Z"
        ),
        encoding="utf-8",
    )
    return tmp_path


# --- the conversion ----------------------------------------------------------------------------


def test_show_time_is_utc_by_default_and_iso_with_the_offset_elsewhere() -> None:
    assert show_time("2026-11-20T19:11:40Z", UTC) == "2026-11-20T19:11:40Z"
    shanghai = display_zone("Asia/Shanghai")
    assert show_time("2026-11-20T19:11:40Z", shanghai) == "2026-11-21T03:11:40+08:00"
    new_york = display_zone("America/New_York")
    assert show_time("2026-11-01T05:30:00Z", new_york) == "2026-11-01T01:30:00-04:00"
    assert show_time("2026-11-01T06:30:00Z", new_york) == "2026-11-01T01:30:00-05:00"
    assert show_time("2026-03-08T07:30:00Z", new_york) == "2026-03-08T03:30:00-04:00"
    assert show_time("2026-11-20T19:11:40Z", display_zone("Asia/Kathmandu")).endswith("+05:45")


def test_a_time_the_zone_cannot_show_stays_in_utc() -> None:
    # 9999-12-31T23:00Z is in year 10000 in Shanghai: shown as UTC, which its Z says.
    assert show_time("9999-12-31T23:00:00Z", display_zone("Asia/Shanghai")) == (
        "9999-12-31T23:00:00Z"
    )
    assert show_time("not a time", display_zone("Asia/Shanghai")) == "not a time"


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "", "../etc/passwd", "Asia/Shanghai\x00", "+08:00"]
)
def test_a_name_that_is_no_zone_is_refused(name: str) -> None:
    with pytest.raises(ZoneError, match="not an IANA time zone"):
        display_zone(name)


def test_the_note_names_the_zone_and_its_offset() -> None:
    assert zone_note(UTC, "2026-11-20T19:11:40Z") is None
    assert zone_note(display_zone("Asia/Shanghai"), "2026-11-20T19:11:40Z") == (
        "Times are in Asia/Shanghai (UTC+08:00 at 2026-11-21T03:11:40+08:00)."
    )


# --- the commands ------------------------------------------------------------------------------


def test_plan_text_is_utc_by_default(workspace: Path) -> None:
    result = run(workspace, "plan", "clips", "--state", "none.json")
    assert result.returncode == 0, result.stderr
    assert "2026-11-01T05:30:00Z .. 2026-11-01T06:40:00Z" in result.stdout
    assert "Times are in" not in result.stdout


@pytest.mark.parametrize("how", ["option", "environment"])
def test_plan_text_in_a_zone_says_which(workspace: Path, how: str) -> None:
    if how == "option":
        result = run(
            workspace, "plan", "clips", "--state", "none.json", "--timezone", "America/New_York"
        )
    else:
        env = {"RECONCILER_TIMEZONE": "America/New_York"}
        result = run(workspace, "plan", "clips", "--state", "none.json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Times are in America/New_York (UTC-0")
    # Each time with its own offset: the clip runs across the end of daylight-saving time.
    assert "2026-11-01T01:30:00-04:00 .. 2026-11-01T01:40:00-05:00" in result.stdout
    # Past the end of year 9999 in New York? No: 18:00 the same day; shown with the offset.
    assert "9999-12-31T18:00:00-05:00 .. 9999-12-31T18:30:00-05:00" in result.stdout


def test_a_time_past_year_9999_in_the_zone_does_not_break_the_plan(workspace: Path) -> None:
    (workspace / "clips" / "early.yaml").write_text(
        MANIFEST.format(
            name="early", stream="late", start="0001-01-01T00:00:00Z", end="0001-01-01T00:10:00Z"
        ),
        encoding="utf-8",
    )
    for fmt in ("text", "markdown", "github"):
        result = run(
            workspace,
            "plan",
            "clips",
            "--state",
            "none.json",
            "-f",
            fmt,
            "--timezone",
            "Asia/Tokyo",
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "9999-12-31T23:00:00Z .. 9999-12-31T23:30:00Z" in result.stdout


def test_plan_markdown_and_github_in_a_zone(workspace: Path) -> None:
    zone = ("--timezone", "Asia/Shanghai")
    markdown = run(workspace, "plan", "clips", "--state", "none.json", "-f", "markdown", *zone)
    assert markdown.returncode == 0, markdown.stderr
    assert "Times are in Asia/Shanghai (UTC+08:00 at " in markdown.stdout
    assert "| 2026-11-01T13:30:00+08:00 .. 2026-11-01T14:40:00+08:00 |" in markdown.stdout
    assert "title push.example.com/live/final, 2026-11-01 (Asia/Shanghai#44; UTC#43;08#58;00)" in (
        markdown.stdout
    )
    github = run(workspace, "plan", "clips", "--state", "none.json", "-f", "github", *zone)
    assert github.returncode == 0, github.stderr
    assert "2026-11-01T13%3A30%3A00+08%3A00" not in github.stdout  # the message is not a property
    assert "2026-11-01T13:30:00+08:00 .. 2026-11-01T14:40:00+08:00" in github.stdout


def test_json_stays_utc(workspace: Path) -> None:
    def items(*args: str, env: dict[str, str] | None = None) -> Any:
        result = run(
            workspace, "plan", "clips", "--state", "none.json", "-f", "json", *args, env=env
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["items"]

    plain = items()
    assert items("--timezone", "Asia/Shanghai") == plain
    assert items(env={"RECONCILER_TIMEZONE": "America/New_York"}) == plain
    assert "+08:00" not in json.dumps(plain)


@pytest.mark.parametrize(
    "args",
    [
        ("plan", "clips"),
        ("apply", "clips", "--dry-run"),
        ("state", "list"),
        ("state", "show", "abcdef"),
    ],
)
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_bad_zone_is_a_usage_error_naming_the_option(
    workspace: Path, args: tuple[str, ...], how: str
) -> None:
    if how == "option":
        result = run(workspace, *args, "--timezone", "Mars/Olympus")
    else:
        result = run(workspace, *args, env={"RECONCILER_TIMEZONE": "Mars/Olympus"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'--timezone' (or RECONCILER_TIMEZONE)" in result.stderr
    assert "'Mars/Olympus' is not an IANA time zone name" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workspace / "reconciler-state.json").exists()


def write_state(root: Path) -> str:
    loaded = load_tasks([str(root / "clips" / "goal.yaml")])
    (task,) = loaded.tasks
    entry = StateEntry(
        task.hash,
        TaskStatus.SUBMITTED,
        task.name,
        task.source,
        task.request,
        "2026-11-01T06:30:00Z",
        "r" * 32,
        "2026-11-01T05:45:00Z",
    )
    store = StateStore(root / "reconciler-state.json")
    with store.lock():
        store.write(State().with_entries([entry]))
    return task.hash


def test_state_list_and_show_in_a_zone(workspace: Path) -> None:
    key = write_state(workspace)
    listed = run(workspace, "state", "list")
    assert listed.returncode == 0, listed.stderr
    assert "2026-11-01T06:30:00Z" in listed.stdout
    assert "Times are in" not in listed.stdout, "UTC is the default and says nothing"
    listed = run(workspace, "state", "list", "--timezone", "America/New_York")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("Times are in America/New_York (UTC-0"), "says which zone"
    assert "2026-11-01T01:30:00-05:00" in listed.stdout
    shown = run(
        workspace, "state", "show", key[:8], env={"RECONCILER_TIMEZONE": "America/New_York"}
    )
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines()[:7])
    assert fields["updatedAt:"] == "2026-11-01T01:30:00-05:00"
    assert fields["submittedAt:"] == "2026-11-01T01:45:00-04:00"
    as_json = run(workspace, "state", "show", key[:8], "-f", "json", "--timezone", "Asia/Shanghai")
    assert json.loads(as_json.stdout)["task"]["updatedAt"] == "2026-11-01T06:30:00Z"


@pytest.mark.e2e
def test_apply_sandbox_text_in_a_zone(workspace: Path) -> None:
    pytest.importorskip("reconciler.sandbox")
    (workspace / "clips" / "late.yaml").unlink()  # the sandbox records any clip; one is enough
    result = run(workspace, "apply", "clips", "--sandbox", "--timezone", "Asia/Shanghai")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Times are in Asia/Shanghai (UTC+08:00 at " in result.stdout
    assert "2026-11-01T13:30:00+08:00 .. 2026-11-01T14:40:00+08:00" in result.stdout
    assert "SANDBOX apply complete: 1 submitted." in result.stdout
