"""Mermaid sources rendered by the pinned `mermaid` npm package in headless Chromium (Debian's).

Used by tests/test_timeline.py (the SVG's bars and labels) and to make docs/timeline.png:

    reconciler plan examples/ --format markdown > plan.md
    python tests/browser/render.py plan.md docs/timeline.png [--chart N] [--width PX] [--scale 2]

Chromium opens tests/browser/render.html from disk with the sources in its URL fragment; every
host name resolves to nothing, so the page loads nothing but its own files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "render.html"
MERMAID_BUNDLE = HERE / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
CHROMIUM_NAMES = ("chromium", "chromium-browser")  # Debian's package installs /usr/bin/chromium
MERMAID_BLOCK = re.compile(r"^```mermaid\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
TIMEOUT_SECONDS = 120


def chromium() -> str | None:
    return next(filter(None, (shutil.which(name) for name in CHROMIUM_NAMES)), None)


def missing() -> str | None:
    """What rendering needs that is not installed, said as what to install; None if nothing."""
    needs = []
    if chromium() is None:
        needs.append("Chromium (`apt-get install -y --no-install-recommends chromium`)")
    if not MERMAID_BUNDLE.is_file():
        needs.append("the mermaid npm package (`npm ci --prefix tests/browser`)")
    return "needs " + " and ".join(needs) if needs else None


def mermaid_blocks(markdown: str) -> list[str]:
    """The source of every ```mermaid fenced block in `markdown`, in order."""
    return MERMAID_BLOCK.findall(markdown)


def _run_chromium(sources: Sequence[str], *options: str, tz: str | None = None) -> str:
    browser = chromium()
    if browser is None or not MERMAID_BUNDLE.is_file():
        raise RuntimeError(f"cannot render: {missing()}")
    url = PAGE.as_uri() + "#" + urllib.parse.quote(json.dumps(list(sources)), safe="")
    with tempfile.TemporaryDirectory(prefix="reconciler-chromium-") as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # CI runs as root, where Chromium's own sandbox cannot start
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: file:// only
                "--hide-scrollbars",
                "--virtual-time-budget=30000",  # lets mermaid's asynchronous render finish
                *options,
                url,
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=TIMEOUT_SECONDS,
            check=False,
            # The viewer's zone: Chromium (and so Mermaid) reads local times in it.
            env={**os.environ, "TZ": tz} if tz else None,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


@dataclass(frozen=True)
class Bar:
    """A bar mermaid drew: its label as shown, its classes (`task`, `done0`, `crit0`...), and
    where it is (`x`, `width`, in the SVG's units)."""

    label: str
    classes: tuple[str, ...]
    x: float = 0
    width: float = 0


@dataclass(frozen=True)
class Tick:
    """An axis label: its text, the tick's x in the SVG, and the label's box on the page."""

    label: str
    x: float
    left: float
    right: float


@dataclass
class RenderedChart:
    """What one source became in the page: the SVG's bars, title and section titles, or
    mermaid's own message when it could not render the source."""

    bars: list[Bar] = field(default_factory=list)
    markers: list[Bar] = field(default_factory=list)  # `vert` lines: the plan's now
    ticks: list[Tick] = field(default_factory=list)
    title: str = ""
    sections: list[str] = field(default_factory=list)
    error: str | None = None


class _PageReader(HTMLParser):
    """Reads the dumped page: per chart, `rect.task` bars with their labels (a bar's label is
    the <text> whose id is the bar's id + `-text`), the title and the section titles."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[RenderedChart] = []
        self.bar_ids: list[list[tuple[str, tuple[str, ...], float, float]]] = []
        self.texts: dict[str, str] = {}
        self.height = 0
        self.finished = False
        self._text: list[str] | None = None  # the text of the open element, if collected
        self._store: tuple[str, str] | None = None  # where that text goes when it closes
        self._tick_x = 0.0
        self._tick_box = (0.0, 0.0)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        classes = tuple(attributes.get("class", "").split())
        element_id = attributes.get("id", "")
        if tag == "tspan":  # a line of the open <text>: its text goes with the <text>'s
            return
        if tag == "div" and "chart" in classes:
            self.charts.append(RenderedChart())
            self.bar_ids.append([])
        elif tag == "rect" and "task" in classes:
            x, width = float(attributes.get("x") or 0), float(attributes.get("width") or 0)
            self.bar_ids[-1].append((element_id, classes, x, width))
        elif tag == "g" and "tick" in classes:
            found = re.search(r"translate\(([-\d.e]+)", attributes.get("transform", ""))
            self._tick_x = float(found.group(1)) if found else 0.0
        elif tag == "text" and "data-left" in attributes and self.charts:
            self._tick_box = (float(attributes["data-left"]), float(attributes["data-right"]))
            self._collect("tick", "")
        elif tag == "text" and element_id.endswith("-text"):
            self._collect("label", element_id.removesuffix("-text"))
        elif tag == "text" and "titleText" in classes:
            self._collect("title", "")
        elif tag == "text" and "sectionTitle" in classes:
            self._collect("section", "")
        elif tag == "pre" and "render-error" in classes:
            self._collect("error", "")
        elif tag == "pre" and element_id == "status":
            self.height = int(attributes.get("data-height") or 0)
            self.finished = "data-height" in attributes

    def _collect(self, kind: str, key: str) -> None:
        self._text, self._store = [], (kind, key)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tspan" or self._text is None or self._store is None:
            return
        text = "".join(self._text).strip()
        kind, key = self._store
        chart = self.charts[-1]
        if kind == "label":
            self.texts[key] = text
        elif kind == "title":
            chart.title = text
        elif kind == "section":
            chart.sections.append(text)
        elif kind == "tick":
            chart.ticks.append(Tick(text, self._tick_x, *self._tick_box))
        else:
            chart.error = text
        self._text = self._store = None

    def result(self) -> list[RenderedChart]:
        for chart, bar_ids in zip(self.charts, self.bar_ids, strict=True):
            drawn = [
                Bar(self.texts.get(bar_id, ""), classes, x, width)
                for bar_id, classes, x, width in bar_ids
            ]
            chart.bars = [bar for bar in drawn if "vert" not in bar.classes]
            chart.markers = [bar for bar in drawn if "vert" in bar.classes]
        return self.charts


def _read(sources: Sequence[str], width: int, tz: str | None = None) -> _PageReader:
    dom = _run_chromium(sources, f"--window-size={width},900", "--dump-dom", tz=tz)
    reader = _PageReader()
    reader.feed(dom)
    if not reader.finished or len(reader.charts) != len(sources):
        raise RuntimeError(f"the page did not finish rendering: {dom[-2000:]}")
    return reader


def render(
    sources: Sequence[str], *, width: int = 1200, tz: str | None = None
) -> list[RenderedChart]:
    """Each source rendered by mermaid in one headless Chromium, read back from the DOM; `tz`
    is the viewer's time zone (the TZ Chromium runs with), else this machine's."""
    return _read(sources, width, tz).result()


def screenshot(source: str, png: Path, *, width: int = 1000, scale: float = 1) -> None:
    """A PNG of one rendered chart, the page's width and exactly as tall as it is (times
    `scale` pixels per CSS pixel: 2 stays sharp on a high-density screen)."""
    reader = _read([source], width)
    (chart,) = reader.result()
    if chart.error:
        raise RuntimeError(f"mermaid could not render the chart: {chart.error}")
    size = f"--window-size={width},{max(reader.height, 100)}"
    scaled = f"--force-device-scale-factor={scale}"
    _run_chromium([source], size, scaled, f"--screenshot={png.resolve()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot a plan's timeline chart.")
    parser.add_argument("markdown", type=Path, help="`reconciler plan --format markdown` output")
    parser.add_argument("png", type=Path)
    parser.add_argument("--chart", type=int, default=1, help="which mermaid block, from 1")
    parser.add_argument("--width", type=int, default=1000, help="in CSS pixels")
    parser.add_argument("--scale", type=float, default=1, help="device pixels per CSS pixel")
    options = parser.parse_args(argv)
    blocks = mermaid_blocks(options.markdown.read_text(encoding="utf-8"))
    if not 1 <= options.chart <= len(blocks):
        print(f"{options.markdown} has {len(blocks)} mermaid blocks", file=sys.stderr)
        return 1
    screenshot(blocks[options.chart - 1], options.png, width=options.width, scale=options.scale)
    print(f"wrote {options.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
