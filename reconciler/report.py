"""Reporters: results rendered as text, JSON, GitHub annotations, Markdown or JUnit XML."""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TextIO
from xml.etree import ElementTree

from reconciler.plan import Plan, PlanAction, PlanItem
from reconciler.problems import Problem
from reconciler.record_times import parse_record_time
from reconciler.tasks import TaskSet
from reconciler.text import (
    FORMAT_VERSION,
    MARKDOWN_COLLAPSE_AFTER,
    OutputFormat,
    github_annotation,
    md_text,
    plural,
    visible,
)
from reconciler.timezones import is_utc, local, offset_text, show_time, zone_name, zone_note

if TYPE_CHECKING:  # Rich and the apply machinery load only for the commands that print them
    from rich.console import Console

    from reconciler.apply import ApplyResult, Outcome
    from reconciler.notify import ConfigOutcome, ConfigPlanItem
    from reconciler.state import State


def dump_json(document: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.file,
        "line": problem.line,
        "column": problem.column,
        "field": problem.field,
        "message": problem.message,
    }


def problem_annotation(problem: Problem, title: str) -> str:
    message = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return github_annotation(
        "error", message, file=problem.file, line=problem.line, column=problem.column, title=title
    )


# --- validate ---------------------------------------------------------------------------------


def validate_summary(result: TaskSet) -> str:
    """`Checked 3 manifests in 2 files: 1 problem in 1 file and 1 problem with 1 other path; ...`.

    Problems in the manifest files read and problems with other paths (missing, a FIFO, a
    directory with no manifests, an ignore file) are counted apart, so the counts never
    contradict each other.
    """
    manifests = len(result.results)
    checked = f"Checked {plural(manifests, 'manifest')} in {plural(result.files, 'file')}"
    if result.ok:
        return f"{checked}: all valid."
    in_files = [problem for problem in result.problems if problem.file not in result.unread]
    elsewhere = [problem for problem in result.problems if problem.file in result.unread]
    parts = []
    if in_files:
        files = len({problem.file for problem in in_files})
        parts.append(f"{plural(len(in_files), 'problem')} in {plural(files, 'file')}")
    if elsewhere:
        paths = len({problem.file for problem in elsewhere})
        other = "other path" if result.files else "path"
        parts.append(f"{plural(len(elsewhere), 'problem')} with {plural(paths, other)}")
    valid = (
        f"; {manifests - result.invalid} of {plural(manifests, 'manifest')} valid"
        if manifests
        else ""
    )
    return f"{checked}: {' and '.join(parts)}{valid}."


def ignored_lines(result: TaskSet) -> list[str]:
    """`ignored examples/invalid/ (examples/.reconcilerignore:3: invalid/)`, one per path left out
    of a directory walk, in walk order (for `validate --verbose` and `plan --verbose`)."""
    return [f"ignored {ignored}" for ignored in result.ignored]


def validate_report(
    result: TaskSet, fmt: OutputFormat, out: TextIO, *, verbose: bool = False
) -> None:
    if fmt is OutputFormat.JSON:
        dump_json(validate_json(result), out)
    elif fmt is OutputFormat.JUNIT:
        out.write(validate_junit(result))
    elif fmt is OutputFormat.GITHUB:
        for problem in result.problems:
            out.write(problem_annotation(problem, "reconciler validate") + "\n")
        out.write(validate_summary(result) + "\n")
    else:
        if verbose:
            for line in ignored_lines(result):
                out.write(line + "\n")
            for item in result.results:
                if item.valid:
                    what = item.hash[:12] if item.hash else "notify URL"
                    out.write(f"{item.location}: ok {item.name} ({what})\n")
        for problem in result.problems:
            out.write(f"{problem}\n")
        out.write(validate_summary(result) + "\n")


def validate_json(result: TaskSet) -> dict[str, Any]:
    """The documented `validate --format json` structure (schemas/output.schema.json)."""
    return {
        "formatVersion": FORMAT_VERSION,
        "command": "validate",
        "valid": result.ok,
        "summary": {
            "files": result.files,
            "manifests": len(result.results),
            "invalidManifests": result.invalid,
            "problems": len(result.problems),
        },
        "problems": [problem_json(problem) for problem in result.problems],
        "ignored": [
            {
                "path": ignored.path,
                "ignoreFile": ignored.source,
                "line": ignored.line,
                "pattern": ignored.pattern,
            }
            for ignored in result.ignored
        ],
        "manifests": [
            {
                "file": item.location.file,
                "line": item.location.line,
                "column": item.location.column,
                "name": item.name,
                "hash": item.hash,
                "valid": item.valid,
            }
            for item in result.results
        ],
    }


def validate_junit(result: TaskSet) -> str:
    """One test case per manifest (and one per file that could not be read); each path an
    ignore file left out is a skipped test case, so a CI dashboard shows what was not checked."""
    suite = ElementTree.Element("testsuite", name="reconciler validate")
    failures = 0
    cases = 0
    per_manifest = {item.location: item for item in result.results}
    covered: set[Problem] = set()
    for item in per_manifest.values():
        cases += 1
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=item.location.file,
            name=f"{item.name or 'manifest'} ({item.location})",
            file=item.location.file,
            line=str(item.location.line),
        )
        if item.problems:
            failures += 1
            covered.update(item.problems)
            _junit_failure(case, item.problems)
    loose: dict[str, list[Problem]] = {}
    for problem in result.problems:
        if problem not in covered:
            loose.setdefault(problem.file, []).append(problem)
    for file, problems in loose.items():
        cases += 1
        failures += 1
        case = ElementTree.SubElement(suite, "testcase", classname=file, name=file, file=file)
        _junit_failure(case, problems)
    for ignored in result.ignored:
        cases += 1
        case = ElementTree.SubElement(
            suite, "testcase", classname=ignored.source, name=f"ignored {ignored.path}"
        )
        ElementTree.SubElement(
            case, "skipped", message=f"{ignored.source}:{ignored.line}: {ignored.pattern}"
        )
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(len(result.ignored)))
    suites = ElementTree.Element("testsuites", name="reconciler", tests=str(cases))
    suites.set("failures", str(failures))
    suites.append(suite)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_failure(case: ElementTree.Element, problems: Sequence[Problem]) -> None:
    failure = ElementTree.SubElement(
        case, "failure", message=problems[0].message, type="invalid manifest"
    )
    failure.text = "\n".join(str(problem) for problem in problems)


# --- plan ---------------------------------------------------------------------------------------

_PLAN_HEADINGS = {
    "create": ("+", "To submit", "green"),
    "waiting": ("~", "Waiting for the recording to complete", "cyan"),
    "pending": (
        "!",
        "Pending: sent before, outcome unknown (not re-sent without --retry-pending)",
        "yellow",
    ),
    "replaced": (
        "-",
        "Replaced: submitted earlier under a name that now asks for something else (kept: the API has no delete)",
        "magenta",
    ),
    "orphaned": ("-", "Orphaned: in state, in no manifest (nothing is done)", "magenta"),
    "unchanged": ("=", "Unchanged", "dim"),
}
# reconciler.apply.OutcomeKind's values; compared as text so that printing does not import the
# HTTP client.
OUTCOME_KINDS = ("submitted", "failed", "unknown", "not-sent")


def item_times(item: PlanItem, zone: tzinfo = UTC) -> str:
    """`2026-11-20T19:11:40Z .. 2026-11-20T19:13:10Z (2 segments)`: the first start and the
    last end, in `zone` (`2026-11-21T03:11:40+08:00 .. ...` in Asia/Shanghai)."""
    segments = item.segments
    if not segments:
        return ""
    text = f"{show_time(segments[0][0], zone)} .. {show_time(segments[-1][1], zone)}"
    if len(segments) > 1:
        text += f" ({len(segments)} segments)"
    return text


def plan_item_line(item: PlanItem, zone: tzinfo = UTC) -> str:
    """`cup-final-goal-1  4033c78d1cf4  push.example.com/live/cup-final  19:11:40Z .. (file)`;
    every value with its control characters made visible (`visible`)."""
    text = (
        f"{visible(item.name)}  {item.short_hash}  {visible(item.stream)}  "
        f"{item_times(item, zone)}  ({visible(item.source)})"
    )
    if item.ready_at:
        text += f"  ready at {show_time(item.ready_at, zone)}"
    if item.replaced_by:
        text += f"  now {item.replaced_by[:12]}"
    if item.renamed_from:
        text += f"  (was {visible(item.renamed_from)})"
    return text


def plan_text(
    plan: Plan,
    out: Console,
    *,
    verbose: bool = False,
    quiet: bool = False,
    zone: tzinfo = UTC,
) -> None:
    """Terraform-style: grouped by action, then a one-line summary."""
    from rich.markup import escape

    note = zone_note(zone, plan.created_at)
    if note and not quiet:
        out.print(escape(note))
    for action, (mark, heading, style) in _PLAN_HEADINGS.items():
        items = plan.of(PlanAction(action))
        if not items or (quiet and action != "pending"):
            continue
        title = f"{heading} ({len(items)})"
        if action == "unchanged" and not verbose:
            items, title = _unchanged_to_look_at(items)
            if not items:
                continue
        out.print(f"[bold {style}]{title}:[/]")
        for item in items:
            line = plan_item_line(item, zone)
            words = recording_words(item)
            out.print(f"  [{style}]{mark}[/] {escape(line + (f'  [{words}]' if words else ''))}")
        out.print()
    _configs_text(plan, out, verbose=verbose, quiet=quiet)
    recordings = recordings_line(plan.items)
    if recordings and (not quiet or any(_needs_a_look(item) for item in plan.items)):
        out.print(escape(recordings))
    out.print(f"[bold]{plan.summary()}[/]")


def _unchanged_to_look_at(items: list[PlanItem]) -> tuple[list[PlanItem], str]:
    """Without --verbose, the `unchanged` tasks whose recording failed or is missing, or that
    evidence settled, and the heading that says they are not all."""
    shown = [item for item in items if _needs_a_look(item)]
    return shown, (
        f"Unchanged, recording to look at ({len(shown)} of {len(items)}; --verbose lists all)"
    )


# --- plan: notify URLs (RecordNotifyConfig) ---------------------------------------------------

_CONFIG_HEADINGS = {
    "update": ("~", "Notify URLs to update", "yellow"),
    "unchanged": ("=", "Notify URLs unchanged", "dim"),
}


def config_change(item: ConfigPlanItem) -> str:
    """`http://old.example.com/*** -> http://hooks.example.com:8080/callbacks/***` for an
    update, the URL alone when unchanged; values masked (notify.py), controls made visible."""
    if item.action.value == "unchanged":
        return visible(item.desired)
    change = f"{visible(item.current.text)} -> {visible(item.desired)}"
    if item.current.status.value == "set" and item.current.text == item.desired:
        change += " (a masked value differs)"
    return change


def config_line(item: ConfigPlanItem) -> str:
    """`push-example-com  push.example.com  none set -> http://hooks.../***  (file)`."""
    return (
        f"{visible(item.name)}  {visible(item.publish_domain)}  {config_change(item)}  "
        f"({visible(item.source)})"
    )


def _configs_of(plan: Plan, action: str) -> list[ConfigPlanItem]:
    return [config for config in plan.configs if config.action.value == action]


def _configs_text(plan: Plan, out: Console, *, verbose: bool, quiet: bool) -> None:
    from rich.markup import escape

    for action, (mark, heading, style) in _CONFIG_HEADINGS.items():
        items = _configs_of(plan, action)
        if not items or quiet or (action == "unchanged" and not verbose):
            continue
        out.print(f"[bold {style}]{heading} ({len(items)}):[/]")
        for item in items:
            out.print(f"  [{style}]{mark}[/] {escape(config_line(item))}")
        out.print()


def _configs_github(plan: Plan, out: TextIO) -> None:
    for item in _configs_of(plan, "update"):
        level = "warning" if item.current.status.value == "unknown" else "notice"
        out.write(
            github_annotation(
                level,
                f"update notify URL: {config_line(item)}",
                file=item.source,
                line=item.line,
                title="reconciler plan",
            )
            + "\n"
        )


def _configs_markdown(plan: Plan) -> list[str]:
    lines: list[str] = []
    for action, (_, heading, _) in _CONFIG_HEADINGS.items():
        items = _configs_of(plan, action)
        if not items:
            continue
        rows = ["| name | publishDomain | now | to set | manifest |", "|---|---|---|---|---|"]
        for item in items:
            now = item.current.text if action == "update" else item.desired
            cells = [item.name, item.publish_domain, now, item.desired, item.source]
            rows.append("| " + " | ".join(md_text(cell) for cell in cells) + " |")
        if action == "unchanged":
            summary = f"<summary>{heading} ({len(items)})</summary>"
            lines += ["<details>", summary, "", *rows, "", "</details>", ""]
        else:
            lines += [f"#### {heading} ({len(items)})", "", *rows, ""]
    return lines


def plan_github(plan: Plan, out: TextIO, *, zone: tzinfo = UTC) -> None:
    """Annotations on the manifests; a replaced task points at the manifest that replaced it,
    an orphaned one at no file (its manifest is gone)."""
    by_hash = {item.hash: item for item in plan.items}
    levels = {
        "create": "notice",
        "pending": "warning",
        "orphaned": "warning",
        "replaced": "notice",
        "waiting": "notice",
    }
    for item in plan.items:
        level = levels.get(item.action.value)
        if level is None:
            continue
        message = f"{item.action.value}: {plan_item_line(item, zone)}"
        anchor: PlanItem | None = item
        if item.action is PlanAction.REPLACED:
            anchor = by_hash.get(item.replaced_by or "")
        elif item.action is PlanAction.ORPHANED:
            anchor = None
        out.write(
            github_annotation(
                level,
                message,
                file=anchor.source if anchor else None,
                line=anchor.line if anchor else None,
                title="reconciler plan",
            )
            + "\n"
        )
    for line in recording_annotations(plan, zone):
        out.write(line + "\n")
    recordings = recordings_line(plan.items)
    if recordings:
        out.write(recordings + "\n")
    _configs_github(plan, out)
    out.write(plan.summary() + "\n")  # last, as in every format


def recording_annotations(
    plan: Plan, zone: tzinfo = UTC, *, title: str = "reconciler plan"
) -> list[str]:
    """A `::warning` at the manifest for each task whose recording failed or is missing, and
    a `::notice` for each `pending` task the evidence settled (never sent again)."""
    lines = []
    for item in plan.items:
        state, source = recording_state(item), settled_by(item)
        if state in RECORDING_PROBLEMS:
            detail = recording_problem_detail(item)
            message = f"{state}: {plan_item_line(item, zone)}" + (f": {detail}" if detail else "")
            level = "warning"
        elif source is not None:
            message = (
                f"pending settled by {source}: {plan_item_line(item, zone)}: the service "
                "processed it, so it is never sent again (its requestId stays unknown)"
            )
            level = "notice"
        else:
            continue
        orphaned = item.action is PlanAction.ORPHANED or item.line is None
        lines.append(
            github_annotation(
                level,
                message,
                file=None if orphaned else item.source,
                line=None if orphaned else item.line,
                title=f"{title}: recording",
            )
        )
    return lines


def _md_table(items: Sequence[PlanItem], zone: tzinfo) -> list[str]:
    rows = [
        "| name | task | stream | times | manifest | recording |",
        "|---|---|---|---|---|---|",
    ]
    for item in items:
        cells = [
            md_text(item.name),
            f"`{item.short_hash}`",  # hex digits only
            md_text(item.stream),
            md_text(item_times(item, zone)),
            md_text(item.source),
            _md_recording(item),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _md_recording(item: PlanItem) -> str:
    """The recording cell: the words, bold when it failed or is missing, with what the service
    said (callback text, so escaped as everything else)."""
    words = recording_words(item)
    if not words:
        return "-"
    if recording_state(item) in RECORDING_PROBLEMS:
        detail = recording_problem_detail(item)
        return f"**{md_text(words)}**" + (f" ({md_text(detail)})" if detail else "")
    return md_text(words)


# --- recordings: what the evidence (callbacks, the bucket) says of each task (DESIGN §7) -------

# RecordingState's values, in the order summaries count them; compared as text so that printing
# a plan does not import the state machinery. JSON keys for the counts beside them.
RECORDING_WORDS = ("recorded", "awaiting recording", "recording failed", "missing")
RECORDING_PROBLEMS = frozenset({"recording failed", "missing"})
_RECORDING_KEYS = {
    "recorded": "recorded",
    "awaiting recording": "awaitingRecording",
    "recording failed": "recordingFailed",
    "missing": "missing",
}
_EVIDENCE_SOURCES = ("callback", "storage")


def recording_state(item: PlanItem) -> str | None:
    """`recorded`, `awaiting recording`, `recording failed`, `missing`; None for a task the
    state does not know, or a `pending` one with no evidence (its outcome is unknown)."""
    summary = item.recording
    if summary is None or summary.state is None:
        return None
    return summary.state.value


def settled_by(item: PlanItem) -> str | None:
    """`callback` or `storage` for a `pending` task the evidence settled; else None."""
    summary = item.recording
    source = summary.settled_by if summary is not None else None
    return source.value if source is not None else None


def recording_words(item: PlanItem) -> str:
    """What a plan line says of an item's recording: `recorded`, `pending settled by callback;
    recorded; requestId unknown`, `no evidence yet` (a pending task); "" for a task not in the
    state."""
    summary = item.recording
    if summary is None:
        return ""
    if summary.state is None:
        looked = any(recording.status == "missing" for recording in summary.recordings)
        return "no evidence yet; no file in the bucket yet" if looked else "no evidence yet"
    if summary.settled:
        return f"{summary.words}; requestId unknown"
    return summary.words


def recording_counts(items: Sequence[PlanItem]) -> dict[str, int]:
    """How many items are in each recording state, and how many pending tasks each source of
    evidence settled: the `recordings` object of the JSON outputs."""
    counts = {key: 0 for key in _RECORDING_KEYS.values()}
    counts.update({"settledByCallback": 0, "settledByStorage": 0})
    for item in items:
        state = recording_state(item)
        if state in _RECORDING_KEYS:
            counts[_RECORDING_KEYS[state]] += 1
        source = settled_by(item)
        if source is not None:
            counts["settledBy" + source.capitalize()] += 1
    return counts


def recordings_line(items: Sequence[PlanItem], *, tense: str = "present") -> str | None:
    """`Recordings: 12 recorded, 3 awaiting recording, 1 recording failed; 1 pending task
    settled by callback: never sent again.`; None when no item is a task the state knows.
    `tense="past"` for after an apply (`2 pending tasks were settled by callback`)."""
    counts = recording_counts(items)
    shown = [
        f"{counts[_RECORDING_KEYS[word]]} {word}"
        for word in RECORDING_WORDS
        if counts[_RECORDING_KEYS[word]]
    ]
    settled = []
    for source in _EVIDENCE_SOURCES:
        count = counts["settledBy" + source.capitalize()]
        if count:
            verb = ("was" if count == 1 else "were") if tense == "past" else ""
            what = plural(count, "pending task")
            settled.append(f"{what} {verb + ' ' if verb else ''}settled by {source}")
    if not shown and not settled:
        return None
    text = "Recordings: " + (", ".join(shown) if shown else "none yet")
    if settled:
        text += "; " + " and ".join(settled) + ": never sent again"
    return text + "."


def _needs_a_look(item: PlanItem) -> bool:
    """An `unchanged` task a reader should see without --verbose: its recording failed or is
    missing, or it was `pending` and evidence settled it."""
    return recording_state(item) in RECORDING_PROBLEMS or settled_by(item) is not None


def recording_problem_detail(item: PlanItem) -> str:
    """`mp4: failed (callback)`, `flv: no file in the bucket`, one per output whose status is
    not success: what the service (or the bucket) said, with control characters made visible."""
    summary = item.recording
    if summary is None:
        return ""
    parts = [
        f"{visible(recording.format)}: "
        + (
            "no file in the bucket"
            if recording.status == "missing"
            else f"{visible(recording.status)} ({recording.source.value})"
        )
        for recording in summary.recordings
        if recording.status != "success"
    ]
    return ", ".join(parts)


def plan_json(plan: Plan) -> dict[str, Any]:
    """`plan --format json`: the saved-plan document with a `recordings` count object."""
    document = plan.to_json()
    document["recordings"] = recording_counts(plan.items)
    return document


def plan_with_recordings(plan: Plan, state: State) -> Plan:
    """`plan` with every item the state knows carrying what the evidence says of it (a plan
    read from a file carries none: evidence is read from the state, never from a plan file)."""
    items = tuple(
        item
        if item.recording is not None or state.get(item.hash) is None
        else dataclasses.replace(item, recording=state.recording(item.hash))
        for item in plan.items
    )
    return dataclasses.replace(plan, items=items)


# --- plan timeline: a Mermaid gantt chart per stream, for the Markdown plan ------------------

# The actions drawn, in the order of the chart's sections, with their Mermaid task tag (colour).
# `replaced` and `orphaned` tasks are not drawn: a replaced task's new content is the stream's
# `create` (or `waiting`) bar, and an orphaned task has no manifest any more; both stay in the
# tables below the charts.
TIMELINE_SECTIONS = (
    (PlanAction.CREATE, "To submit", ""),
    (PlanAction.WAITING, "Waiting", "active"),
    (PlanAction.PENDING, "Pending", "crit"),
    (PlanAction.UNCHANGED, "Unchanged", "done"),
)
# An `unchanged` clip's bar shows its recording instead (its label names it too): done when
# recorded, active while the recording is awaited (as a clip still waiting), crit when it
# failed or is missing (as a pending one: someone should look). A plan read from a file knows
# no recordings: its unchanged bars stay `done`.
TIMELINE_RECORDING_TAGS = {
    "recorded": "done",
    "awaiting recording": "active",
    "recording failed": "crit",
    "missing": "crit",
}
TIMELINE_LEGEND = (
    "Timeline bars (Mermaid's colours): plain, to submit; light (active), waiting or awaiting "
    "recording; grey (done), recorded; red (critical), pending, recording failed or missing. "
    "An unchanged clip's label names its recording."
)
# More `unchanged` clips than this in one stream are drawn as one bar per recording state,
# first start to last end.
TIMELINE_COLLAPSE_UNCHANGED_AFTER = 20
# A chart with more bars than this is left out (with a sentence saying so): it would not be
# readable, and Mermaid refuses sources over 50,000 characters.
TIMELINE_MAX_BARS = 200
# Mermaid reads a date as the viewer's local wall time (dayjs) and draws the axis in the
# viewer's zone (d3's scaleTime): a chart of the real dates would shift, or squash a bar to
# nothing, on a daylight-saving day of whoever reads the pull request. So each chart is drawn on
# a stand-in calendar: every time is written without a zone as the chart's first midnight (in
# the display zone) plus the real time elapsed since, on a day of 2000 with the same day of
# the month, in a month of the same length in which no zone's clocks change (January, June,
# February). Read in any zone, that is the same evenly spaced axis: the same bars, the same
# ticks, labelled with the display zone's clock and the day of the month; the title names the
# real dates and the zone.
TIMELINE_DATE_FORMAT = "YYYY-MM-DD HH:mm:ss"
_STAND_IN_MONTHS = {31: (2000, 1), 30: (2000, 6), 29: (2000, 2), 28: (1999, 2)}
# Tick spacings Mermaid's `tickInterval` takes, in seconds, smallest first.
_TICK_INTERVALS = (
    (10, "10second"),
    (30, "30second"),
    (60, "1minute"),
    (120, "2minute"),
    (300, "5minute"),
    (600, "10minute"),
    (900, "15minute"),
    (1800, "30minute"),
    (3600, "1hour"),
    (7200, "2hour"),
    (10800, "3hour"),
    (21600, "6hour"),
    (43200, "12hour"),
    (86400, "1day"),
    (172800, "2day"),
    (604800, "1week"),
    (2 * 604800, "2week"),
    (4 * 604800, "4week"),
    (12 * 604800, "12week"),
    (52 * 604800, "52week"),
)
# At most this many ticks of `HH:MM` labels, and of the longer `DD HH:MM` / `HH:MM:SS` ones,
# so that labels never run into each other on a chart as narrow as a pull-request comment.
_MAX_SHORT_TICKS = 12
_MAX_LONG_TICKS = 8
# The plan's "now" is marked when the chart with it stays at least this share bars.
_NOW_MARKER_MIN_SHARE = 0.25
# Words that start a statement in Mermaid's gantt grammar: a task name that begins with one
# (a clip called `gantt-intro`, `topaxis` or `click-bait`) is read as that statement. So are
# names that begin with a date. Such a name gets its first character written as an entity.
_MERMAID_GANTT_WORDS = (
    "acc",
    "axisformat",
    "call",
    "click",
    "dateformat",
    "excludes",
    "gantt",
    "href",
    "inclusiveenddates",
    "includes",
    "section",
    "tickinterval",
    "title",
    "todaymarker",
    "topaxis",
    "weekday",
    "weekend",
)
_MERMAID_DATE_START = re.compile(r"\d{4}-\d\d-\d\d")
_MERMAID_PLAIN = frozenset(" ._/()-")


@dataclass(frozen=True, slots=True)
class TimelineBar:
    """One bar of a timeline: a clip's segment, or a stream's collapsed `unchanged` clips."""

    section: str
    label: str
    start: str  # UTC, yyyy-MM-ddTHH:mm:ssZ as in the manifests
    end: str
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Timeline:
    """The chart of one stream; `mermaid` is None when it has too many bars to draw. `now` is
    the plan's time (marked on the chart), `zone` the one its clock shows."""

    stream: str
    bars: tuple[TimelineBar, ...]
    now: str | None = None
    zone: tzinfo = UTC

    @property
    def mermaid(self) -> str | None:
        return timeline_gantt(self) if len(self.bars) <= TIMELINE_MAX_BARS else None


def mermaid_text(text: str, *, label: bool = True) -> str:
    """`text` safe in a Mermaid gantt line: every character but letters, digits, space and
    `._/()-` as Mermaid's entity escape (`#58;` for `:`), which it turns back into the
    character in the SVG; `#`, `;`, `:`, `%` and newlines would otherwise end the name or start
    a comment. A task `label` that begins like a statement has its first character escaped."""
    text = "".join(
        ch if (ch.isalnum() or ch in _MERMAID_PLAIN) and ch.isprintable() else f"#{ord(ch)};"
        for ch in text
    )
    if label:
        lowered = text.lower()
        if lowered.startswith(_MERMAID_GANTT_WORDS) or _MERMAID_DATE_START.match(lowered):
            text = f"#{ord(text[0])};{text[1:]}"
    return text


def plan_timelines(plan: Plan, zone: tzinfo = UTC) -> list[Timeline]:
    """One timeline per stream that has clips to draw, streams in sorted order: a bar per
    segment, sections in TIMELINE_SECTIONS order, bars in each by start time."""
    by_stream: dict[str, list[TimelineBar]] = {}
    for action, section, tag in TIMELINE_SECTIONS:
        per_stream: dict[str, list[PlanItem]] = {}
        for item in plan.of(action):
            per_stream.setdefault(item.stream, []).append(item)
        for stream, items in per_stream.items():
            bars = by_stream.setdefault(stream, [])
            if action is PlanAction.UNCHANGED and len(items) > TIMELINE_COLLAPSE_UNCHANGED_AFTER:
                bars += _collapsed_unchanged_bars(section, items, tag)
                continue
            drawn = []
            for item in items:
                segments = item.segments
                item_tag, suffix = tag, ""
                if action is PlanAction.UNCHANGED:
                    item_tag, suffix = _recording_bar(item, tag)
                for number, (start, end) in enumerate(segments, 1):
                    label = item.name
                    if len(segments) > 1:
                        label += f" {number}/{len(segments)}"
                    drawn.append(TimelineBar(section, label + suffix, start, end, item_tag))
            bars += sorted(drawn, key=lambda bar: (bar.start, bar.end, bar.label))
    return [
        Timeline(stream, tuple(by_stream[stream]), plan.created_at, zone)
        for stream in sorted(by_stream)
    ]


def _recording_bar(item: PlanItem, tag: str) -> tuple[str, str]:
    """An `unchanged` clip's tag and label suffix: ` (recorded)`, ` (settled by callback,
    recorded)`; the section's own tag for a clip whose recording is not known."""
    state = recording_state(item)
    if state is None:
        return tag, ""
    source = settled_by(item)
    words = f"settled by {source}, {state}" if source else state
    return TIMELINE_RECORDING_TAGS.get(state, tag), f" ({words})"


def _collapsed_unchanged_bars(
    section: str, items: Sequence[PlanItem], tag: str
) -> list[TimelineBar]:
    """`37 unchanged clips (recorded)`: one bar per recording state, first start to last end,
    the states in RECORDING_WORDS order (unknown last)."""
    groups: dict[str | None, list[PlanItem]] = {}
    for item in items:
        groups.setdefault(recording_state(item), []).append(item)
    order = [*RECORDING_WORDS, None]
    bars = []
    for state in sorted(groups, key=order.index):
        group = groups[state]
        segments = [segment for item in group for segment in item.segments]
        start = min(start for start, _ in segments)
        end = max(end for _, end in segments)
        label = f"{len(group)} unchanged {'clip' if len(group) == 1 else 'clips'}"
        if state is not None:
            label += f" ({state})"
        bars.append(
            TimelineBar(section, label, start, end, TIMELINE_RECORDING_TAGS.get(state or "", tag))
        )
    return bars


@dataclass(frozen=True, slots=True)
class _Axis:
    """A chart's stand-in calendar: `place` turns a real instant into the zone-free time
    Mermaid is given, `origin`'s clock time in the display zone plus the real time since."""

    origin: datetime  # the real instant the chart starts at
    base: datetime  # its clock time in the display zone, on the stand-in calendar (naive)

    def place(self, moment: datetime) -> str:
        return (self.base + (moment - self.origin)).strftime("%Y-%m-%d %H:%M:%S")


def _axis(origin: datetime, end: datetime, zone: tzinfo) -> _Axis:
    shown = local(origin, zone)
    assert shown is not None, "callers fall back to UTC where the zone cannot show a time"
    year, month = _STAND_IN_MONTHS[calendar.monthrange(shown.year, shown.month)[1]]
    if (end - origin).days > 365 * 7000:  # would leave the calendar: the real one, then
        year, month = shown.year, shown.month
    base = shown.replace(year=year, month=month, tzinfo=None)
    return _Axis(origin, base)


def _tick_interval(seconds: float, label_chars: int) -> str:
    most = _MAX_SHORT_TICKS if label_chars <= 5 else _MAX_LONG_TICKS
    for step, text in _TICK_INTERVALS:
        if seconds / step <= most:
            return text
    return _TICK_INTERVALS[-1][1]


def _zone_label(zone: tzinfo, first: datetime, last: datetime) -> str:
    """`UTC`, `Asia/Shanghai, UTC+08:00`, or for a chart across a clock change
    `America/New_York, UTC-04:00 then UTC-05:00` (the axis keeps the first offset)."""
    if is_utc(zone):
        return "UTC"
    offsets = []
    for moment in (first, last):
        shown = local(moment, zone)
        offset = offset_text(shown.utcoffset() if shown else None)
        if offset not in offsets:
            offsets.append(offset)
    text = f"{zone_name(zone)}, UTC{offsets[0]}"
    if len(offsets) > 1:
        text += f" then UTC{offsets[1]} (the axis keeps UTC{offsets[0]})"
    return text


def timeline_gantt(timeline: Timeline) -> str:
    """The Mermaid `gantt` source of one stream's timeline (without the Markdown fence)."""
    first = min(_parse_utc(bar.start) for bar in timeline.bars)
    last = max(_parse_utc(bar.end) for bar in timeline.bars)
    zone = timeline.zone
    if local(first, zone) is None or local(last, zone) is None:
        zone = UTC  # past year 9999 on the zone's clock: the chart stays on UTC's
    now = _parse_utc(timeline.now) if timeline.now else None
    span = (last - first).total_seconds()
    if now is not None:
        with_now = (max(last, now) - min(first, now)).total_seconds()
        if span < _NOW_MARKER_MIN_SHARE * with_now or local(now, zone) is None:
            now = None  # far from the clips: the bars would shrink to slivers
    low = min(first, now) if now else first
    high = max(last, now) if now else last
    axis = _axis(low, high, zone)
    low_shown, high_shown = local(low, zone), local(high, zone)
    assert low_shown is not None and high_shown is not None
    seconds = max((high - low).total_seconds(), 1)
    if low_shown.date() != high_shown.date():
        axis_format = "%d %H:%M"  # the day of the month: the title says which month
    elif seconds <= 15 * 60:
        axis_format = "%H:%M:%S"
    else:
        axis_format = "%H:%M"
    first_day, last_day = (str(d.date()) for d in (local(first, zone), local(last, zone)) if d)
    days = first_day if first_day == last_day else f"{first_day} to {last_day}"
    title = f"{mermaid_text(timeline.stream, label=False)}, {days} ({mermaid_text(_zone_label(zone, first, last), label=False)})"
    lines = [
        "gantt",
        f"    title {title}",
        f"    dateFormat {TIMELINE_DATE_FORMAT}",
        f"    axisFormat {axis_format}",
        f"    tickInterval {_tick_interval(seconds, len(low_shown.strftime(axis_format)))}",
        "    todayMarker off",
    ]
    section = None
    for bar in timeline.bars:
        if bar.section != section:
            section = bar.section
            lines.append(f"    section {mermaid_text(section, label=False)}")
        start, end = _parse_utc(bar.start), _parse_utc(bar.end)
        when = f"{axis.place(start)}, {axis.place(end)}"
        data = f"{bar.tag}, {when}" if bar.tag else when
        lines.append(f"    {mermaid_text(bar.label)} :{data}")
    if now is not None:
        now_shown = local(now, zone)
        assert now_shown is not None
        label = mermaid_text(f"now {now_shown.strftime('%H:%M')}")
        lines.append(f"    {label} :vert, {axis.place(now)}, {axis.place(now)}")
    return "\n".join(lines)


def _parse_utc(moment: str) -> datetime:
    parsed = parse_record_time(moment)
    assert parsed is not None, "plans hold validated requests only"
    return parsed


def timeline_markdown(plan: Plan, zone: tzinfo = UTC) -> list[str]:
    """A ```mermaid block per stream (or a sentence, for a chart too large to draw)."""
    lines: list[str] = []
    for timeline in plan_timelines(plan, zone):
        source = timeline.mermaid
        if source is None:
            lines += [
                f"Timeline of {md_text(timeline.stream)} not drawn: {len(timeline.bars)} bars "
                f"are more than the {TIMELINE_MAX_BARS} a chart can show; the tables below "
                "list every clip.",
                "",
            ]
        else:
            lines += ["```mermaid", source, "```", ""]
    if lines and plan.of(PlanAction.UNCHANGED):
        lines += [md_text(TIMELINE_LEGEND), ""]
    return lines


def plan_markdown(
    plan: Plan, out: TextIO, *, title: str = "reconciler plan", zone: tzinfo = UTC
) -> None:
    """A PR comment / $GITHUB_STEP_SUMMARY: the summary, a timeline per stream, then a table per
    action; long lists collapse. Every value from a manifest or the state is text (`md_text`)."""
    lines = [f"### {title}", "", f"**{plan.summary()}**", ""]
    recordings = recordings_line(plan.items)
    if recordings:
        lines += [md_text(recordings), ""]
    note = zone_note(zone, plan.created_at)
    if note:
        lines += [md_text(note), ""]
    lines += timeline_markdown(plan, zone)
    for action, (_, heading, _) in _PLAN_HEADINGS.items():
        items = plan.of(PlanAction(action))
        if not items:
            continue
        table = _md_table(items, zone)
        if len(items) > MARKDOWN_COLLAPSE_AFTER or action == "unchanged":
            lines += [
                "<details>",
                f"<summary>{heading} ({len(items)})</summary>",
                "",
                *table,
                "",
                "</details>",
                "",
            ]
        else:
            lines += [f"#### {heading} ({len(items)})", "", *table, ""]
    lines += _configs_markdown(plan)
    out.write("\n".join(lines))


# --- apply ---------------------------------------------------------------------------------------


def outcome_line(outcome: Outcome) -> str:
    """One outcome; the name, requestId and the server's message with controls made visible."""
    item = outcome.item
    who = f"{visible(item.name)} ({item.short_hash})"
    message = visible(outcome.message or "")
    if outcome.kind == "submitted":
        return f"submitted {who}: requestId {visible(outcome.request_id or '')}"
    if outcome.kind == "failed":
        return f"failed {who}: {message}"
    if outcome.kind == "unknown":
        return (
            f"pending {who}: outcome unknown ({message}); left pending, not re-sent automatically"
        )
    return f"not sent {who}: apply was stopped before sending it"


def apply_summary(result: ApplyResult, plan: Plan, *, sandbox: bool = False) -> str:
    counts = {kind: sum(1 for o in result.outcomes if o.kind == kind) for kind in OUTCOME_KINDS}
    planned = plan.counts()
    parts = [f"{counts['submitted']} submitted"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    # Unknown outcomes of this run, plus the plan's pending tasks that were not re-sent.
    pending = counts["unknown"] + result.still_pending
    if pending:
        parts.append(f"{pending} pending (outcome unknown)")
    if counts["not-sent"]:
        parts.append(f"{counts['not-sent']} not sent")
    for action in (PlanAction.UNCHANGED, PlanAction.WAITING):
        if planned[action]:
            parts.append(f"{planned[action]} {action.value}")
    stopped = result.interrupted or result.auth_failed or result.unreachable
    head = "Apply stopped" if stopped else "Apply complete"
    if result.aborted:
        head = "Apply aborted"
    if sandbox:
        head = f"SANDBOX {head.lower()}"
    return f"{head}: {', '.join(parts)}{_config_outcomes_summary(result)}."


# --- apply: notify URLs ------------------------------------------------------------------------

# reconciler.notify.ConfigOutcomeKind's values.
CONFIG_OUTCOME_KINDS = ("updated", "unchanged", "failed", "not-sent")


def _config_outcomes_summary(result: ApplyResult) -> str:
    """`; notify URLs: 1 updated, 1 unchanged` (nothing when the plan has none)."""
    if not result.configs:
        return ""
    counts = config_outcome_counts(result)
    parts = [
        f"{counts[kind]} {kind.replace('-', ' ')}" for kind in CONFIG_OUTCOME_KINDS if counts[kind]
    ]
    return f"; notify URL{'s' if len(result.configs) > 1 else ''}: {', '.join(parts)}"


def config_outcome_counts(result: ApplyResult) -> dict[str, int]:
    """How many notify URLs had each outcome (every kind, 0 included)."""
    return {kind: sum(1 for o in result.configs if o.kind == kind) for kind in CONFIG_OUTCOME_KINDS}


# What each outcome did, as the configs sentence says it (`set for push.example.com`).
_CONFIG_DONE = {
    "updated": "set for {}",
    "unchanged": "unchanged for {}",
    "failed": "not set for {} (failed)",
    "not-sent": "not set for {} (apply stopped first)",
}
#: The configs sentence names at most this many publish domains per outcome.
CONFIG_DOMAINS_NAMED = 5


def config_outcomes_sentence(result: ApplyResult) -> str | None:
    """What apply did with the notify URLs, by publish domain (raw text: the caller makes it
    visible or Markdown): `Notify URL set for push.example.com.`, `Notify URLs set for
    a.example.com, b.example.com; unchanged for c.example.com.`; None when the plan has none."""
    if not result.configs:
        return None
    parts = []
    for kind in CONFIG_OUTCOME_KINDS:
        domains = [o.item.publish_domain for o in result.configs if o.kind == kind]
        if not domains:
            continue
        named = ", ".join(domains[:CONFIG_DOMAINS_NAMED])
        if len(domains) > CONFIG_DOMAINS_NAMED:
            named += f" and {len(domains) - CONFIG_DOMAINS_NAMED} more"
        parts.append(_CONFIG_DONE[kind].format(named))
    return f"Notify URL{'s' if len(result.configs) > 1 else ''} {'; '.join(parts)}."


def apply_configs_line(result: ApplyResult, *, tasks_to_send: bool) -> str | None:
    """The text line before apply's summary: what was done with the notify URLs, and, when no
    task was sent, that too (`Nothing to submit.`, or `No task to submit; notify URL set for
    push.example.com.` when a URL was set). None when tasks were sent and there is no URL."""
    done = config_outcomes_sentence(result)
    if tasks_to_send:
        return None if done is None else visible(done)
    if done is None:
        return "Nothing to submit."
    touched = any(o.kind != "unchanged" for o in result.configs)
    head = "No task to submit" if touched else "Nothing to submit"
    return f"{head}; {visible(done[0].lower() + done[1:])}"


def config_outcome_line(outcome: ConfigOutcome) -> str:
    """One notify URL's outcome; every value masked (notify.py) and made visible."""
    item = outcome.item
    who = f"notify URL of {visible(item.publish_domain)} ({visible(item.name)})"
    before = visible(outcome.before.text) if outcome.before is not None else "unknown"
    request = f"; requestId {visible(outcome.request_id)}" if outcome.request_id else ""
    if outcome.kind == "updated":
        return f"updated {who}: {visible(item.desired)} (was {before}){request}"
    if outcome.kind == "unchanged":
        return f"unchanged {who}: already {visible(item.desired)}"
    if outcome.kind == "failed":
        return f"failed {who}: {visible(outcome.message or '')}"
    return f"not sent {who}: apply was stopped before setting it"


def config_outcomes_json(result: ApplyResult) -> list[dict[str, Any]]:
    return [
        {
            "name": o.item.name,
            "source": o.item.source,
            "line": o.item.line,
            "publishDomain": o.item.publish_domain,
            "notifyUrl": o.item.notify_url,
            "shown": o.item.desired,
            "outcome": o.kind.value,
            "before": o.before.to_json() if o.before is not None else None,
            "requestId": o.request_id,
            "httpStatus": o.http_status,
            "message": o.message,
        }
        for o in result.configs
    ]


def _config_outcomes_github(result: ApplyResult, out: TextIO) -> None:
    levels = {"updated": "notice", "unchanged": "notice", "failed": "error", "not-sent": "warning"}
    for outcome in result.configs:
        _annotate_apply(
            out,
            levels[outcome.kind],
            config_outcome_line(outcome),
            outcome.item.source,
            outcome.item.line,
        )


def _annotate_apply(out: TextIO, level: str, message: str, source: str, line: int | None) -> None:
    """Writes one `reconciler apply` annotation at a manifest's line."""
    out.write(
        github_annotation(level, message, file=source, line=line, title="reconciler apply") + "\n"
    )


def _config_outcomes_markdown(result: ApplyResult) -> list[str]:
    if not result.configs:
        return []
    rows = [
        "| outcome | name | publishDomain | notify URL | requestId / message |",
        "|---|---|---|---|---|",
    ]
    for o in result.configs:
        detail = o.message if o.kind in ("failed", "not-sent") else o.request_id
        cells = [o.kind.value, o.item.name, o.item.publish_domain, o.item.desired, detail or ""]
        rows.append("| " + " | ".join(md_text(cell) for cell in cells) + " |")
    return [*rows, ""]


def apply_hints(result: ApplyResult, plan: Plan, state_path: str) -> list[str]:
    hints = []
    if result.auth_failed:
        hints.append(
            "JD Cloud refused the credentials (401): nothing more was sent. Check "
            "JDCLOUD_ACCESS_KEY / JDCLOUD_SECRET_KEY (and JDCLOUD_SESSION_TOKEN)."
        )
    if any(o.kind == "unknown" for o in result.outcomes) or plan.of(PlanAction.PENDING):
        hints.append(
            "Pending tasks may or may not exist at JD Cloud. Check the console or the record "
            "callbacks, then either `reconciler state mark-submitted HASH --request-id ID "
            f"--state {state_path}` or re-send with `reconciler apply ... --retry-pending` "
            "(which may duplicate the clip)."
        )
    if result.unreachable:
        hints.append(
            "The endpoint could not be reached, so nothing more was sent (every other request "
            "would have failed the same way; those tasks are not sent and not marked). Check "
            "--endpoint / RECONCILER_ENDPOINT and the network, then apply again."
        )
    left = result.left_in_flight
    if result.aborted:
        names = ", ".join(f"{o.item.name} ({o.item.short_hash})" for o in left[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        hints.append(
            f"Aborted: answers already received were recorded; {len(left)} "
            f"{'task was' if len(left) == 1 else 'tasks were'} still in flight and "
            f"{'stays' if len(left) == 1 else 'stay'} pending"
            + (f": {names}{more}." if left else ".")
        )
    elif result.interrupted:
        hints.append(
            "Interrupted: tasks in flight were recorded; run apply again to send the rest."
        )
    return hints


def apply_json(
    result: ApplyResult, plan: Plan, *, sandbox: bool, state_path: str
) -> dict[str, Any]:
    """The documented `apply --format json` structure (schemas/output.schema.json)."""
    return {
        "formatVersion": FORMAT_VERSION,
        "command": "apply",
        "sandbox": sandbox,
        "state": state_path,
        "exitCode": result.exit_code,
        "interrupted": result.interrupted,
        "aborted": result.aborted,
        "authenticationFailed": result.auth_failed,
        "endpointUnreachable": result.unreachable,
        "plan": plan.to_json()["summary"],
        "summary": {
            kind: sum(1 for o in result.outcomes if o.kind == kind) for kind in OUTCOME_KINDS
        },
        "recordings": recording_counts(plan.items),
        "outcomes": [
            {
                "hash": o.item.hash,
                "name": o.item.name,
                "source": o.item.source,
                "outcome": o.kind.value,
                "requestId": o.request_id,
                "httpStatus": o.http_status,
                "message": o.message,
            }
            for o in sorted(
                result.outcomes, key=lambda o: (o.item.source, o.item.name, o.item.hash)
            )
        ],
        **({"configs": config_outcomes_json(result)} if result.configs else {}),
        **({"configSummary": config_outcome_counts(result)} if result.configs else {}),
    }


def apply_github(result: ApplyResult, plan: Plan, out: TextIO, *, sandbox: bool = False) -> None:
    _config_outcomes_github(result, out)
    levels = {
        "submitted": "notice",
        "failed": "error",
        "unknown": "warning",
        "not-sent": "warning",
    }
    for outcome in result.outcomes:
        _annotate_apply(
            out, levels[outcome.kind], outcome_line(outcome), outcome.item.source, outcome.item.line
        )
    # Tasks already `pending` before this run were not re-sent, yet they make apply exit 1:
    # each gets its warning, as in the plan's annotations.
    if result.still_pending:
        for item in plan.of(PlanAction.PENDING):
            _annotate_apply(
                out,
                "warning",
                f"pending {item.name} ({item.short_hash}): outcome of an earlier apply "
                "unknown; not re-sent (see `reconciler state mark-submitted` or "
                "--retry-pending)",
                item.source,
                item.line,
            )
    for line in recording_annotations(plan, title="reconciler apply"):
        out.write(line + "\n")
    recordings = apply_recordings_line(plan)
    if recordings:
        out.write(recordings + "\n")
    out.write(apply_summary(result, plan, sandbox=sandbox) + "\n")


def apply_recordings_line(plan: Plan) -> str | None:
    """After an apply, what the evidence says of the planned tasks the state already knew:
    `Recordings: 3 recorded; 2 pending tasks were settled by callback: never sent again.`"""
    return recordings_line(plan.items, tense="past")


def apply_markdown(result: ApplyResult, plan: Plan, out: TextIO, *, sandbox: bool = False) -> None:
    lines = [
        f"### reconciler apply{' (SANDBOX)' if sandbox else ''}",
        "",
        f"**{apply_summary(result, plan, sandbox=sandbox)}**",
        "",
    ]
    done = config_outcomes_sentence(result)
    if done is not None:
        lines += [md_text(done), ""]
    recordings = apply_recordings_line(plan)
    if recordings:
        lines += [md_text(recordings), ""]
    if result.outcomes:
        rows = ["| outcome | name | task | requestId / message |", "|---|---|---|---|"]
        for o in result.outcomes:
            detail = o.request_id if o.kind == "submitted" else (o.message or "")
            rows.append(
                f"| {o.kind.value} | {md_text(o.item.name)} | `{o.item.short_hash}` | {md_text(detail or '')} |"
            )
        if len(result.outcomes) > MARKDOWN_COLLAPSE_AFTER:
            lines += [
                "<details>",
                f"<summary>{len(result.outcomes)} tasks</summary>",
                "",
                *rows,
                "",
                "</details>",
                "",
            ]
        else:
            lines += [*rows, ""]
    lines += _config_outcomes_markdown(result)
    out.write("\n".join(lines))
