"""What reviewers read is what will happen (DESIGN §3): every value from a manifest, the state or
the server is text in every output. The Markdown is rendered by a real CommonMark/GFM renderer
(markdown-it-py's gfm-like preset with raw HTML allowed, the stand-in for GitHub's cmark-gfm);
terminal output shows control characters escaped; GitHub annotations escape as GitHub says."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from reconciler.apply import ApplyResult, Outcome, OutcomeKind
from reconciler.plan import Plan, PlanAction, PlanItem
from reconciler.report import apply_markdown, outcome_line, plan_github, plan_markdown
from reconciler.state import State, StateEntry, StateStore, TaskStatus
from reconciler.tasks import request_hash
from reconciler.text import github_annotation, visible

# The elements plan and apply Markdown are made of; anything else came from a value.
OUR_ELEMENTS = frozenset(
    {"h3", "h4", "p", "strong", "table", "thead", "tbody", "tr", "th", "td", "code", "pre"}
)
# Raw HTML we write ourselves, line by line (collapsed lists).
OUR_HTML = ("<details>", "</details>", "<summary>")

HOSTILE = [
    "<script>alert(1)<\\script>",
    "<img\\src=x\\onerror=alert(1)>",
    "<!--",
    "-->",
    "[click](https:\\\\evil.example)",
    "![x](y)",
    "<http:\\\\evil.example>",
    "<a@b.c>",
    "a|b|c",
    "``",
    "`code`",
    "**bold**",
    "_em_",
    "~~gone~~",
    "&lt;amp&gt;",
    "&#60;",
    "\\|",
    "[ref]",
    "[x]:",
    "$x^2$",
    "@someone",
    "<details>",
    "</td></tr></table>",
    "http:\\\\bare.example",
]
# What a streamName or appName may hold: no `/ ? # %`, whitespace, controls or invisibles.
SEGMENT = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Co", "Cn"),
        exclude_characters="/?#%",
    )
    | st.sampled_from(list("<>&|`*_~[]()!\\:;\"'{}=+$@")),
    min_size=1,
    max_size=30,
)
# A file name (the manifest's source) may hold anything but `/` and NUL, controls included.
SOURCE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00", exclude_categories=("Cs",)),
    min_size=1,
    max_size=30,
)


@dataclass
class _Page(HTMLParser):
    """The rendered page: every element, comment and raw text, and each table cell's text."""

    tags: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    _cell: list[str] | None = None

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def renderer() -> MarkdownIt:
    # linkify needs linkify-it-py, which is not installed; GitHub's bare-URL autolinks show the
    # URL itself as the link's text, so they could hide nothing anyway.
    return MarkdownIt("gfm-like", {"html": True, "linkify": False})


def rendered(markdown: str) -> _Page:
    """The page GitHub would show, checked: only our elements, no comment, no link, no image,
    no raw HTML but our own <details>."""
    md = renderer()
    for token in md.parse(markdown):
        if token.type == "html_block":
            assert token.content.strip().startswith(OUR_HTML), token.content
        for child in token.children or []:
            assert child.type not in ("html_inline", "link_open", "image", "autolink"), child
    page = _Page()
    page.feed(md.render(markdown))
    page.close()
    assert page.comments == []
    assert set(page.tags) <= OUR_ELEMENTS | {"details", "summary"}, set(page.tags)
    return page


def item(name: str, app: str, stream: str, source: str, action: PlanAction) -> PlanItem:
    request = {
        "path": {"publishDomain": "push.example.com", "appName": app, "streamName": stream},
        "body": {
            "recordTimes": [
                {"startTime": "2026-11-01T05:30:00Z", "endTime": "2026-11-01T06:40:00Z"}
            ],
            "saveBucket": "highlights",
        },
    }
    return PlanItem(action, "ab" * 32, name, source, request, line=1)


def plan_with(*items: PlanItem) -> Plan:
    return Plan(items=items, created_at="2026-11-01T07:00:00Z")


def cells_of(page: _Page) -> set[str]:
    return {cell.strip() for cell in page.cells}


def assert_shown(page: _Page, plan: Plan) -> None:
    cells = cells_of(page)
    for shown in plan.items:
        assert visible(shown.name).strip() in cells
        assert visible(shown.stream).strip() in cells
        assert visible(shown.source).strip() in cells


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(app=SEGMENT, stream=SEGMENT, source=SOURCE, name=SEGMENT)
@example(app="<b>app<\\b>", stream="<script>x<\\script>|[x](y)<!--", source="a|b.yaml", name="n")
@example(app="live", stream="`a|b`", source="<!--.yaml", name="[x](javascript:alert(1))")
@example(app="x", stream="<http:\\\\e.example>", source="\x1b[2J\r\n.yaml", name="~~a~~")
def test_plan_markdown_shows_any_value_as_text(
    app: str, stream: str, source: str, name: str
) -> None:
    plan = plan_with(
        item(name, app, stream, source, PlanAction.CREATE),
        *(item(f"{name}{n}", app, stream, source, PlanAction.UNCHANGED) for n in range(2)),
    )
    out = io.StringIO()
    plan_markdown(plan, out)
    page = rendered(out.getvalue())
    assert_shown(page, plan)


@pytest.mark.parametrize("value", HOSTILE)
def test_plan_markdown_hostile_stream_and_app_names(value: str) -> None:
    plan = plan_with(item("goal-1", value, value, f"{value}.yaml", PlanAction.CREATE))
    out = io.StringIO()
    plan_markdown(plan, out)
    page = rendered(out.getvalue())
    assert_shown(page, plan)
    # The row is still a row of six cells: nothing closed the table or added a column.
    assert len(page.cells) == 6 + 6


@settings(max_examples=60, deadline=None)
@given(name=SEGMENT, message=SOURCE, request_id=SEGMENT)
@example(name="a|b", message="<script>x</script> [a](b) <!--", request_id="`x`")
def test_apply_markdown_shows_names_and_server_messages_as_text(
    name: str, message: str, request_id: str
) -> None:
    plan = plan_with(item(name, "live", "s", "a.yaml", PlanAction.CREATE))
    created = item(name, "live", "s", "a.yaml", PlanAction.CREATE)
    result = ApplyResult(
        outcomes=(
            Outcome(created, OutcomeKind.SUBMITTED, request_id=request_id),
            Outcome(created, OutcomeKind.FAILED, http_status=400, message=message),
        )
    )
    out = io.StringIO()
    apply_markdown(result, plan, out)
    cells = cells_of(rendered(out.getvalue()))
    assert visible(name).strip() in cells
    assert visible(message).strip() in cells
    assert visible(request_id).strip() in cells


# --- the real CLI -----------------------------------------------------------------------------

MANIFEST = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: goal-1
  labels: {{note: {label}}}
spec:
  publishDomain: push.example.com
  appName: {app}
  streamName: {stream}
  recordTimes:
    - {{startTime: "2026-11-01T05:30:00Z", endTime: "2026-11-01T06:40:00Z"}}
  saveBucket: highlights
  saveObject: {obj}
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RECONCILER_", "JDCLOUD_")) and key != "NO_COLOR"
    }
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env={**clean, "PYTHONIOENCODING": "utf-8", **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


# A file name with a terminal's escape sequences and a newline in it.
HOSTILE_FILE = "clip\x1b]8;;http:\x07\x1b[2J\r\x9b31m\x7f\u202e\nx.yaml"


def hostile_workspace(root: Path) -> Path:
    clips = root / "clips"
    clips.mkdir()
    (clips / HOSTILE_FILE).write_text(
        MANIFEST.format(
            label=quoted("<script>alert(1)</script> [x](y) <!--"),
            app=quoted("<b>app<\\b>|`x`"),
            stream=quoted("<script>alert(1)<\\script>[x](y)<!--"),
            obj=quoted("<img src=x onerror=alert(1)>"),
        ),
        encoding="utf-8",
    )
    return clips


def test_cli_plan_markdown_renders_hostile_manifests_as_text(tmp_path: Path) -> None:
    hostile_workspace(tmp_path)
    result = run(tmp_path, "plan", "clips", "--format", "markdown", "--state", "none.json")
    assert result.returncode == 0, result.stderr
    page = rendered(result.stdout)
    cells = cells_of(page)
    assert "push.example.com/<b>app<\\b>|`x`/<script>alert(1)<\\script>[x](y)<!--" in cells
    assert visible(f"clips/{HOSTILE_FILE}") in cells
    assert "<script" not in result.stdout and "<!--" not in result.stdout


def test_cli_plan_text_shows_control_characters_escaped(tmp_path: Path) -> None:
    hostile_workspace(tmp_path)
    result = run(tmp_path, "plan", "clips", "--state", "none.json", "--no-color")
    assert result.returncode == 0, result.stderr
    for control in "\x1b\x07\r\x9b\x7f\u202e":
        assert control not in result.stdout
    line = next(line for line in result.stdout.splitlines() if "goal-1" in line)
    assert visible(f"clips/{HOSTILE_FILE}") in line  # the newline did not split the row
    assert "\\x1b]8;;http:\\x07\\x1b[2J\\r\\x9b31m\\x7f\\u202e\\nx.yaml" in line


def test_cli_plan_github_escapes_as_github_requires(tmp_path: Path) -> None:
    hostile_workspace(tmp_path)
    result = run(tmp_path, "plan", "clips", "--state", "none.json", "--format", "github")
    assert result.returncode == 0, result.stderr
    (annotation,) = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert "\r" not in result.stdout
    properties, message = annotation.split("::")[1:3]
    assert "\x1b" not in message and "\x07" not in message
    assert visible(f"clips/{HOSTILE_FILE}") in message
    # The file property names the file exactly (else GitHub cannot attach the annotation):
    # `%`, CR, LF, `:` and `,` percent-encoded, as GitHub requires, the rest as it is.
    file = properties.split(" file=", 1)[1].split(",line=", 1)[0]
    assert file == (
        f"clips/{HOSTILE_FILE}".replace("%", "%25")
        .replace("\r", "%0D")
        .replace("\n", "%0A")
        .replace(":", "%3A")
        .replace(",", "%2C")
    )


def test_github_annotation_message_escapes() -> None:
    line = github_annotation("error", "50% a\r\nb::c", file="a,b:c.yaml", line=3, title="t:x,y")
    assert line == "::error file=a%2Cb%3Ac.yaml,line=3,title=t%3Ax%2Cy::50%25 a%0D%0Ab::c"


def test_plan_github_message_has_controls_visible() -> None:
    plan = plan_with(item("goal-1", "live", "s", "a\x1b[2J%.yaml", PlanAction.CREATE))
    out = io.StringIO()
    plan_github(plan, out)
    message = out.getvalue().splitlines()[0].split("::")[2]
    assert message.endswith("(a\\x1b[2J%25.yaml)")


def test_outcome_line_shows_server_message_controls_escaped() -> None:
    created = item("goal-1", "live", "s", "a.yaml", PlanAction.CREATE)
    outcome = Outcome(created, OutcomeKind.FAILED, http_status=400, message="bad\x1b[2J\rok\n!")
    assert outcome_line(outcome) == "failed goal-1 (abababababab): bad\\x1b[2J\\rok\\n!"


def test_cli_state_list_and_show_text_escape_controls(tmp_path: Path) -> None:
    request: dict[str, Any] = {"path": {}, "body": {}}
    entry = StateEntry(
        request_hash(request),
        TaskStatus.SUBMITTED,
        "goal-1",
        "clips/[bold]x\x1b[2J\r\n.yaml",
        request,
        "2026-11-01T07:00:00Z",
        "req\x07",
        "2026-11-01T07:00:00Z",
    )
    store = StateStore(tmp_path / "reconciler-state.json")
    with store.lock():
        store.write(State().with_entries([entry]))
    listed = run(tmp_path, "state", "list", "--no-color")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\r" not in listed.stdout and "\x07" not in listed.stdout
    assert "clips/[bold]x\\x1b[2J\\r\\n.yaml" in listed.stdout
    assert "req\\x07" in listed.stdout
    shown = run(tmp_path, "state", "show", entry.hash[:8])
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines()[:7])
    assert fields["source:"] == "clips/[bold]x\\x1b[2J\\r\\n.yaml"
    assert fields["requestId:"] == "req\\x07"
