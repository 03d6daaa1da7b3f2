""".reconcilerignore: gitignore semantics (checked against real git), and the list of what was left out.

Each semantics case builds one tree twice: with `.reconcilerignore` files for our walk, and with the
same text as `.gitignore` files in a fresh git repository. The manifests our walk finds must be the
files `git ls-files --others --exclude-standard` lists, and every path we report as ignored must be
ignored by the same file, line and pattern that `git check-ignore -v` names.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.manifests import IGNORE_FILE, Ignored, find_manifests
from reconciler.report import ignored_lines, validate_json, validate_report
from reconciler.tasks import load_tasks
from reconciler.text import OutputFormat

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = (Path(__file__).parent / "fixtures" / "bad-input" / "valid-base.yaml").read_text()
OUTPUT_SCHEMA = ROOT / "schemas" / "output.schema.json"


@dataclass(frozen=True)
class Case:
    files: tuple[str, ...]
    ignores: dict[str, str]  # directory (relative, "" for the top) -> the ignore file's text


CASES: dict[str, Case] = {
    "negation re-includes": Case(
        ("a.yaml", "keep.yaml", "sub/keep.yaml", "sub/b.yaml"), {"": "*.yaml\n!keep.yaml\n"}
    ),
    "later pattern wins": Case(("a.yaml", "b.yaml", "c.yml"), {"": "!a.yaml\n*.yaml\n"}),
    "double star prefix": Case(
        ("x.yaml", "a/x.yaml", "a/b/x.yaml", "a/y.yaml"), {"": "**/x.yaml\n"}
    ),
    "double star middle": Case(
        ("a/b.yaml", "a/q/b.yaml", "a/q/r/b.yaml", "z/a/b.yaml", "a/c.yaml"), {"": "a/**/b.yaml\n"}
    ),
    "double star suffix": Case(("a/x.yaml", "a/b/y.yaml", "ab/z.yaml"), {"": "a/**\n"}),
    "star stays in one segment": Case(("a/x.yaml", "a/b/x.yaml"), {"": "a/*.yaml\n"}),
    "directory pattern": Case(
        ("x.yaml", "sub/x.yaml/m.yaml", "drafts/a.yaml", "n/drafts/b.yaml"),
        {"": "x.yaml/\ndrafts/\n"},
    ),
    "anchored glob": Case(("a.yaml", "sub/b.yaml"), {"": "/*.yaml\n"}),
    "star as a middle segment": Case(
        ("a/x/b.yaml", "a/x/y/b.yaml", "a/b.yaml"), {"": "a/*/b.yaml\n"}
    ),
    "anchored": Case(("top.yaml", "sub/top.yaml"), {"": "/top.yaml\n"}),
    "slash inside anchors": Case(
        ("sub/a.yaml", "other/sub/a.yaml", "sub/b.yaml"), {"": "sub/a.yaml\n"}
    ),
    "unanchored name at any depth": Case(
        ("skip.yaml", "a/skip.yaml", "a/b/skip.yaml", "keep.yaml"), {"": "skip.yaml\n"}
    ),
    "comments and escapes": Case(
        ("#c.yaml", "c.yaml", "!bang.yaml", "bang.yaml"),
        {"": "# a comment\n#c.yaml\n\\#c.yaml\n\\!bang.yaml\n\n"},
    ),
    "trailing spaces dropped, leading kept": Case(
        ("sp.yaml", "lead.yaml", " lead.yaml"), {"": "sp.yaml   \n lead.yaml\n"}
    ),
    "crlf ignore file": Case(("a.yaml", "b.yaml"), {"": "a.yaml\r\n"}),
    "character classes": Case(
        ("a.yaml", "b.yaml", "c.yaml", "ab.yaml"), {"": "[ab].yaml\n?b.yaml\n"}
    ),
    "negated class": Case(("a.yaml", "b.yaml"), {"": "[!a].yaml\n"}),
    "case sensitive": Case(("A.yaml", "a.yaml"), {"": "a.yaml\n"}),
    "directory contents re-included": Case(
        ("d/a.yaml", "d/keep.yaml", "d/e/keep.yaml"), {"": "d/*\n!d/keep.yaml\n"}
    ),
    "excluded directory cannot be re-entered": Case(
        ("d/a.yaml", "d/keep.yaml", "top.yaml"), {"": "d/\n!d/keep.yaml\n"}
    ),
    "everything but yaml (directories re-included)": Case(
        ("a/x.yaml", "a/b/y.yml", "a/b/c.yaml", "top.yaml"),
        {"": "*\n!*/\n!*.yaml\na/b/c.yaml\n"},
    ),
    "contents of a directory, not the directory": Case(
        ("d/a.yaml", "d/keep.yaml", "d/e/keep.yaml", "top.yaml"), {"": "d/**\n!d/keep.yaml\n"}
    ),
    "name without slash matches a directory too": Case(
        ("d/a.yaml", "d/keep.yaml", "x/d/b.yaml", "top.yaml"), {"": "d\n!d/keep.yaml\n"}
    ),
    "directory-only double star": Case(
        ("a/x.yaml", "a/b/y.yaml", "a/b/c/z.yaml", "b/w.yaml"), {"": "a/**/\n"}
    ),
    "re-included directory": Case(("one/a.yaml", "two/b.yaml", "top.yaml"), {"": "*/\n!two/\n"}),
    "nested file re-includes": Case(
        ("x.draft.yaml", "sub/x.draft.yaml", "sub/keep.draft.yaml", "sub/m.yaml"),
        {"": "*.draft.yaml\n", "sub": "!keep.draft.yaml\n"},
    ),
    "nested file patterns are relative to it": Case(
        ("a/b/keep.yaml", "a/keep.yaml", "c/b/keep.yaml", "c/keep.yaml", "b/keep.yaml"),
        {"c": "b/keep.yaml\n", "a": "/keep.yaml\n"},
    ),
    "nested file cannot re-include what its parent left out": Case(
        ("sub/x.yaml", "top.yaml"), {"": "sub/\n", "sub": "!x.yaml\n"}
    ),
    "deeper file wins over shallower": Case(
        ("a/m.yaml", "a/b/m.yaml"), {"": "!m.yaml\n", "a/b": "m.yaml\n"}
    ),
}


def make_tree(root: Path, case: Case, ignore_name: str) -> None:
    for name in case.files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a: 1\n")
    for directory, text in case.ignores.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / ignore_name).write_bytes(text.encode())


def run_git(repo: Path, *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        ["git", "-c", "core.excludesFile=/dev/null", *args],
        cwd=repo,
        input=stdin.encode(),
        capture_output=True,
        check=False,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)},
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_ignore_semantics_match_git(tmp_path: Path, case: Case) -> None:
    ours_root, repo = tmp_path / "ours", tmp_path / "repo"
    make_tree(ours_root, case, IGNORE_FILE)
    make_tree(repo, case, ".gitignore")
    run_git(repo, "init", "-q", ".")

    found = find_manifests([str(ours_root)])
    assert found.problems == [], [str(p) for p in found.problems]
    ours = sorted(os.path.relpath(path, ours_root) for path in found.files)
    listed = run_git(repo, "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    theirs = sorted(path for path in listed if path and not path.endswith(".gitignore"))
    assert ours == theirs

    # Every path we left out, git leaves out by the same line of the same file.
    assert found.ignored, "each case ignores something"
    relative = [os.path.relpath(ignored.path, ours_root) for ignored in found.ignored]
    out = run_git(
        repo, "check-ignore", "-v", "-z", "--no-index", "--stdin", stdin="\0".join(relative)
    )
    fields = out.split("\0")
    said = [tuple(fields[at : at + 4]) for at in range(0, len(fields) - 1, 4)]
    ours_said = [
        (
            os.path.relpath(ignored.source, ours_root).replace(IGNORE_FILE, ".gitignore"),
            str(ignored.line),
            ignored.pattern,
            path,
        )
        for ignored, path in zip(found.ignored, relative, strict=True)
    ]
    assert ours_said == said


def test_ignored_lists_paths_with_their_pattern(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        Case(("keep.yaml", "invalid/bad.yaml", "sub/x.draft.yaml", "notes.txt.draft.yaml"), {}),
        IGNORE_FILE,
    )
    (tmp_path / IGNORE_FILE).write_text("# what is not a manifest\n\ninvalid/\n*.draft.yaml\n")
    found = find_manifests([str(tmp_path)])
    source = str(tmp_path / IGNORE_FILE)
    assert found.ignored == [
        Ignored(f"{tmp_path}/invalid/", source, 3, "invalid/"),
        Ignored(f"{tmp_path}/notes.txt.draft.yaml", source, 4, "*.draft.yaml"),
        Ignored(f"{tmp_path}/sub/x.draft.yaml", source, 4, "*.draft.yaml"),
    ]
    assert found.files == [str(tmp_path / "keep.yaml")]
    assert str(found.ignored[0]) == f"{tmp_path}/invalid/ ({source}:3: invalid/)"


def test_a_directory_whose_manifests_are_all_ignored_says_so(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("a.yaml", "drafts/b.yaml"), {"": "a.yaml\ndrafts/\n"}), IGNORE_FILE)
    found = find_manifests([str(tmp_path)])
    assert [p.message for p in found.problems] == [
        "directory holds no manifests (no .yaml or .yml files, hidden ones skipped; "
        "2 paths ignored by .reconcilerignore)"
    ]


def test_files_that_are_no_manifests_are_not_listed_as_ignored(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("keep.yaml", "notes.txt", "README.md"), {}), IGNORE_FILE)
    (tmp_path / IGNORE_FILE).write_text("*\n!keep.yaml\n")
    found = find_manifests([str(tmp_path)])
    assert found.files == [str(tmp_path / "keep.yaml")]
    assert found.ignored == []  # only what would have been read is worth listing


def test_hidden_paths_stay_skipped_whatever_the_patterns_say(tmp_path: Path) -> None:
    make_tree(tmp_path, Case((".hidden.yaml", ".dir/m.yaml", "m.yaml"), {}), IGNORE_FILE)
    (tmp_path / IGNORE_FILE).write_text("!.hidden.yaml\n!.dir/\n")
    found = find_manifests([str(tmp_path)])
    assert found.files == [str(tmp_path / "m.yaml")]
    assert found.ignored == []


def test_paths_named_on_the_command_line_are_read_as_named(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("invalid/bad.yaml", "x.draft.yaml", "sub/y.draft.yaml"), {}), "")
    (tmp_path / IGNORE_FILE).write_text("invalid/\n*.draft.yaml\n")
    (tmp_path / "sub" / IGNORE_FILE).write_text("# nothing\n")
    found = find_manifests(
        [str(tmp_path / "invalid"), str(tmp_path / "x.draft.yaml"), str(tmp_path / "sub")]
    )
    # Ignore files above a named directory are not read; those in it and below are.
    assert found.files == [
        str(tmp_path / "invalid" / "bad.yaml"),
        str(tmp_path / "x.draft.yaml"),
        str(tmp_path / "sub" / "y.draft.yaml"),
    ]
    assert found.problems == []


def test_the_examples_ignore_file_keeps_invalid_and_ci_out() -> None:
    found = find_manifests([str(ROOT / "examples")])
    assert found.problems == []
    assert {Path(path).parent.name for path in found.files} == {"cup-final"}
    source = str(ROOT / "examples" / IGNORE_FILE)
    lines = (ROOT / "examples" / IGNORE_FILE).read_text().splitlines()
    assert found.ignored == [
        Ignored(f"{ROOT}/examples/ci/", source, lines.index("ci/") + 1, "ci/"),
        Ignored(f"{ROOT}/examples/invalid/", source, lines.index("invalid/") + 1, "invalid/"),
    ]


# --- problems in an ignore file -----------------------------------------------------------------


def problems_of(root: Path) -> list[tuple[str, int, str]]:
    found = find_manifests([str(root)])
    return [(os.path.relpath(p.file, root), p.line, p.message) for p in found.problems]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("ok.yaml\n!\n", 2, "invalid pattern '!'"),
        ("# x\n\nfoo\\\n", 3, "invalid pattern 'foo\\'"),
        ("a[b.yaml\n", 1, "matches nothing"),
    ],
)
def test_invalid_pattern_is_a_problem_at_its_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    make_tree(tmp_path, Case(("m.yaml",), {"": text}), IGNORE_FILE)
    ((file, at, message),) = problems_of(tmp_path)
    assert (file, at) == (IGNORE_FILE, line)
    assert fragment in message


def test_ignore_file_not_utf8_is_a_problem_at_its_line(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("m.yaml",), {"": ""}), IGNORE_FILE)
    (tmp_path / IGNORE_FILE).write_bytes(b"a.yaml\ncaf\xe9.yaml\n")
    ((file, at, message),) = problems_of(tmp_path)
    assert (file, at) == (IGNORE_FILE, 2)
    assert "not UTF-8" in message


def test_ignore_file_that_is_a_fifo_is_a_problem_and_never_opened(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("m.yaml", "sub/n.yaml"), {}), IGNORE_FILE)
    os.mkfifo(tmp_path / "sub" / IGNORE_FILE)  # opening it for reading would block
    problems = problems_of(tmp_path)
    assert problems == [
        (
            f"sub/{IGNORE_FILE}",
            1,
            "is a FIFO (named pipe), not a regular file; cannot read the patterns, so this "
            "directory is not read",
        )
    ]


def test_ignore_file_that_is_a_directory_is_a_problem(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("m.yaml",), {}), IGNORE_FILE)
    (tmp_path / IGNORE_FILE).mkdir()
    ((file, at, message),) = problems_of(tmp_path)
    assert (file, at) == (IGNORE_FILE, 1)
    assert message.startswith("is a directory, not a regular file")


def test_bad_ignore_file_through_the_real_command(tmp_path: Path) -> None:
    make_tree(tmp_path, Case(("m.yaml",), {"": "ok\n\\\n"}), IGNORE_FILE)
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith(f"{tmp_path / IGNORE_FILE}:2:1: invalid pattern '\\'")


# --- the listing in reports ---------------------------------------------------------------------


def test_validate_verbose_prints_what_was_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MINIMAL)
    (tmp_path / "invalid").mkdir()
    (tmp_path / "invalid" / "bad.yaml").write_text("- broken\n")
    (tmp_path / IGNORE_FILE).write_text("# broken on purpose\ninvalid/\n")
    result = load_tasks([str(tmp_path)])
    assert ignored_lines(result) == [
        f"ignored {tmp_path}/invalid/ ({tmp_path}/{IGNORE_FILE}:2: invalid/)"
    ]
    out = io.StringIO()
    validate_report(result, OutputFormat.TEXT, out, verbose=True)
    assert out.getvalue().splitlines()[0] == ignored_lines(result)[0]
    quiet = io.StringIO()
    validate_report(result, OutputFormat.TEXT, quiet)
    assert "ignored" not in quiet.getvalue()


def test_validate_verbose_on_the_examples_through_the_real_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "--verbose", "examples/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (ROOT / "examples" / IGNORE_FILE).read_text().splitlines()
    at = {pattern: lines.index(pattern) + 1 for pattern in ("ci/", "invalid/")}
    assert result.stdout.splitlines()[:2] == [
        f"ignored examples/ci/ (examples/.reconcilerignore:{at['ci/']}: ci/)",
        f"ignored examples/invalid/ (examples/.reconcilerignore:{at['invalid/']}: invalid/)",
    ]


def test_validate_json_lists_what_was_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MINIMAL)
    (tmp_path / "drafts").mkdir()
    (tmp_path / IGNORE_FILE).write_text("drafts/\n")
    document = validate_json(load_tasks([str(tmp_path)]))
    assert document["ignored"] == [
        {
            "path": f"{tmp_path}/drafts/",
            "ignoreFile": str(tmp_path / IGNORE_FILE),
            "line": 1,
            "pattern": "drafts/",
        }
    ]
    validator = Draft202012Validator(json.loads(OUTPUT_SCHEMA.read_text()))
    assert list(validator.iter_errors(document)) == []
    document["ignored"][0]["line"] = 0
    assert not validator.is_valid(document)


def test_validate_junit_lists_ignored_paths_as_skipped(tmp_path: Path) -> None:
    from xml.etree import ElementTree

    (tmp_path / "m.yaml").write_text(MINIMAL)
    (tmp_path / "drafts").mkdir()
    (tmp_path / IGNORE_FILE).write_text("drafts/\n")
    out = io.StringIO()
    validate_report(load_tasks([str(tmp_path)]), OutputFormat.JUNIT, out)
    suite = ElementTree.fromstring(out.getvalue()).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "0", "1")
    skipped = [case for case in suite.iter("testcase") if case.find("skipped") is not None]
    assert [case.get("name") for case in skipped] == [f"ignored {tmp_path}/drafts/"]
    element = skipped[0].find("skipped")
    assert element is not None
    assert element.get("message") == f"{tmp_path}/{IGNORE_FILE}:1: drafts/"
