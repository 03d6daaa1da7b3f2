"""manifests.py: finding files, reading YAML safely, and remembering where each value came from."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import manifests
from reconciler.manifests import (
    MAX_FILE_BYTES,
    FileResult,
    Manifest,
    find_manifest_files,
    load_file,
    load_manifests,
)
from reconciler.problems import Location

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad-input"
MINIMAL = (BAD / "valid-base.yaml").read_text(encoding="utf-8")


def write(tmp_path: Path, content: str | bytes, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def only_problem(result: FileResult) -> tuple[int, int, str, str]:
    """(line, column, field, message) of the one problem a file is expected to have."""
    assert result.manifests == [], result.manifests
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert problem.file == result.file
    return problem.line, problem.column, problem.field, problem.message


def only_manifest(result: FileResult) -> Manifest:
    assert result.problems == [], [str(p) for p in result.problems]
    assert len(result.manifests) == 1
    return result.manifests[0]


# --- positions ----------------------------------------------------------------------------------


CLIP = """\
# A comment, then the document.
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: clip
  labels:
    kind: goal
spec:
  streamName: cup-final
  recordTimes:
    - startTime: "2026-11-20T19:11:40Z"
      endTime: 2026-11-20T19:13:10Z
    - {startTime: '2026-11-20T19:20:00Z', endTime: "2026-11-20T19:21:00Z"}
"""


@pytest.fixture
def clip(tmp_path: Path) -> Manifest:
    return only_manifest(load_file(write(tmp_path, CLIP)))


def test_positions_of_values_and_keys_in_block_style(clip: Manifest) -> None:
    file = clip.file
    assert clip.location == Location(file, 2, 1)  # the document starts after the comment
    assert clip.where(("spec", "streamName")) == Location(file, 9, 15)
    assert clip.where(("spec", "streamName"), key=True) == Location(file, 9, 3)
    assert clip.where(("spec",)) == Location(file, 9, 3)  # a mapping value starts below its key
    assert clip.where(("spec",), key=True) == Location(file, 8, 1)
    assert clip.where(("metadata", "labels", "kind")) == Location(file, 7, 11)
    assert clip.where(("metadata", "labels", "kind"), key=True) == Location(file, 7, 5)
    assert clip.where(("spec", "recordTimes")) == Location(file, 11, 5)  # the first "-"
    # A list item starts at its first key (after "- "); its fields where they are written.
    assert clip.where(("spec", "recordTimes", 0)) == Location(file, 11, 7)
    assert clip.where(("spec", "recordTimes", 0, "startTime")) == Location(file, 11, 18)
    assert clip.where(("spec", "recordTimes", 0, "endTime"), key=True) == Location(file, 12, 7)
    assert clip.where(("spec", "recordTimes", 0, "endTime")) == Location(file, 12, 16)


def test_positions_in_flow_style(clip: Manifest) -> None:
    file = clip.file
    assert clip.where(("spec", "recordTimes", 1)) == Location(file, 13, 7)
    assert clip.where(("spec", "recordTimes", 1, "startTime"), key=True) == Location(file, 13, 8)
    assert clip.where(("spec", "recordTimes", 1, "startTime")) == Location(file, 13, 19)
    assert clip.where(("spec", "recordTimes", 1, "endTime"), key=True) == Location(file, 13, 43)
    assert clip.where(("spec", "recordTimes", 1, "endTime")) == Location(file, 13, 52)


def test_position_of_a_missing_field_is_its_nearest_ancestor(clip: Manifest) -> None:
    file = clip.file
    assert clip.where(("spec", "saveObject"), key=True) == Location(file, 8, 1)
    assert clip.where(("spec", "saveObject")) == Location(file, 9, 3)
    assert clip.where(("spec", "recordTimes", 5, "endTime")) == Location(file, 11, 5)
    assert clip.where(()) == clip.location
    assert clip.where(("nowhere", "at", "all")) == clip.location


def test_problem_carries_position_and_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    manifest = only_manifest(load_file(path))
    problem = manifest.problem(("spec", "recordTimes", 0, "endTime"), "is wrong")
    assert str(problem) == f"{path}:12:16: spec.recordTimes[0].endTime: is wrong"
    assert manifest.problem(("spec", "recordTimes"), "x", key=True).location == Location(
        path, 10, 3
    )


# --- what YAML values become --------------------------------------------------------------------


def test_unquoted_timestamps_stay_the_literal_text() -> None:
    manifest = only_manifest(load_file(str(BAD / "accepted-unquoted-timestamps.yaml")))
    times = manifest.doc["spec"]["recordTimes"]
    assert times == [
        {"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:05:00Z"},
        {"startTime": "2026-11-20T19:10:00Z", "endTime": "2026-11-20T19:15:00Z"},
        {"startTime": "2026-11-21T03:20:00+08:00", "endTime": "2026-11-21T03:25:00+08:00"},
    ]


def test_yes_no_on_off_stay_text() -> None:
    manifest = only_manifest(load_file(str(BAD / "accepted-yes-no-on-off.yaml")))
    assert manifest.doc["spec"]["appName"] == "yes"
    assert manifest.doc["spec"]["streamName"] == "off"
    assert manifest.doc["spec"]["taskExternalId"] == "on"
    assert manifest.doc["metadata"]["labels"] == {"live": "yes", "replay": "no"}


@pytest.mark.parametrize(
    ("written", "value"),
    [
        # YAML 1.1 turns these into booleans, dates, sexagesimal or underscored numbers; not here.
        ("yes", "yes"),
        ("No", "No"),
        ("ON", "ON"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("2026-11-20", "2026-11-20"),
        ("2026-11-20 19:00:00", "2026-11-20 19:00:00"),
        ("19:00:00", "19:00:00"),
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("nUll", "nUll"),
        ("'2026'", "2026"),
        ('"true"', "true"),
        ("!!str 2026", "2026"),
        # The YAML 1.2 core schema: null, booleans and numbers are still what they look like.
        ("", None),
        ("~", None),
        ("null", None),
        ("true", True),
        ("False", False),
        ("2026", 2026),
        ("-7", -7),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("!!int '12'", 12),
    ],
)
def test_scalar_values(tmp_path: Path, written: str, value: object) -> None:
    manifest = only_manifest(load_file(write(tmp_path, f"value: {written}\n")))
    assert manifest.doc == {"value": value}
    assert type(manifest.doc["value"]) is type(value)


def test_special_floats(tmp_path: Path) -> None:
    manifest = only_manifest(load_file(write(tmp_path, "a: .inf\nb: -.Inf\nc: .nan\n")))
    assert manifest.doc["a"] == float("inf")
    assert manifest.doc["b"] == float("-inf")
    assert manifest.doc["c"] != manifest.doc["c"]


# --- documents ----------------------------------------------------------------------------------


def test_several_documents_with_an_empty_trailing_one() -> None:
    path = str(BAD / "accepted-trailing-empty-document.yaml")
    result = load_file(path)
    assert result.problems == []
    assert [m.doc["metadata"]["name"] for m in result.manifests] == [
        "accepted-trailing-empty-1",
        "accepted-trailing-empty-2",
    ]
    assert [m.index for m in result.manifests] == [0, 1]
    assert [m.location for m in result.manifests] == [Location(path, 3, 1), Location(path, 18, 1)]
    second = result.manifests[1]
    assert second.where(("metadata", "name")) == Location(path, 21, 9)


def test_empty_documents_in_the_middle_keep_their_index(tmp_path: Path) -> None:
    result = load_file(write(tmp_path, "a: 1\n---\n---\n# nothing\n---\nb: 2\n---\n"))
    assert result.problems == []
    assert [(m.doc, m.index, m.location.line) for m in result.manifests] == [
        ({"a": 1}, 0, 1),
        ({"b": 2}, 3, 6),
    ]


def test_a_problem_in_one_document_keeps_the_others(tmp_path: Path) -> None:
    result = load_file(write(tmp_path, "a: 1\n---\n- a list\n---\nb: 2\n"))
    assert [m.doc for m in result.manifests] == [{"a": 1}, {"b": 2}]
    assert [(p.line, p.column) for p in result.problems] == [(3, 1)]
    assert "this document is a list" in result.problems[0].message


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("empty.yaml", "file holds no manifest (it is empty or only comments)"),
        ("comments-only.yaml", "file holds no manifest (it is empty or only comments)"),
        ("list-document.yaml", "this document is a list"),
        ("scalar-document.yaml", "this document is a single value ('just some text')"),
    ],
)
def test_files_that_hold_no_manifest(fixture: str, message: str) -> None:
    line, column, field, text = only_problem(load_file(str(BAD / fixture)))
    assert message in text
    assert field == ""
    if fixture.endswith("document.yaml"):
        assert (line, column) == (2, 1)  # where the document starts, after the comment
        assert "a manifest must be a mapping with apiVersion, kind, metadata and spec" in text


@pytest.mark.parametrize("text", ["---\n", "---\n...\n", "null\n", "~\n", "\n\n   \n"])
def test_only_empty_documents_is_no_manifest(tmp_path: Path, text: str) -> None:
    _, _, _, message = only_problem(load_file(write(tmp_path, text)))
    assert message.startswith("file holds no manifest")


# --- YAML features that are refused -------------------------------------------------------------


def test_duplicate_key_is_reported_at_the_second_naming_the_first() -> None:
    line, column, field, message = only_problem(load_file(str(BAD / "duplicate-keys.yaml")))
    assert (line, column, field) == (13, 3, "spec.streamName")
    assert message == "duplicate key 'streamName' (first given on line 9); a key may appear once"


@pytest.mark.parametrize(
    ("text", "where", "field", "first_line"),
    [
        ("a: {x: 1, y: 2, x: 3}\n", (1, 17), "a.x", 1),
        ("top:\n  nested:\n    k: 1\n    j: 2\n\n    k: 3\n", (6, 5), "top.nested.k", 3),
        ("list:\n  - k: 1\n    k: 2\n", (3, 5), "list[0].k", 2),
        ("'a': 1\n\"a\": 2\n", (2, 1), "a", 1),  # quoting a key does not make it another key
    ],
)
def test_duplicate_keys_anywhere(
    tmp_path: Path, text: str, where: tuple[int, int], field: str, first_line: int
) -> None:
    line, column, found_field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column) == where
    assert found_field == field
    assert f"(first given on line {first_line})" in message


def test_merge_key_is_refused() -> None:
    line, column, field, message = only_problem(load_file(str(BAD / "merge-key.yaml")))
    assert (line, column, field) == (7, 3, "spec.<<")
    assert "merge keys (<<) are not supported" in message


def test_merge_key_with_alias_is_refused(tmp_path: Path) -> None:
    text = "base: &base {appName: live}\nspec:\n  <<: *base\n  streamName: x\n"
    line, column, field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column, field) == (3, 3, "spec.<<")
    assert "merge keys" in message


@pytest.mark.parametrize(
    ("text", "where", "field"),
    [
        ("2026: a\n", (1, 1), ""),
        ("a:\n  true: x\n", (2, 3), "a"),
        ("a:\n  null: x\n", (2, 3), "a"),
        ("a:\n  1.5: x\n", (2, 3), "a"),
        ("? [a, b]\n: c\n", (1, 3), ""),
        ("{? {a: 1} : c}\n", (1, 4), ""),
    ],
)
def test_keys_that_are_not_text_are_refused(
    tmp_path: Path, text: str, where: tuple[int, int], field: str
) -> None:
    line, column, found_field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column, found_field) == (*where, field)
    assert message.startswith("a key must be text")


def test_quoted_number_key_is_text(tmp_path: Path) -> None:
    assert only_manifest(load_file(write(tmp_path, "'2026': a\n"))).doc == {"2026": "a"}


@pytest.mark.parametrize(
    ("fixture", "tag"),
    [("binary-tag.yaml", "tag:yaml.org,2002:binary"), ("custom-tag.yaml", "!custom")],
)
def test_explicit_tags_on_values_are_refused(fixture: str, tag: str) -> None:
    line, column, field, message = only_problem(load_file(str(BAD / fixture)))
    assert (line, column, field) == (9, 15, "spec.streamName")
    assert f"unsupported YAML tag {tag}" in message


@pytest.mark.parametrize(
    "text",
    [
        "a: !!timestamp 2026-11-20T19:00:00Z\n",
        "a: !!float x\n",
        "a: !!int 1.5\n",
        "a: !!python/name:os.system ''\n",
        "a: !<tag:example.com,2026:x> y\n",
    ],
)
def test_other_explicit_scalar_tags_are_refused(tmp_path: Path, text: str) -> None:
    line, column, field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column, field) == (1, 4, "a")
    assert message.startswith("unsupported YAML tag")


@pytest.mark.parametrize(
    "text",
    [
        "a: !custom {b: c}\n",
        "a: !custom\n  b: c\n",
        "a: !!set {b: null}\n",
        "a: !!omap [b: c]\n",
        "a: !custom [b]\n",
    ],
)
def test_explicit_tags_on_collections_are_refused(tmp_path: Path, text: str) -> None:
    line, column, field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column, field) == (1, 4, "a")
    assert message.startswith("unsupported YAML tag")


# --- malformed and hostile input ----------------------------------------------------------------


def test_unterminated_quote() -> None:
    line, column, field, message = only_problem(load_file(str(BAD / "unterminated-quote.yaml")))
    assert (line, column, field) == (8, 1, "")  # where the file ends, still inside the quote
    assert message.startswith("invalid YAML:")
    assert "quoted scalar (started at line 5, column 9)" in message


def test_bad_indentation() -> None:
    line, column, _, message = only_problem(load_file(str(BAD / "bad-indentation.yaml")))
    assert (line, column) == (6, 10)
    assert message.startswith("invalid YAML: mapping values are not allowed")


def test_tab_indentation_says_tabs_are_not_allowed() -> None:
    line, column, _, message = only_problem(load_file(str(BAD / "tab-indented.yaml")))
    assert (line, column) == (5, 1)
    assert "YAML does not allow tabs for indentation; use spaces" in message


@pytest.mark.parametrize("char", ["\x07", "\x1b", "\x7f", "\x0c"])
def test_control_character_is_invalid_yaml(tmp_path: Path, char: str) -> None:
    line, column, field, message = only_problem(load_file(write(tmp_path, f"a: 1\nb: x{char}y\n")))
    assert (line, column, field) == (2, 5, "")
    assert message.startswith("invalid YAML:")


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + MINIMAL.encode())
    manifest = only_manifest(load_file(path))
    assert "apiVersion" in manifest.doc  # not "\ufeffapiVersion"
    assert manifest.where(("apiVersion",), key=True) == Location(path, 2, 1)
    assert manifest.where(("spec", "streamName")) == Location(path, 9, 15)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_crlf_line_endings_are_accepted_and_positions_stay_right(
    tmp_path: Path, bom: bytes
) -> None:
    path = write(tmp_path, bom + MINIMAL.replace("\n", "\r\n").encode())
    manifest = only_manifest(load_file(path))
    assert manifest.doc == only_manifest(load_file(write(tmp_path, MINIMAL, "lf.yaml"))).doc
    assert manifest.doc["spec"]["streamName"] == "match"  # no stray "\r"
    assert manifest.where(("spec", "streamName")) == Location(path, 9, 15)
    assert manifest.where(("spec", "recordTimes", 0, "endTime")) == Location(path, 12, 16)


def test_crlf_positions_of_a_yaml_error(tmp_path: Path) -> None:
    text = 'a: 1\r\nb: 2\r\nc: "open\r\n'
    line, _, _, message = only_problem(load_file(write(tmp_path, text)))
    assert line == 4
    assert "started at line 3, column 4" in message


def test_nul_bytes_mean_a_binary_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"apiVersion: reconciler/v1\nkind: Rec\x00ordTask\n")
    line, column, field, message = only_problem(load_file(path))
    assert (line, column, field) == (2, 10, "")
    assert message == "binary file (it contains NUL bytes); a manifest must be YAML text"


def test_a_picture_is_a_binary_file(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    _, _, _, message = only_problem(load_file(write(tmp_path, png, "photo.yaml")))
    assert message.startswith("binary file")


def test_latin_1_text_points_at_the_bad_byte(tmp_path: Path) -> None:
    text = "apiVersion: reconciler/v1\nmetadata:\n  name: café\n".encode("latin-1")
    line, column, field, message = only_problem(load_file(write(tmp_path, text)))
    assert (line, column, field) == (3, 12, "")
    assert message == "not UTF-8 text (byte 0xe9 is invalid here); save the file as UTF-8"


def test_bad_byte_column_counts_characters(tmp_path: Path) -> None:
    data = "labels: {球赛: x}\n".encode() + "name: 决赛 ".encode() + b"\xe9\n"
    line, column, _, _ = only_problem(load_file(write(tmp_path, data)))
    assert (line, column) == (2, 10)  # 'n','a','m','e',':',' ','决','赛',' ', then the byte


def test_alias_bomb_is_refused_quickly_in_little_memory() -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = load_file(str(BAD / "alias-bomb.yaml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    line, _, _, message = only_problem(result)
    assert message.startswith("document holds more than 10000 values")
    assert line >= 3  # somewhere in the aliases, not a made-up position
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1048576:.1f} MiB"
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_aliases_within_the_budget_are_followed(tmp_path: Path) -> None:
    text = "times: &t {startTime: a, endTime: b}\nlist: [*t, *t]\n"
    manifest = only_manifest(load_file(write(tmp_path, text)))
    assert manifest.doc["list"] == [{"startTime": "a", "endTime": "b"}] * 2


def test_recursive_alias_is_refused() -> None:
    _, _, _, message = only_problem(load_file(str(BAD / "recursive-alias.yaml")))
    assert message.startswith("alias *loop refers to a value that contains it")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1000 + "]" * 1000 + "\n",
        "{a: " * 1000 + "b" + "}" * 1000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(1000)) + "  " * 1000 + "leaf\n",
        "".join("  " * i + "- \n" for i in range(1000)) + "  " * 1000 + "leaf\n",
    ],
    ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"],
)
def test_nesting_1000_deep_is_refused(tmp_path: Path, text: str) -> None:
    started = time.perf_counter()
    result = load_file(write(tmp_path, text))
    assert time.perf_counter() - started < 5
    assert result.manifests == []
    assert len(result.problems) == 1
    assert "nesting" in result.problems[0].message


def test_nesting_a_manifest_needs_is_fine(tmp_path: Path) -> None:
    text = "a: " + "[" * 20 + "x" + "]" * 20 + "\n"
    value = only_manifest(load_file(write(tmp_path, text))).doc["a"]
    for _ in range(20):
        (value,) = value
    assert value == "x"


def test_big_file_is_refused_by_size_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: instant, takes no disk

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(manifests, "open", no_reading, raising=False)
    line, column, field, message = only_problem(load_file(str(path)))
    assert (line, column, field) == (1, 1, "")
    assert message == "file is 50.0 MiB; manifest files over 5 MiB are refused"


def test_size_limit_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "at-limit.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES)
    _, _, _, message = only_problem(load_file(str(path)))
    assert message.startswith("binary file")  # read (and found to be NULs), not refused by size
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    _, _, _, message = only_problem(load_file(str(path)))
    assert "over 5 MiB are refused" in message


@pytest.mark.slow
def test_wide_document_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    def peak_memory(values: int) -> int:
        path = write(tmp_path, "[" + "a," * (values - 1) + "a]\n", f"wide-{values}.yaml")
        tracemalloc.start()
        try:
            result = load_file(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        _, _, _, message = only_problem(result)
        assert "more than 10000 values" in message
        return peak

    # Both are over the 10,000-value budget; refusing the wider one should cost no more.
    narrow, wide = peak_memory(11_000), peak_memory(33_000)
    assert wide < 1.5 * narrow, f"{narrow / 1048576:.1f} MiB, then {wide / 1048576:.1f} MiB"


# --- finding files ------------------------------------------------------------------------------


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a: 1\n")


def found(root: Path, *paths: str) -> list[str]:
    files, problems = find_manifest_files([str(root / path) for path in paths] or [str(root)])
    assert problems == [], [str(p) for p in problems]
    return [os.path.relpath(file, root) for file in files]


def test_walk_is_recursive_and_sorted(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "b.yaml",
        "a/z.yml",
        "a/b/c.yaml",
        "A.yaml",
        "a.yaml",
        "a-b.yaml",
        "10.yaml",
        "9.yaml",
    )
    assert found(tmp_path) == [
        "10.yaml",
        "9.yaml",
        "A.yaml",
        "a/b/c.yaml",
        "a/z.yml",
        "a-b.yaml",
        "a.yaml",
        "b.yaml",
    ]


def test_walk_takes_only_yaml_files(tmp_path: Path) -> None:
    touch(tmp_path, "m.yaml", "m.yml", "m.json", "m.txt", "m.yaml.bak", "yaml", "README.md")
    assert found(tmp_path) == ["m.yaml", "m.yml"]


def test_paths_keep_the_order_given_and_a_file_is_taken_whatever_its_name(tmp_path: Path) -> None:
    touch(tmp_path, "z/m.yaml", "a/m.yaml", "notes.txt")
    assert found(tmp_path, "z", "a", "notes.txt") == ["z/m.yaml", "a/m.yaml", "notes.txt"]


def test_hidden_files_and_directories_are_skipped(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "visible.yaml",
        ".hidden.yaml",
        ".git/config.yaml",
        ".github/workflows/ci.yml",
        "sub/.draft.yaml",
        "sub/kept.yaml",
    )
    assert found(tmp_path) == ["sub/kept.yaml", "visible.yaml"]


def test_hidden_paths_given_by_name_are_read(tmp_path: Path) -> None:
    touch(tmp_path, ".manifests/m.yaml", ".manifests/.skip.yaml", ".one.yaml")
    assert found(tmp_path, ".manifests", ".one.yaml") == [".manifests/m.yaml", ".one.yaml"]


def test_reconcilerignore_patterns(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "keep.yaml",
        "drafts/a.yaml",
        "nested/drafts/b.yaml",  # `drafts/` matches a directory at any depth
        "drafts.yaml",  # a file is not matched by a `dir/` pattern
        "x.draft.yaml",
        "nested/y.draft.yaml",  # a glob without '/' matches names at any depth
        "sub/skip-1.yaml",
        "sub/keep-1.yaml",
        "other/sub/skip-2.yaml",  # a pattern with '/' is relative to the ignore file
        "deep/er/gone.yaml",
        "named.yml",
    )
    (tmp_path / ".reconcilerignore").write_text(
        "# comments and blank lines are fine\n\ndrafts/\n*.draft.yaml\nsub/skip-*.yaml\n"
        "deep/er/  \nnamed.yml\n"
    )
    assert found(tmp_path) == [
        "drafts.yaml",
        "keep.yaml",
        "other/sub/skip-2.yaml",
        "sub/keep-1.yaml",
    ]


def test_nested_reconcilerignore_applies_below_its_directory(tmp_path: Path) -> None:
    touch(tmp_path, "top.yaml", "a/skip.yaml", "a/b/skip.yaml", "a/b/keep.yaml", "c/b/keep.yaml")
    (tmp_path / "a" / ".reconcilerignore").write_text("skip.yaml\n")
    (tmp_path / "c" / ".reconcilerignore").write_text("b/keep.yaml\n")
    (tmp_path / "a" / "b" / ".reconcilerignore").write_text("keep.yaml\n")
    assert found(tmp_path) == ["top.yaml"]
    (tmp_path / "a" / "b" / ".reconcilerignore").unlink()
    assert found(tmp_path) == ["a/b/keep.yaml", "top.yaml"]


def test_examples_reconcilerignore_leaves_out_the_invalid_ones() -> None:
    manifests_found, problems = load_manifests([str(ROOT / "examples")])
    assert problems == []
    assert {Path(m.file).parent.name for m in manifests_found} == {"cup-final"}


def test_directory_symlink_loop_is_reported_not_followed(tmp_path: Path) -> None:
    touch(tmp_path, "root/sub/m.yaml")
    (tmp_path / "root" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "root" / "sub" / "self").symlink_to(".", target_is_directory=True)
    started = time.perf_counter()
    files, problems = find_manifest_files([str(tmp_path / "root")])
    assert time.perf_counter() - started < 5
    assert files == [str(tmp_path / "root" / "sub" / "m.yaml")]
    assert sorted((p.file, p.line, p.column) for p in problems) == [
        (str(tmp_path / "root" / "sub" / "self"), 1, 1),
        (str(tmp_path / "root" / "sub" / "up"), 1, 1),
    ]
    assert all(p.message.startswith("directory symlink loop") for p in problems)


def test_symlinked_directory_that_is_no_loop_is_followed(tmp_path: Path) -> None:
    touch(tmp_path, "real/m.yaml")
    (tmp_path / "walk").mkdir()
    (tmp_path / "walk" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    assert found(tmp_path, "walk") == ["walk/linked/m.yaml"]


def test_broken_symlink_to_a_manifest_is_reported(tmp_path: Path) -> None:
    touch(tmp_path, "m.yaml")
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "gone-dir").symlink_to(tmp_path / "nowhere")  # not a manifest name: ignored
    files, problems = find_manifest_files([str(tmp_path)])
    assert files == [str(tmp_path / "m.yaml")]
    assert [(p.file, p.message) for p in problems] == [
        (
            str(tmp_path / "gone.yaml"),
            f"broken symbolic link (its target {tmp_path / 'nowhere.yaml'} does not exist)",
        )
    ]


# --- what is not a regular file: said what it is, never opened ----------------------------------


@pytest.fixture
def never_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths manifests.py opens; opening a FIFO would block the test instead of failing it."""
    opened: list[str] = []
    real_open = open

    def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AssertionError(f"opened {path}, which is not a regular file")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(manifests, "open", guarded, raising=False)
    return opened


def special_files(root: Path) -> dict[str, str]:
    """A FIFO, a socket, links to /dev/zero and to nowhere, a link loop; each with its message."""
    root.mkdir(exist_ok=True)
    os.mkfifo(root / "pipe.yaml")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.yaml"))
    server.close()
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "gone.yaml").symlink_to("nowhere.yaml")
    (root / "loop-a.yaml").symlink_to("loop-b.yaml")
    (root / "loop-b.yaml").symlink_to("loop-a.yaml")
    return {
        "gone.yaml": "broken symbolic link (its target nowhere.yaml does not exist)",
        "loop-a.yaml": "symbolic link loop (the links lead back to each other); not read",
        "loop-b.yaml": "symbolic link loop (the links lead back to each other); not read",
        "pipe.yaml": "is a FIFO (named pipe), not a regular file; not read",
        "sock.yaml": "is a socket, not a regular file; not read",
        "zero.yaml": (
            "is a symbolic link to a character device (/dev/zero), not a regular file; not read"
        ),
    }


def test_special_files_in_a_walk_are_problems_saying_what_they_are(
    tmp_path: Path, never_opened: list[str]
) -> None:
    expected = special_files(tmp_path / "root")
    touch(tmp_path / "root", "m.yaml", "notes.txt")
    os.mkfifo(tmp_path / "root" / "pipe.txt")  # not a manifest name: left alone, as notes.txt
    files, problems = find_manifest_files([str(tmp_path / "root")])
    assert files == [str(tmp_path / "root" / "m.yaml")]
    assert {os.path.basename(p.file): p.message for p in problems} == expected
    assert all((p.line, p.column) == (1, 1) for p in problems)
    assert never_opened == []


def test_special_files_named_explicitly_are_problems_saying_what_they_are(
    tmp_path: Path, never_opened: list[str]
) -> None:
    expected = special_files(tmp_path)
    files, problems = find_manifest_files([str(tmp_path / name) for name in expected])
    assert files == []
    assert {os.path.basename(p.file): p.message for p in problems} == expected
    assert never_opened == []


def test_load_file_refuses_a_fifo_without_opening_it(
    tmp_path: Path, never_opened: list[str]
) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    result = load_file(str(tmp_path / "pipe.yaml"))
    assert only_problem(result) == (
        1,
        1,
        "",
        "is a FIFO (named pipe), not a regular file; not read",
    )
    assert never_opened == []


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    touch(tmp_path, "empty/.hidden.yaml", "empty/notes.txt")
    files, problems = find_manifest_files([str(tmp_path / "nope"), str(tmp_path / "empty")])
    assert files == []
    assert [(p.file, p.line, p.column, p.message) for p in problems] == [
        (str(tmp_path / "nope"), 1, 1, "no such file or directory"),
        (
            str(tmp_path / "empty"),
            1,
            1,
            "directory holds no manifests (no .yaml or .yml files, hidden ones skipped)",
        ),
    ]


def test_load_manifests_reads_every_document_of_every_file() -> None:
    folder = ROOT / "examples" / "cup-final"
    texts = [path.read_text() for path in folder.glob("*.yaml")]
    singles = sum(len(re.findall(r"^kind: RecordTask$", text, re.M)) for text in texts)
    clips = sum(text.count("\n    - name: ") for text in texts if "kind: RecordTaskSet" in text)
    assert singles > 1 and clips > 1, "the examples hold single tasks and a clip set"
    loaded, problems = load_manifests([str(folder)])
    assert problems == []
    assert len(loaded) == singles + clips  # each clip of a set is a manifest of its own
    assert len({m.doc["metadata"]["name"] for m in loaded}) == singles + clips


# --- the C parser and the pure-Python fallback agree --------------------------------------------

# Run in a fresh interpreter: "c" makes sure the libyaml parser is what `from yaml import
# CParser` finds; "python" hides libyaml so that import fails and the fallback is used.
_DUMP = """
import json, sys
mode, paths = sys.argv[1], sys.argv[2:]
if mode == "c":
    import yaml, yaml._yaml
    yaml.CParser = yaml._yaml.CParser
else:
    sys.modules["yaml._yaml"] = None  # `import yaml` then has no libyaml; CParser is missing
from reconciler import manifests
parser = "python" if manifests._Parser is None else "c"
out = []
for path in paths:
    result = manifests.load_file(path)
    out.append({
        "file": path,
        "manifests": [
            {
                "doc": m.doc, "index": m.index, "location": str(m.location),
                "values": sorted([list(k), list(v)] for k, v in m.values.items()),
                "keys": sorted([list(k), list(v)] for k, v in m.keys.items()),
            }
            for m in result.manifests
        ],
        "problems": [[str(p.location), p.field, p.message] for p in result.problems],
    })
print(json.dumps({"parser": parser, "files": out}))
"""


def load_with(parser: str, paths: list[str]) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, parser, *paths],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answer = json.loads(done.stdout)
    assert answer["parser"] == parser, "the parser was not the one asked for"
    return answer["files"]  # type: ignore[no-any-return]


needs_libyaml = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")


@needs_libyaml
def test_c_and_python_parsers_give_the_same_documents_and_positions(tmp_path: Path) -> None:
    crlf = write(tmp_path, b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode(), "crlf.yaml")
    unicode = write(
        tmp_path,
        MINIMAL.replace("name: minimal", "name: x  # 球赛 ü\n  labels: {球: 'é', k: \"ü\"}"),
        "u.yaml",
    )
    paths = sorted(str(p) for p in (ROOT / "examples").rglob("*.yaml"))
    paths += sorted(str(p) for p in BAD.glob("*.yaml"))
    paths += [crlf, unicode]
    c, python = load_with("c", paths), load_with("python", paths)
    assert sum(len(f["manifests"]) for f in c) >= 15  # type: ignore[misc, arg-type]
    for c_file, py_file in zip(c, python, strict=True):
        assert c_file["manifests"] == py_file["manifests"], c_file["file"]
        # libyaml words its syntax errors differently; where and what field must agree.
        c_problems = [p[:2] for p in c_file["problems"]]  # type: ignore[attr-defined]
        py_problems = [p[:2] for p in py_file["problems"]]  # type: ignore[attr-defined]
        assert c_problems == py_problems, c_file["file"]


@needs_libyaml
@pytest.mark.parametrize(
    "parser",
    [
        "python",
        pytest.param("c"),
    ],
)
def test_tab_hint_with_either_parser(parser: str) -> None:
    files = load_with(parser, [str(BAD / "tab-indented.yaml")])
    (location, _, message) = files[0]["problems"][0]  # type: ignore[index]
    assert location.endswith(":5:1")
    assert "YAML does not allow tabs for indentation; use spaces" in message


@needs_libyaml
def test_libyaml_is_used_when_available() -> None:
    assert manifests._Parser is not None  # type: ignore[attr-defined]
