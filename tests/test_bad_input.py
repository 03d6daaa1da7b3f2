"""Bad input, end to end: `reconciler validate` gives a located message and exit 1, never a traceback.

Each case runs the real command in a fresh process, from an empty working directory, and checks
that nothing was written anywhere (inputs untouched, working directory still empty).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad-input"
MINIMAL = (BAD / "valid-base.yaml").read_text(encoding="utf-8")
MiB = 1024 * 1024


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def problem_lines(self) -> list[str]:
        return self.stdout.splitlines()[:-1]

    @property
    def summary(self) -> str:
        return self.stdout.splitlines()[-1]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time (symlinks not followed)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def validate(tmp_path: Path, *args: str) -> Run:
    """`python -m reconciler validate ARGS` from an empty directory; asserts it wrote nothing."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "RECONCILER_STATE": str(cwd / "state.json"),  # validate must not touch state at all
    }
    out, err = cwd.parent / "stdout.txt", cwd.parent / "stderr.txt"
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "validate", *args],
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"validate {args} did not finish in 60 s")
    run = Run(process.returncode, out.read_text(), err.read_text(), time.perf_counter() - started)
    out.unlink()
    err.unlink()
    after = snapshot(tmp_path)
    assert after == before, "validate changed files: " + repr(set(after) ^ set(before))
    assert list(cwd.iterdir()) == []
    assert "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    return run


def measure_rss(tmp_path: Path, *args: str) -> int:
    """Peak resident memory (bytes) of one `validate` process, measured with wait4."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "validate", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        pid, _, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = 0  # reaped here; keep Popen from waiting again
            return usage.ru_maxrss * 1024  # Linux reports KiB
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"validate {args} did not finish in 60 s")
        time.sleep(0.01)


def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    return folder


def fixture(tmp_path: Path, name: str) -> str:
    target = inputs(tmp_path) / name
    shutil.copyfile(BAD / name, target)
    return str(target)


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    target = inputs(tmp_path) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(target)


# --- the table of bad inputs --------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: how to make it, and the problems `validate` must report (in order)."""

    make: Callable[[Path], list[str]]
    # (path relative to the path given, or "" for the path itself; line; column; field;
    # a fragment of the message)
    problems: list[tuple[str, int, int, str, str]] = field(default_factory=list)


def from_fixture(name: str) -> Callable[[Path], list[str]]:
    return lambda tmp_path: [fixture(tmp_path, name)]


def from_bytes(content: bytes, name: str = "m.yaml") -> Callable[[Path], list[str]]:
    return lambda tmp_path: [write(tmp_path, name, content)]


def sparse_file(tmp_path: Path) -> list[str]:
    target = inputs(tmp_path) / "huge.yaml"
    with target.open("wb") as handle:
        handle.truncate(50 * MiB)  # instant, and takes no disk
    return [str(target)]


def symlink_loop(tmp_path: Path) -> list[str]:
    root = inputs(tmp_path) / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "m.yaml").write_text(MINIMAL)
    (root / "sub" / "again").symlink_to("..", target_is_directory=True)
    return [str(root)]


def missing(tmp_path: Path) -> list[str]:
    return [str(inputs(tmp_path) / "no-such-file.yaml")]


def empty_directory(tmp_path: Path) -> list[str]:
    root = inputs(tmp_path) / "empty"
    root.mkdir()
    (root / ".hidden.yaml").write_text(MINIMAL)
    (root / "notes.txt").write_text("not a manifest\n")
    (root / "sub").mkdir()
    return [str(root)]


def fifo(tmp_path: Path) -> list[str]:
    target = inputs(tmp_path) / "pipe.yaml"
    os.mkfifo(target)  # opening it for reading would block validate
    return [str(target)]


def fifo_in_a_directory(tmp_path: Path) -> list[str]:
    root = inputs(tmp_path) / "clips"
    root.mkdir()
    os.mkfifo(root / "pipe.yaml")
    return [str(root)]


def link_to_dev_zero(tmp_path: Path) -> list[str]:
    target = inputs(tmp_path) / "zero.yaml"
    target.symlink_to("/dev/zero")  # reading it would never end
    return [str(target)]


def link_to_dev_zero_in_a_directory(tmp_path: Path) -> list[str]:
    root = inputs(tmp_path) / "clips"
    root.mkdir()
    (root / "zero.yaml").symlink_to("/dev/zero")
    return [str(root)]


def broken_link(tmp_path: Path) -> list[str]:
    target = inputs(tmp_path) / "gone.yaml"
    target.symlink_to("nowhere.yaml")
    return [str(target)]


NUMBER_STREAM_NAME = (BAD / "number-stream-name.yaml").read_bytes()
DEEP_FLOW = ("[" * 1000 + "]" * 1000 + "\n").encode()
DEEP_BLOCK = ("".join("  " * i + f"k{i}:\n" for i in range(1000)) + "  " * 1000 + "v\n").encode()
TO_TEXT = "must be text, not the number 2026 (put it in quotes to make it text)"
NOT_A_MAPPING = "a manifest must be a mapping with apiVersion, kind, metadata and spec"

BAD_INPUTS: dict[str, Case] = {
    "unterminated-quote": Case(
        from_fixture("unterminated-quote.yaml"),
        [
            (
                "",
                8,
                1,
                "",
                "invalid YAML: while scanning a quoted scalar (started at line 5, column 9)",
            )
        ],
    ),
    "bad-indentation": Case(
        from_fixture("bad-indentation.yaml"),
        [("", 6, 10, "", "invalid YAML: mapping values are not allowed")],
    ),
    "tab-indented": Case(
        from_fixture("tab-indented.yaml"),
        [("", 5, 1, "", "(YAML does not allow tabs for indentation; use spaces)")],
    ),
    "binary-nul-bytes": Case(
        from_bytes(b"apiVersion: reconciler/v1\nkind: \x00\x01\x02\x03\n"),
        [("", 2, 7, "", "binary file (it contains NUL bytes); a manifest must be YAML text")],
    ),
    "not-utf-8": Case(
        from_bytes(MINIMAL.replace("name: minimal", "name: caf\u00e9").encode("latin-1")),
        [("", 5, 12, "", "not UTF-8 text (byte 0xe9 is invalid here); save the file as UTF-8")],
    ),
    "utf-16": Case(
        from_bytes(MINIMAL.encode("utf-16")),
        [("", 1, 1, "", "UTF-16 text (as Windows PowerShell's > writes); save the file as UTF-8")],
    ),
    "crlf-with-a-mistake": Case(
        from_bytes(NUMBER_STREAM_NAME.replace(b"\n", b"\r\n")),
        [("", 9, 15, "spec.streamName", TO_TEXT)],
    ),
    "bom-and-crlf-with-a-mistake": Case(
        from_bytes(b"\xef\xbb\xbf" + NUMBER_STREAM_NAME.replace(b"\n", b"\r\n")),
        [("", 9, 15, "spec.streamName", TO_TEXT)],
    ),
    "empty-file": Case(
        from_fixture("empty.yaml"),
        [("", 1, 1, "", "file holds no manifest (it is empty or only comments)")],
    ),
    "comments-only": Case(
        from_fixture("comments-only.yaml"),
        [("", 1, 1, "", "file holds no manifest (it is empty or only comments)")],
    ),
    "list-document": Case(
        from_fixture("list-document.yaml"),
        [("", 2, 1, "", f"{NOT_A_MAPPING}; this document is a list")],
    ),
    "scalar-document": Case(
        from_fixture("scalar-document.yaml"),
        [("", 2, 1, "", f"{NOT_A_MAPPING}; this document is a single value ('just some text')")],
    ),
    "alias-bomb": Case(
        from_fixture("alias-bomb.yaml"),
        [("", 7, 8, "", "document holds more than 10000 values")],
    ),
    "recursive-alias": Case(
        from_fixture("recursive-alias.yaml"),
        [("", 6, 11, "metadata.labels", "alias *loop refers to a value that contains it")],
    ),
    "nesting-1000-flow": Case(
        from_bytes(DEEP_FLOW),
        [("", 1, 34, "", "nesting is too deep (a manifest needs at most 32)")],
    ),
    "nesting-1000-block": Case(
        from_bytes(DEEP_BLOCK),
        [("", 34, 67, "", "nesting is too deep (a manifest needs at most 32)")],
    ),
    "file-of-50-mb": Case(
        sparse_file,
        [("", 1, 1, "", "file is 50.0 MiB; manifest files over 5 MiB are refused")],
    ),
    "directory-symlink-loop": Case(
        symlink_loop, [("sub/again", 1, 1, "", "directory symlink loop: it leads back to")]
    ),
    "path-does-not-exist": Case(missing, [("", 1, 1, "", "no such file or directory")]),
    "fifo-named": Case(fifo, [("", 1, 1, "", "is a FIFO (named pipe), not a regular file")]),
    "fifo-in-a-directory": Case(
        fifo_in_a_directory,
        [("pipe.yaml", 1, 1, "", "is a FIFO (named pipe), not a regular file")],
    ),
    "link-to-dev-zero": Case(
        link_to_dev_zero,
        [("", 1, 1, "", "is a symbolic link to a character device (/dev/zero), not a regular")],
    ),
    "link-to-dev-zero-in-a-directory": Case(
        link_to_dev_zero_in_a_directory,
        [("zero.yaml", 1, 1, "", "is a symbolic link to a character device (/dev/zero)")],
    ),
    "broken-link": Case(
        broken_link,
        [("", 1, 1, "", "broken symbolic link (its target nowhere.yaml does not exist)")],
    ),
    "directory-with-no-manifests": Case(
        empty_directory,
        [
            (
                "",
                1,
                1,
                "",
                "directory holds no manifests (no .yaml or .yml files, hidden ones skipped)",
            )
        ],
    ),
    "duplicate-keys": Case(
        from_fixture("duplicate-keys.yaml"),
        [("", 13, 3, "spec.streamName", "duplicate key 'streamName' (first given on line 9)")],
    ),
    "number-stream-name": Case(
        from_fixture("number-stream-name.yaml"), [("", 9, 15, "spec.streamName", TO_TEXT)]
    ),
    "merge-key": Case(
        from_fixture("merge-key.yaml"),
        [("", 7, 3, "spec.<<", "YAML merge keys (<<) are not supported; write the fields out")],
    ),
    "binary-tag": Case(
        from_fixture("binary-tag.yaml"),
        [("", 9, 15, "spec.streamName", "unsupported YAML tag tag:yaml.org,2002:binary")],
    ),
    "custom-tag": Case(
        from_fixture("custom-tag.yaml"),
        [("", 9, 15, "spec.streamName", "unsupported YAML tag !custom")],
    ),
    "non-string-key": Case(
        from_fixture("non-string-key.yaml"),
        [("", 7, 5, "metadata.labels", "a key must be text (quote it if it looks like a number)")],
    ),
}


def expected_line(tmp_path: Path, args: list[str], problem: tuple[str, int, int, str, str]) -> str:
    relative, line, column, field_path, _ = problem
    file = os.path.join(args[0], relative) if relative else args[0]
    return f"{file}:{line}:{column}: " + (f"{field_path}: " if field_path else "")


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_a_located_message_and_exit_1(tmp_path: Path, case: Case) -> None:
    args = case.make(tmp_path)
    run = validate(tmp_path, *args)
    assert run.code == 1, run.stdout + run.stderr
    assert run.stderr == ""
    lines = run.problem_lines
    assert len(lines) == len(case.problems), lines
    for text, problem in zip(lines, case.problems, strict=True):
        assert text.startswith(expected_line(tmp_path, args, problem)), (text, problem)
        assert problem[4] in text, (text, problem)
    assert re.fullmatch(
        r"Checked \d+ manifests? in \d+ files?: \d+ problems? (in|with) .*", run.summary
    )
    assert run.seconds < 10, f"{run.seconds:.1f} s"  # a sanity bound: no hang, no expansion


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """What validating one small valid manifest costs (the interpreter and the imports)."""
    tmp_path = tmp_path_factory.mktemp("baseline")
    return measure_rss(tmp_path, write(tmp_path, "minimal.yaml", MINIMAL))


@pytest.mark.parametrize("name", ["alias-bomb", "nesting-1000-flow", "file-of-50-mb"])
def test_hostile_input_costs_little_memory(tmp_path: Path, baseline_rss: int, name: str) -> None:
    hostile = measure_rss(tmp_path, *BAD_INPUTS[name].make(tmp_path))
    assert hostile - baseline_rss < 50 * MiB, f"{(hostile - baseline_rss) / MiB:.1f} MiB more"


# --- inputs that look odd but are fine ----------------------------------------------------------


def minimal_named(name: str, minute: int) -> str:
    return MINIMAL.replace("name: minimal", f"name: {name}").replace("19:05", f"19:{minute:02}")


ACCEPTED: dict[str, Callable[[Path], list[str]]] = {
    "utf-8-bom": from_bytes(b"\xef\xbb\xbf" + MINIMAL.encode()),
    "crlf": from_bytes(MINIMAL.replace("\n", "\r\n").encode()),
    "bom-and-crlf": from_bytes(b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode()),
    "yes-no-on-off": from_fixture("accepted-yes-no-on-off.yaml"),
    "unquoted-timestamps": from_fixture("accepted-unquoted-timestamps.yaml"),
    "trailing-empty-document": from_fixture("accepted-trailing-empty-document.yaml"),
    "no-trailing-newline": from_bytes(MINIMAL.rstrip("\n").encode()),
    "explicit-end-markers": from_bytes(("---\n" + MINIMAL + "...\n").encode()),
}


@pytest.mark.parametrize("make", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_input_validates(tmp_path: Path, make: Callable[[Path], list[str]]) -> None:
    run = validate(tmp_path, *make(tmp_path))
    assert (run.code, run.stderr) == (0, ""), run.stdout + run.stderr
    assert run.summary.endswith(": all valid.")
    assert run.problem_lines == []


def test_hidden_and_ignored_files_are_skipped(tmp_path: Path) -> None:
    root = inputs(tmp_path)
    write(tmp_path, "keep.yaml", MINIMAL)
    write(tmp_path, ".hidden.yaml", "- broken\n")
    write(tmp_path, ".git/bad.yaml", "- broken\n")
    write(tmp_path, "invalid/bad.yaml", "- broken\n")
    write(tmp_path, "drafts/one.draft.yaml", "- broken\n")
    write(tmp_path, "drafts/two.yaml", minimal_named("two", 6))
    write(tmp_path, ".reconcilerignore", "invalid/\n*.draft.yaml\n")
    run = validate(tmp_path, "-v", str(root))
    assert run.code == 0, run.stdout
    assert [re.sub(r"\([0-9a-f]{12}\)$", "(HASH)", line) for line in run.problem_lines] == [
        f"ignored {root}/drafts/one.draft.yaml ({root}/.reconcilerignore:2: *.draft.yaml)",
        f"ignored {root}/invalid/ ({root}/.reconcilerignore:1: invalid/)",
        f"{root}/drafts/two.yaml:2:1: ok two (HASH)",
        f"{root}/keep.yaml:2:1: ok minimal (HASH)",
    ]
    assert run.summary == "Checked 2 manifests in 2 files: all valid."


def test_problems_from_several_files_are_all_reported(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", MINIMAL)
    bad = fixture(tmp_path, "number-stream-name.yaml")
    gone = str(inputs(tmp_path) / "gone.yaml")
    run = validate(tmp_path, good, bad, gone)
    assert run.code == 1
    assert [line.split(": ", 1)[0] for line in run.problem_lines] == [f"{gone}:1:1", f"{bad}:9:15"]
    assert run.summary == (
        "Checked 2 manifests in 2 files: 1 problem in 1 file and 1 problem with 1 other path; "
        "1 of 2 manifests valid."
    )


def summary_of(tmp_path: Path, *entries: tuple[str, str | None]) -> str:
    """validate_summary for files written under inputs/ (content None: the path is missing)."""
    from reconciler.report import validate_summary
    from reconciler.tasks import load_tasks

    paths = []
    for name, content in entries:
        paths.append(
            str(inputs(tmp_path) / name) if content is None else write(tmp_path, name, content)
        )
    return validate_summary(load_tasks(paths))


GOOD = MINIMAL
GOOD_2 = minimal_named("second", 7)
BAD_ONE = (BAD / "number-stream-name.yaml").read_text()
BAD_TWO = minimal_named("bad-two", 8).replace("streamName: match", "streamName: 2026")
TWO_PROBLEMS = MINIMAL.replace("streamName: match", "streamName: 7").replace(
    "saveBucket: highlights", "saveBucket: X"
)
SUMMARIES: dict[str, tuple[list[tuple[str, str | None]], str]] = {
    "one valid": ([("a.yaml", GOOD)], "Checked 1 manifest in 1 file: all valid."),
    "all valid": (
        [("a.yaml", GOOD), ("b.yaml", GOOD_2)],
        "Checked 2 manifests in 2 files: all valid.",
    ),
    "a problem in one of two files": (
        [("a.yaml", GOOD), ("b.yaml", BAD_ONE)],
        "Checked 2 manifests in 2 files: 1 problem in 1 file; 1 of 2 manifests valid.",
    ),
    "two problems in one file": (
        [("a.yaml", TWO_PROBLEMS)],
        "Checked 1 manifest in 1 file: 2 problems in 1 file; 0 of 1 manifest valid.",
    ),
    "every manifest invalid": (
        [("a.yaml", BAD_ONE), ("b.yaml", BAD_TWO)],
        "Checked 2 manifests in 2 files: 2 problems in 2 files; 0 of 2 manifests valid.",
    ),
    "a file with no manifest in it": (
        [("empty.yaml", "")],
        "Checked 0 manifests in 1 file: 1 problem in 1 file.",
    ),
    "one missing path": (
        [("gone.yaml", None)],
        "Checked 0 manifests in 0 files: 1 problem with 1 path.",
    ),
    "nothing but missing paths": (
        [("gone.yaml", None), ("lost/", None)],
        "Checked 0 manifests in 0 files: 2 problems with 2 paths.",
    ),
    "valid files and a missing path": (
        [("a.yaml", GOOD), ("gone.yaml", None)],
        "Checked 1 manifest in 1 file: 1 problem with 1 other path; 1 of 1 manifest valid.",
    ),
    "a problem in a file and a missing path": (
        [("a.yaml", BAD_ONE), ("gone.yaml", None), ("lost.yaml", None)],
        "Checked 1 manifest in 1 file: 1 problem in 1 file and 2 problems with 2 other paths; "
        "0 of 1 manifest valid.",
    ),
}


@pytest.mark.parametrize(("entries", "expected"), SUMMARIES.values(), ids=SUMMARIES.keys())
def test_summary_counts_agree(
    tmp_path: Path, entries: list[tuple[str, str | None]], expected: str
) -> None:
    assert summary_of(tmp_path, *entries) == expected


def test_summary_counts_an_ignore_file_as_another_path(tmp_path: Path) -> None:
    write(tmp_path, "clips/a.yaml", GOOD)
    write(tmp_path, "clips/.reconcilerignore", "!\nok/\nx\\\n")
    from reconciler.report import validate_summary
    from reconciler.tasks import load_tasks

    assert validate_summary(load_tasks([str(inputs(tmp_path) / "clips")])) == (
        "Checked 1 manifest in 1 file: 2 problems with 1 other path; 1 of 1 manifest valid."
    )


def test_nothing_but_special_files_says_what_they_are(tmp_path: Path) -> None:
    run = validate(tmp_path, *fifo(tmp_path), *link_to_dev_zero(tmp_path))
    assert run.code == 1
    assert [line.split(": ", 1)[1] for line in run.problem_lines] == [
        "is a FIFO (named pipe), not a regular file; not read",
        "is a symbolic link to a character device (/dev/zero), not a regular file; not read",
    ]
    assert run.summary == "Checked 0 manifests in 0 files: 2 problems with 2 paths."


# --- the other output formats -------------------------------------------------------------------


def test_json_output_for_a_bad_file(tmp_path: Path) -> None:
    bad = fixture(tmp_path, "duplicate-keys.yaml")
    unreadable = write(tmp_path, "binary.yaml", b"\x00\x01")
    run = validate(tmp_path, "--format", "json", bad, unreadable)
    assert run.code == 1
    report = json.loads(run.stdout)
    assert report["valid"] is False
    assert report["summary"] == {"files": 2, "manifests": 0, "invalidManifests": 0, "problems": 2}
    assert report["problems"] == [
        {
            "file": unreadable,
            "line": 1,
            "column": 1,
            "field": "",
            "message": "binary file (it contains NUL bytes); a manifest must be YAML text",
        },
        {
            "file": bad,
            "line": 13,
            "column": 3,
            "field": "spec.streamName",
            "message": "duplicate key 'streamName' (first given on line 9); a key may appear once",
        },
    ]


def test_json_output_for_a_schema_problem(tmp_path: Path) -> None:
    bad = fixture(tmp_path, "number-stream-name.yaml")
    report = json.loads(validate(tmp_path, "-f", "json", bad).stdout)
    assert report["problems"] == [
        {"file": bad, "line": 9, "column": 15, "field": "spec.streamName", "message": TO_TEXT}
    ]
    assert report["manifests"] == [
        {
            "file": bad,
            "line": 2,
            "column": 1,
            "name": "number-stream-name",
            "hash": None,
            "valid": False,
        }
    ]


ANNOTATION = re.compile(
    r"::error file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+)(,title=[^:]*)?::(?P<message>.*)"
)


def test_github_output_for_a_bad_file(tmp_path: Path) -> None:
    bad = fixture(tmp_path, "merge-key.yaml")
    missing_path = str(inputs(tmp_path) / "missing.yaml")
    run = validate(tmp_path, "--format", "github", bad, missing_path)
    assert run.code == 1
    annotations = [ANNOTATION.fullmatch(line) for line in run.problem_lines]
    assert all(annotations), run.stdout
    assert [(a["file"], a["line"], a["col"], a["message"]) for a in annotations if a] == [
        (bad, "7", "3", "spec.<<: YAML merge keys (<<) are not supported; write the fields out"),
        (missing_path, "1", "1", "no such file or directory"),
    ]
    assert run.summary == (
        "Checked 0 manifests in 1 file: 1 problem in 1 file and 1 problem with 1 other path."
    )


def test_github_output_escapes_percent_signs(tmp_path: Path) -> None:
    bad = write(tmp_path, "m.yaml", MINIMAL.replace("streamName: match", "streamName: 100%"))
    run = validate(tmp_path, "--format", "github", bad)
    assert run.code == 1
    (line,) = run.problem_lines
    match = ANNOTATION.fullmatch(line)
    assert match, line
    assert (match["line"], match["col"]) == ("9", "15")
    # GitHub decodes %25 back to '%'; a bare '%' could start another escape.
    assert match["message"].startswith(
        "spec.streamName: '100%25' must be a single URL path segment"
    )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for args in ([], ["--format", "yaml", str(BAD / "valid-base.yaml")], ["--no-such-option", "."]):
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "validate", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
    assert list(cwd.iterdir()) == []


# --- bugs found and fixed: these stay as regression tests ------------------------------------------


@pytest.mark.parametrize("char", ["\x07", "\x1b", "\x7f", "\x0c"], ids=["BEL", "ESC", "DEL", "FF"])
def test_control_character(tmp_path: Path, char: str) -> None:
    bad = write(tmp_path, "m.yaml", MINIMAL.replace("appName: live", f"appName: li{char}ve"))
    run = validate(tmp_path, bad)
    assert run.code == 1
    (line,) = run.problem_lines
    assert line.startswith(f"{bad}:8:14: invalid YAML:")


def test_custom_tag_on_a_mapping(tmp_path: Path) -> None:
    run = validate(tmp_path, fixture(tmp_path, "custom-tag-on-mapping.yaml"))
    assert run.code == 1
    (line,) = run.problem_lines
    assert "unsupported YAML tag !custom" in line


@pytest.mark.parametrize("value", [".inf", ".NaN", "1" * 5000])
def test_plain_value_that_looks_like_a_number(tmp_path: Path, value: str) -> None:
    bad = write(tmp_path, "m.yaml", MINIMAL.replace("streamName: match", f"streamName: {value}"))
    run = validate(tmp_path, bad)
    assert run.code == 1
    (line,) = run.problem_lines
    assert line.startswith(f"{bad}:9:15: spec.streamName: ")
    assert "quotes" in line
    assert "tag" not in line


def test_device_is_not_called_a_broken_symlink(tmp_path: Path) -> None:
    run = validate(tmp_path, os.devnull)
    assert run.code == 1
    (line,) = run.problem_lines
    assert line.startswith(f"{os.devnull}:1:1: ")
    assert "symbolic link" not in line


def test_a_file_reached_twice_is_not_its_own_duplicate(tmp_path: Path) -> None:
    manifest = write(tmp_path, "m.yaml", MINIMAL)
    run = validate(tmp_path, manifest, str(inputs(tmp_path)))
    for line in run.problem_lines:
        where = line.split(": ", 1)[0]
        assert where not in line.split(": ", 1)[1], f"a manifest clashes with itself: {line}"
