"""The plan's timeline as a reader sees it: `reconciler plan --format markdown`'s ```mermaid
blocks rendered by the real `mermaid` npm package (tests/browser/package-lock.json) in headless
Chromium (Debian's package), counting the bars of the SVG it draws.

Without Chromium or tests/browser/node_modules this module is skipped, saying what to install;
with CI set (as in .ci/run, which installs both) it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.plan import MAX_SETTLE_SECONDS
from reconciler.report import Timeline, TimelineBar, timeline_gantt
from reconciler.state import (
    EvidenceSource,
    Recording,
    State,
    StateEntry,
    StateStore,
    TaskStatus,
)
from reconciler.tasks import load_tasks
from tests.browser.render import Bar, RenderedChart, mermaid_blocks, missing, render

MISSING = missing()
if MISSING:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        raise RuntimeError(
            f"CI is set, so the timeline must be rendered in a real browser, but this machine "
            f"{MISSING} (.ci/run installs both)"
        )
    pytest.skip(f"rendering the timeline {MISSING}", allow_module_level=True)

STAMP = "2020-07-01T10:00:00Z"
DOCUMENT = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: {name}
spec:
  publishDomain: push.example.com
  appName: live
  streamName: {stream}
  recordTimes:
{times}
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


def manifest(name: str, stream: str, *segments: tuple[str, str]) -> str:
    times = "\n".join(
        f'    - {{startTime: "{start}", endTime: "{end}"}}' for start, end in segments
    )
    return DOCUMENT.format(name=name, stream=json.dumps(stream), times=times)


def write_clips(root: Path, documents: Sequence[str]) -> None:
    (root / "clips").mkdir(parents=True, exist_ok=True)
    (root / "clips" / "timeline.yaml").write_text("---\n".join(documents), encoding="utf-8")


def write_state(root: Path, statuses: dict[str, TaskStatus]) -> None:
    """A state in which each named clip (as the manifests now ask for it) has that status."""
    loaded = load_tasks([str(root / "clips")])
    assert loaded.ok, loaded.problems
    entries = []
    for task in loaded.tasks:
        status = statuses.get(task.name)
        if status is None:
            continue
        submitted = status is TaskStatus.SUBMITTED
        entries.append(
            StateEntry(
                task.hash,
                status,
                task.name,
                task.source,
                task.request,
                STAMP,
                "r" * 32 if submitted else None,
                STAMP if submitted else None,
            )
        )
    assert len(entries) == len(statuses)
    store = StateStore(root / "reconciler-state.json")
    with store.lock():
        store.write(State().with_entries(entries))


def plan_markdown(root: Path, *args: str) -> str:
    """`reconciler plan clips --format markdown` run in `root`, as CI would run it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RECONCILER_", "JDCLOUD_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "clips", "--format", "markdown", *args],
        cwd=root,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rendered(markdown: str) -> dict[str, RenderedChart]:
    """Every chart of the plan, rendered, by the stream its title names; none failed."""
    charts = render(mermaid_blocks(markdown))
    for chart in charts:
        assert chart.error is None, chart.error
    by_stream = {chart.title.split(", ")[0]: chart for chart in charts}
    assert len(by_stream) == len(charts)
    return by_stream


def tag(bar: Bar) -> str:
    """The tag a bar was drawn with, from mermaid's classes (`done0`, `crit1`, `task0`...)."""
    tags = {re.sub(r"\d+$", "", cls) for cls in bar.classes} - {"task"}
    assert len(tags) <= 1, bar
    return tags.pop() if tags else ""


# An unchanged clip's label names its recording, and its tag shows it (done, active, crit).
RECORDING_LABEL = re.compile(
    r" \((?:settled by \w+, )?(recorded|awaiting recording|recording failed|missing)\)$"
)


def kind(bar: Bar) -> str:
    """The action a bar was drawn as: an unchanged clip by its label, the others by tag."""
    if RECORDING_LABEL.search(bar.label):
        return "unchanged"
    return {"done": "unchanged", "active": "waiting", "crit": "pending", "": "create"}[tag(bar)]


def bars_by_kind(chart: RenderedChart) -> dict[str, list[str]]:
    drawn: dict[str, list[str]] = {}
    for bar in chart.bars:
        drawn.setdefault(kind(bar), []).append(bar.label)
    return drawn


# --- a match: to submit, waiting, pending, unchanged ---------------------------------------------


def test_one_bar_per_segment_grouped_by_action(tmp_path: Path) -> None:
    write_clips(
        tmp_path,
        [
            manifest("goal-1", "final", ("2020-06-01T19:11:40Z", "2020-06-01T19:13:10Z")),
            manifest("goal-2", "final", ("2020-06-01T19:37:30Z", "2020-06-01T19:39:00Z")),
            manifest("goal-3", "final", ("2020-06-01T20:38:15Z", "2020-06-01T20:40:00Z")),
            manifest(
                "reel",
                "final",
                ("2020-06-01T19:11:50Z", "2020-06-01T19:12:40Z"),
                ("2020-06-01T19:37:40Z", "2020-06-01T19:38:30Z"),
                ("2020-06-01T20:38:25Z", "2020-06-01T20:39:15Z"),
            ),
            manifest("trophy", "final", ("2020-06-01T21:04:30Z", "2020-06-01T21:08:00Z")),
            # Far in the future: the recordings are not complete, whatever today is.
            manifest("press-home", "press", ("2099-06-01T21:40:00Z", "2099-06-01T21:55:00Z")),
            manifest(
                "press-away",
                "press",
                ("2099-06-01T22:00:00Z", "2099-06-01T22:05:00Z"),
                ("2099-06-01T22:10:00Z", "2099-06-01T22:12:30Z"),
            ),
        ],
    )
    write_state(
        tmp_path,
        {
            "goal-1": TaskStatus.SUBMITTED,
            "goal-2": TaskStatus.SUBMITTED,
            "goal-3": TaskStatus.PENDING,
        },
    )
    markdown = plan_markdown(tmp_path)
    assert "**Plan: 2 to submit, 2 unchanged, 2 waiting, 1 pending.**" in markdown
    charts = rendered(markdown)
    assert set(charts) == {"push.example.com/live/final", "push.example.com/live/press"}

    final = charts["push.example.com/live/final"]
    assert final.title == "push.example.com/live/final, 2020-06-01 (UTC)"
    assert final.sections == ["To submit", "Pending", "Unchanged"]
    assert len(final.bars) == 3 + 1 + 1 + 1 + 1  # the reel's three segments, and one per clip
    assert bars_by_kind(final) == {
        "create": ["reel 1/3", "reel 2/3", "reel 3/3", "trophy"],
        "pending": ["goal-3"],
        "unchanged": ["goal-1 (awaiting recording)", "goal-2 (awaiting recording)"],
    }
    # Submitted, no evidence yet: drawn `active`, as a clip that is still being recorded.
    assert {tag(bar) for bar in final.bars if kind(bar) == "unchanged"} == {"active"}

    press = charts["push.example.com/live/press"]
    assert press.sections == ["Waiting"]
    assert bars_by_kind(press) == {"waiting": ["press-home", "press-away 1/2", "press-away 2/2"]}


def test_settle_makes_recent_clips_wait(tmp_path: Path) -> None:
    # The longest `--settle` (about ten years, longer than the time since the fixtures' clips):
    # every clip not in the state waits.
    write_clips(
        tmp_path,
        [
            manifest("goal-1", "final", ("2025-06-01T19:11:40Z", "2025-06-01T19:13:10Z")),
            manifest("goal-2", "final", ("2025-06-01T19:37:30Z", "2025-06-01T19:39:00Z")),
        ],
    )
    write_state(tmp_path, {"goal-1": TaskStatus.SUBMITTED})
    charts = rendered(plan_markdown(tmp_path, "--settle", str(MAX_SETTLE_SECONDS)))
    assert bars_by_kind(charts["push.example.com/live/final"]) == {
        "waiting": ["goal-2"],
        "unchanged": ["goal-1 (awaiting recording)"],
    }


# --- an unchanged clip's bar shows its recording (DESIGN §7b) -------------------------------------


def add_evidence(root: Path, statuses: dict[str, str]) -> None:
    """One mp4 record per named clip in the state, with that status (`missing`: the bucket's)."""
    store = StateStore(root / "reconciler-state.json")
    by_name = {entry.name: entry for entry in store.load().entries.values()}
    evidence = [
        (
            by_name[name].hash,
            Recording(
                hashlib.sha256(name.encode()).hexdigest(),
                EvidenceSource.STORAGE if status == "missing" else EvidenceSource.CALLBACK,
                "mp4",
                status,
                STAMP,
            ),
        )
        for name, status in statuses.items()
    ]
    assert store.record_evidence(evidence) == len(evidence)


def test_unchanged_bars_show_their_recording(tmp_path: Path) -> None:
    clips = ("recorded", "awaiting", "failed", "missing", "settled")
    write_clips(
        tmp_path,
        [
            manifest(name, "final", (f"2020-06-01T19:{n:02d}:00Z", f"2020-06-01T19:{n:02d}:40Z"))
            for n, name in enumerate(clips)
        ],
    )
    write_state(
        tmp_path, {**dict.fromkeys(clips[:4], TaskStatus.SUBMITTED), "settled": TaskStatus.PENDING}
    )
    add_evidence(
        tmp_path,
        {"recorded": "success", "failed": "failed", "missing": "missing", "settled": "success"},
    )
    markdown = plan_markdown(tmp_path)
    assert "**Plan: 0 to submit, 5 unchanged.**" in markdown
    (chart,) = rendered(markdown).values()
    assert chart.sections == ["Unchanged"]
    assert {bar.label: tag(bar) for bar in chart.bars} == {
        "recorded (recorded)": "done",
        "awaiting (awaiting recording)": "active",
        "failed (recording failed)": "crit",
        "missing (missing)": "crit",
        "settled (settled by callback, recorded)": "done",
    }
    assert "Timeline bars (Mermaid" in markdown  # the legend says what the colours mean


# --- 100 clips: more than 20 unchanged in a stream are one bar -----------------------------------


def season_clip(n: int, stream: str) -> str:
    start = f"2020-05-{1 + n // 24:02d}T{n % 24:02d}:00:00Z"
    return manifest(f"{stream}-{n:03d}", stream, (start, start[:-6] + "05:00Z"))


def test_hundred_clips_collapse_unchanged_beyond_twenty(tmp_path: Path) -> None:
    season = [season_clip(n, "season") for n in range(80)]  # 37 unchanged, 43 to submit
    cup = [season_clip(n, "cup") for n in range(20)]  # 20 unchanged: not collapsed
    write_clips(tmp_path, season + cup)
    unchanged = [f"season-{n:03d}" for n in range(10, 47)] + [f"cup-{n:03d}" for n in range(20)]
    write_state(tmp_path, dict.fromkeys(unchanged, TaskStatus.SUBMITTED))
    markdown = plan_markdown(tmp_path)
    assert "**Plan: 43 to submit, 57 unchanged.**" in markdown
    charts = rendered(markdown)

    season_chart = charts["push.example.com/live/season"]
    assert len(season_chart.bars) == 43 + 1
    assert bars_by_kind(season_chart)["unchanged"] == ["37 unchanged clips (awaiting recording)"]
    assert len(bars_by_kind(season_chart)["create"]) == 43
    assert season_chart.title == "push.example.com/live/season, 2020-05-01 to 2020-05-04 (UTC)"

    cup_chart = charts["push.example.com/live/cup"]
    assert bars_by_kind(cup_chart) == {
        "unchanged": [f"cup-{n:03d} (awaiting recording)" for n in range(20)]
    }


# --- names that are Mermaid syntax ---------------------------------------------------------------

# Valid clip names that begin like a statement of Mermaid's gantt grammar, or like a date.
STATEMENT_NAMES = [
    "gantt",
    "gantt-intro",
    "topaxis",
    "click-bait",
    "call-back",
    "section-7",
    "title",
    "accdescr",
    "acctitle",
    "includes",
    "excludes-b",
    "todaymarker",
    "weekend-friday",
    "dateformat",
    "axisformat",
    "tickinterval",
    "inclusiveenddates",
    "2020-06-01-final",
]
# A stream name may hold any of these (no `/ ? # %`, no spaces): each is Mermaid syntax.
NASTY_STREAM = "cam:1;x\"y<b>&amp;z'{}|[]=+*~!@$^`,"


def test_names_that_are_mermaid_syntax_render_as_written(tmp_path: Path) -> None:
    write_clips(
        tmp_path,
        [
            manifest(
                name, NASTY_STREAM, (f"2020-06-01T19:{n:02d}:00Z", f"2020-06-01T19:{n:02d}:30Z")
            )
            for n, name in enumerate(STATEMENT_NAMES)
        ],
    )
    (chart,) = rendered(plan_markdown(tmp_path)).values()
    assert chart.title == f"push.example.com/live/{NASTY_STREAM}, 2020-06-01 (UTC)"
    assert [bar.label for bar in chart.bars] == STATEMENT_NAMES


# Labels no manifest name can hold, for timeline_gantt itself: every character Mermaid reads
# as syntax, its own entity escapes and their placeholders, markup, and other scripts.
NASTY_LABELS = [
    "a:b",
    "x#y",
    "p;q",
    "%% comment",
    "%%{init: {'theme': 'dark'}}%%",
    "#35; literal",
    "ﬂ°°58¶ß placeholder",
    "<script>alert(1)</script>",
    "&amp; &lt;",
    "```",
    "after goal-1",
    "crit, done",
    "進球 1",
    "tab\there",
]


def test_any_label_renders_as_written() -> None:
    bars = tuple(
        TimelineBar("To submit", label, f"2020-06-01T19:{n:02d}:00Z", f"2020-06-01T19:{n:02d}:30Z")
        for n, label in enumerate(NASTY_LABELS)
    )
    source = timeline_gantt(Timeline("push.example.com/live/final", bars))
    (chart,) = render([source])
    assert chart.error is None, chart.error
    assert len(chart.bars) == len(NASTY_LABELS)
    shown = [re.sub(r"\s+", " ", bar.label) for bar in chart.bars]
    assert shown == [re.sub(r"\s+", " ", label) for label in NASTY_LABELS]


def test_the_renderer_sees_what_mermaid_gets_wrong() -> None:
    # The check itself: an unescaped name that is a statement is an error or a wrong chart.
    broken: dict[str, Any] = {
        "unescaped statement": "gantt\n    section S\n    gantt-intro :2020-06-01 19:00:00, 2020-06-01 19:01:00",
        "unescaped colon": "gantt\n    dateFormat YYYY-MM-DD HH:mm:ss\n    section S\n    a:b :2020-06-01 19:00:00, 2020-06-01 19:01:00",
    }
    charts = dict(zip(broken, render(list(broken.values())), strict=True))
    assert charts["unescaped statement"].error
    colon = charts["unescaped colon"]
    assert colon.error or [bar.label for bar in colon.bars] != ["a:b"]


# --- the same chart in every viewer's zone -------------------------------------------------------

# Viewers' zones: UTC, one without daylight-saving time, and one that changes its clocks on the
# days below: New York springs forward at 2026-03-08T07:00Z (02:00 local becomes 03:00) and
# falls back at 2026-11-01T06:00Z (02:00 local becomes 01:00). Each day's first clip is at UTC
# clock times that do not exist, or exist twice, on New York's clock; the second runs across the
# real change (what matters with --timezone America/New_York).
VIEWER_ZONES = ("UTC", "Asia/Shanghai", "America/New_York")
DST_DAYS = [
    (
        "2026-11-01T00:50:00Z",
        "2026-11-01T02:10:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T07:20:00Z",
    ),
    (
        "2026-03-08T01:45:00Z",
        "2026-03-08T03:15:00Z",
        "2026-03-08T06:30:00Z",
        "2026-03-08T07:40:00Z",
    ),
]


def geometry(chart: RenderedChart) -> list[tuple[str, float, float]]:
    return [(bar.label, bar.x, bar.width) for bar in chart.bars]


def seconds(start: str, end: str) -> float:
    from reconciler.schema import parse_record_time

    first, last = parse_record_time(start), parse_record_time(end)
    assert first is not None and last is not None
    return (last - first).total_seconds()


@pytest.mark.parametrize("times", DST_DAYS, ids=["2026-11-01", "2026-03-08"])
@pytest.mark.parametrize("display", [None, "America/New_York"])
def test_bars_are_the_same_in_every_viewers_zone(
    tmp_path: Path, times: tuple[str, str, str, str], display: str | None
) -> None:
    a_start, a_end, b_start, b_end = times
    write_clips(
        tmp_path,
        [
            manifest("across", "final", (a_start, a_end)),
            manifest("after", "final", (b_start, b_end)),
        ],
    )
    markdown = plan_markdown(tmp_path, *(("--timezone", display) if display else ()))
    sources = mermaid_blocks(markdown)
    charts = {zone: render(sources, tz=zone)[0] for zone in VIEWER_ZONES}
    for chart in charts.values():
        assert chart.error is None, chart.error
    drawn = geometry(charts["UTC"])
    assert [label for label, _, _ in drawn] == ["across", "after"]
    for zone in VIEWER_ZONES[1:]:
        assert geometry(charts[zone]) == drawn, zone
        assert [tick.label for tick in charts[zone].ticks] == [
            tick.label for tick in charts["UTC"].ticks
        ]
    # Widths in proportion to the real durations (neither bar lost or gained the changed hour).
    (_, _, across), (_, _, after) = drawn
    assert across / after == pytest.approx(
        seconds(a_start, a_end) / seconds(b_start, b_end), rel=0.03
    )


def test_the_renderer_sees_a_naive_chart_move_with_the_viewer() -> None:
    # The check itself: real dates written zone-free are read in the viewer's zone, where
    # 02:00-03:00 on 2026-03-08 does not exist in New York: that bar shrinks to nothing.
    naive = (
        "gantt\n    dateFormat YYYY-MM-DD HH:mm:ss\n    section S\n"
        "    gap :2026-03-08 02:00:00, 2026-03-08 03:00:00\n"
        "    later :2026-03-08 04:00:00, 2026-03-08 05:00:00"
    )
    utc, new_york = (render([naive], tz=zone)[0] for zone in ("UTC", "America/New_York"))
    assert geometry(utc) != geometry(new_york)


def assert_labels_apart(chart: RenderedChart) -> None:
    assert len(chart.ticks) >= 3, chart.ticks
    for left, right in zip(chart.ticks, chart.ticks[1:], strict=False):
        assert left.right <= right.left, (left, right)


@pytest.mark.parametrize("width", [700, 1200])
def test_an_axis_across_midnight_shows_the_day_and_labels_do_not_overlap(
    tmp_path: Path, width: int
) -> None:
    write_clips(
        tmp_path,
        [
            manifest("late", "night", ("2020-06-01T21:10:00Z", "2020-06-01T22:40:00Z")),
            manifest("early", "night", ("2020-06-02T01:00:00Z", "2020-06-02T03:20:00Z")),
            manifest("d1", "week", ("2020-05-01T10:00:00Z", "2020-05-01T12:00:00Z")),
            manifest("d4", "week", ("2020-05-04T18:00:00Z", "2020-05-04T19:00:00Z")),
        ],
    )
    markdown = plan_markdown(tmp_path)
    charts = {
        chart.title.split(", ")[0]: chart for chart in render(mermaid_blocks(markdown), width=width)
    }
    night = charts["push.example.com/live/night"]
    assert night.title == "push.example.com/live/night, 2020-06-01 to 2020-06-02 (UTC)"
    assert_labels_apart(night)
    labels = [tick.label for tick in night.ticks]
    assert {label.split()[0] for label in labels} == {"01", "02"}, labels  # day of the month
    assert "02 00:00" in labels
    week = charts["push.example.com/live/week"]
    assert_labels_apart(week)
    week_days = {tick.label.split()[0] for tick in week.ticks}
    assert week_days >= {"02", "03", "04"}, week_days


def test_the_plans_now_is_marked_where_it_is() -> None:
    bars = (
        TimelineBar("To submit", "done-clip", "2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z"),
        TimelineBar(
            "Waiting", "live-clip", "2026-11-01T07:30:00Z", "2026-11-01T08:30:00Z", "active"
        ),
    )
    now = "2026-11-01T07:00:00Z"
    for zone in VIEWER_ZONES:
        source = timeline_gantt(Timeline("push.example.com/live/final", bars, now=now))
        (chart,) = render([source], tz=zone)
        assert chart.error is None, chart.error
        (marker,) = chart.markers
        assert marker.label == "now 07:00"
        first = chart.bars[0]
        per_second = first.width / 3600
        assert marker.x == pytest.approx(first.x + 2 * 3600 * per_second, abs=1.5)
        assert first.x < marker.x < chart.bars[1].x


def test_the_marker_is_the_plans_now_in_the_cli(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    def at(hours: float) -> str:
        moment = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    write_clips(
        tmp_path,
        [
            manifest("before", "live", (at(-3), at(-2))),
            manifest("coming", "live", (at(1), at(2))),
        ],
    )
    (chart,) = rendered(plan_markdown(tmp_path, "--timezone", "Asia/Shanghai")).values()
    (marker,) = chart.markers
    assert marker.label.startswith("now ")
    before, coming = chart.bars
    assert before.x + before.width < marker.x < coming.x


def test_a_now_far_from_the_clips_is_not_drawn() -> None:
    bars = (TimelineBar("To submit", "old", "2020-06-01T19:00:00Z", "2020-06-01T19:30:00Z"),)
    source = timeline_gantt(Timeline("s", bars, now="2026-11-01T07:00:00Z"))
    assert "vert" not in source
