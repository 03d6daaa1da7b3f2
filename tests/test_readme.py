"""README promises that tests can check: its set-up commands and the output it quotes."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_exactly_two_tagged_setup_commands() -> None:
    tags = re.findall(r"<!-- setup:(\w+) -->\n```sh\n(.+)\n```", README)
    assert [tag for tag, _ in tags] == ["demo", "test"]
    demo, test = (command for _, command in tags)
    assert "python3 -m venv" in demo and "pip install ." in demo
    assert "python3 -m venv" in test and "'.[test]'" in test and "pytest" in test


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_command demo" in ci and "readme_command test" in ci
    assert "|| true" not in ci, "CI must not hide a failing step"


def test_invalid_examples_output_is_what_readme_shows() -> None:
    block = re.search(
        r"<!-- invalid-examples:begin -->\n```text\n(.*?)```\n<!-- invalid-examples:end -->",
        README,
        re.S,
    )
    assert block is not None
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "examples/invalid"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == block.group(1)


# --- the command table: every option each command's --help shows ----------------------------


def cli_commands() -> dict[tuple[str, ...], Any]:
    """Every command `reconciler --help` leads to (`("state", "rm")`...), as Click sees it.

    `--help` is rendered from these very objects, so their options are what it shows.
    """
    import typer.main

    from reconciler.cli import app

    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if getattr(command, "hidden", False):
            return
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            found[path] = command

    walk(typer.main.get_command(app), ())
    return found


def shown_options(command: Any) -> list[tuple[list[str], tuple[str, ...]]]:
    """Each option of `command` that --help shows: its names, and its choices if it has any."""
    return [
        ([*param.opts, *param.secondary_opts], tuple(getattr(param.type, "choices", ()) or ()))
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
    ]


def section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading of that level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", README, re.S | re.M)
    assert match is not None, title
    return match.group(2)


def command_rows() -> dict[tuple[str, ...], str]:
    """The Commands table: its command path -> its first cell, `\\|` read as `|`."""
    rows: dict[tuple[str, ...], str] = {}
    for line in section("Commands").splitlines():
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        if not cells or not cells[0].strip().startswith("`reconciler "):
            continue
        cell = cells[0].replace("\\|", "|")
        words = cell.strip().strip("`").split()[1:]
        path = tuple(itertools.takewhile(lambda word: re.fullmatch(r"[a-z][a-z-]*", word), words))
        assert path not in rows, f"two rows for reconciler {' '.join(path)}"
        rows[path] = cell
    return rows


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def test_the_command_table_has_one_row_per_command() -> None:
    assert set(command_rows()) == set(cli_commands())


def test_the_command_table_lists_every_option_of_every_command() -> None:
    rows = command_rows()
    missing, unknown = [], []
    for path, command in sorted(cli_commands().items()):
        row, name = rows.get(path, ""), " ".join(path)
        written = set(OPTION.findall(row))
        options = shown_options(command)
        for names, choices in options:
            missing += [f"{name}: {option}" for option in names if option not in written]
            missing += [
                f"{name}: {names[0]} {choice}"
                for choice in choices
                if not re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", row)
            ]
        shown = {option for names, _ in options for option in names}
        unknown += [f"{name}: {option}" for option in sorted(written - shown)]
    assert missing == [], "options missing from README's command table"
    assert unknown == [], "options in README's command table that the command does not have"


def test_the_top_level_options_are_documented() -> None:
    import typer.main

    from reconciler.cli import app

    for names, _ in shown_options(typer.main.get_command(app)):
        assert any(name in README for name in names), names


# --- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of `markdown`."""
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", without_code(markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


def without_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_points_into_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    links = LINK.findall(without_code(text))
    assert links
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, fragment = link.partition("#")
        target = Path(os.path.normpath(document.parent / path)) if path else document
        inside = target.is_relative_to(ROOT) and ".git" not in target.relative_to(ROOT).parts
        assert inside and target.exists(), f"{document.name}: {link} is not in the repository"
        if fragment:
            assert target.suffix == ".md", link
            assert fragment in anchors(target.read_text(encoding="utf-8")), link


def test_the_readme_says_to_commit_the_journal() -> None:
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in section("The state file").splitlines()
        if len(cells := line.split("|")) > 3
    }
    assert rows["`reconciler-state.json`"].startswith("yes")
    assert rows["`reconciler-state.json.journal`"].startswith("yes")
    assert rows["`*.lock`, `*.lock.info`, `*.tmp`"].startswith("no")
    assert "Keep `*.journal`" not in README


def test_the_state_init_writes_is_the_one_the_readme_shows(tmp_path: Path) -> None:
    shown = re.search(r"reconciler init +# writes reconciler-state\.json: (\{.*\})", README)
    assert shown is not None, "the README shows what init writes"
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "init"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "reconciler-state.json").read_text(encoding="utf-8"))
    assert written == json.loads(shown.group(1))
