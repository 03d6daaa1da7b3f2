"""The package as pip and PyPI see it: the wheel's metadata, its licence, and a long description
(the README) whose links still work on the package's page, outside the repository."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDERS = ("OWNER", "example.com", "example.org")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the project (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "reconciler", source / "reconciler", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("reconciler-*.whl")
    return zipfile.ZipFile(built)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode("utf-8")


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> Message:
    return email.parser.Parser().parsestr(dist_info(wheel, "METADATA"))


def test_the_licence_is_declared_and_shipped(wheel: zipfile.ZipFile, metadata: Message) -> None:
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    shipped = dist_info(wheel, "licenses/LICENSE")
    assert shipped == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert shipped.startswith("MIT License\n")
    assert "Copyright (c) 2026 the reconciler developers" in shipped
    # PEP 639: with a licence expression, no licence classifier (they could disagree).
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]


def test_classifiers_say_what_it_is(metadata: Message) -> None:
    classifiers = set(metadata.get_all("Classifier") or [])
    for expected in (
        "Environment :: Console",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
    ):
        assert expected in classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Summary"]


def test_project_urls_are_real_addresses(metadata: Message) -> None:
    """Every URL is https and none is a placeholder (the project has no public address yet,
    so there are none: a placeholder on the package page would be a dead link)."""
    for entry in metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(", ")
        assert label and url.startswith("https://"), entry
        assert not any(p in url for p in PLACEHOLDERS), entry


def test_the_console_script_is_the_cli(wheel: zipfile.ZipFile) -> None:
    assert "reconciler = reconciler.cli:main" in dist_info(wheel, "entry_points.txt")


def test_the_long_description_is_the_readme_with_no_link_into_the_repository(
    metadata: Message,
) -> None:
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert description.strip() == readme.strip()

    relative_links: list[str] = []
    images: list[tuple[str, str]] = []

    def walk(tokens: list[object]) -> None:
        for token in tokens:
            kind = getattr(token, "type", "")
            if kind == "link_open":
                href = str(token.attrGet("href"))  # type: ignore[attr-defined]
                if not href.startswith(("https://", "http://", "#", "mailto:")):
                    relative_links.append(href)
            elif kind == "image":
                images.append((str(token.attrGet("src")), token.content))  # type: ignore[attr-defined]
            children = getattr(token, "children", None)
            if children:
                walk(children)
            if kind in ("html_block", "html_inline"):
                text = str(getattr(token, "content", ""))
                assert "href=" not in text and "src=" not in text, text

    walk(list(MarkdownIt("commonmark").enable("table").parse(description)))
    # On the package page a relative link leads nowhere: a path is written as a path.
    assert relative_links == []
    # Images may stay relative (they show in the repository); on the package page the alt
    # text stands in for them, so it must say what the picture shows.
    for src, alt in images:
        assert src.startswith("https://") or len(alt.split()) >= 5, (src, alt)
