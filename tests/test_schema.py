"""Every documented rule (DESIGN.md §2) with a manifest that passes it and one that breaks it."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.manifests import load_manifests
from reconciler.schema import check_manifest, check_spec, load_schema, parse_record_time

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    manifests, problems = load_manifests([str(FIXTURES / "valid" / "minimal.yaml")])
    assert problems == []
    return manifests[0].doc  # type: ignore[no-any-return]


def problems_for(doc: dict[str, Any]) -> list[str]:
    """Messages (`field: message`) for a document, checked the way `validate` checks it."""
    return [f"{field}: {message}" for field, message in check_spec(doc["spec"])]


def with_spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def times(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"startTime": start, "endTime": end} for start, end in pairs]


T = "2026-11-20T19:"

# (field, good value, bad value, expected message fragment)
RULES: list[tuple[str, Any, Any, str]] = [
    ("publishDomain", "push.example.com", "https://push.example.com", "DNS host name"),
    ("publishDomain", "live-1.push.example.com", "push.example.com:1935", "no scheme"),
    ("publishDomain", "localhost", "*.example.com", "wildcard"),
    ("publishDomain", "a" * 63 + ".com", "a" * 64 + ".com", "DNS host name"),
    ("publishDomain", "push.example.com", "push..example.com", "DNS host name"),
    ("saveEndpoint", "s3.cn-north-1.jdcloud-oss.com", "s3.example.com/bucket", "DNS host name"),
    ("appName", "live", "live/extra", "single URL path segment"),
    ("appName", "a" * 128, "a" * 129, "129 characters long; at most 128"),
    ("appName", "l", "", "0 characters long; at least 1"),
    ("appName", "live", "li ve", "single URL path segment"),
    ("streamName", "cup-final", "cup?final", "single URL path segment"),
    ("streamName", "cup_final.1", "cup#1", "single URL path segment"),
    ("streamName", "球赛-决赛", "100%", "single URL path segment"),
    ("streamName", "cup-final", "cup\u0007final", "single URL path segment"),
    ("streamName", "cup-final", 2026, "must be text, not the number 2026 (put it in quotes"),
    ("saveBucket", "abc", "ab", "3 to 63 lowercase"),
    ("saveBucket", "a" * 63, "a" * 64, "3 to 63 lowercase"),
    ("saveBucket", "my-bucket-1", "My-Bucket", "3 to 63 lowercase"),
    ("saveBucket", "a-b", "-ab", "starting and ending with a letter or digit"),
    ("saveBucket", "a-b", "ab-", "starting and ending with a letter or digit"),
    ("recordFileType", "mp4", "mov", "must be ts, flv or mp4"),
    ("recordFileType", "MP4;Flv;ts", "mp4,flv", "separated by ';'"),
    ("recordFileType", "ts;mp4", "mp4;", "must be ts, flv or mp4"),
    ("recordFileType", "mp4;flv", "mp4;MP4", "'mp4' is given twice"),
    # Only what the client can send (finding 9): "." and ".." are dot segments that HTTP
    # resolves to another path; whitespace per str.isspace and ECMA-262 \\s; invisible text.
    ("appName", "live.1", ".", "not '.' or '..'"),
    ("streamName", "...", "..", "not '.' or '..'"),
    ("appName", "live", "live\n", "ends with a line break"),
    ("streamName", "cup-final", "cup\x85final", "the control character U+0085 at position 4"),
    ("streamName", "cup-final", "cup\x1cfinal", "the control character U+001C"),
    ("streamName", "cup-final", "cup\x7f", "the control character U+007F"),
    ("streamName", "球赛", "球\u3000赛", "the whitespace character U+3000 IDEOGRAPHIC SPACE"),
    ("streamName", "cup-final", "cup\u00a0final", "U+00A0 NO-BREAK SPACE"),
    ("streamName", "cup-final", "cup\u2028final", "the line separator U+2028"),
    (
        "streamName",
        "cup-final",
        "cup\u200bfinal",
        "the invisible character U+200B ZERO WIDTH SPACE",
    ),
    (
        "streamName",
        "cup-final",
        "\ufeffcup-final",
        "U+FEFF ZERO WIDTH NO-BREAK SPACE at position 1",
    ),
    ("streamName", "cup-final", "cup\u202efinal", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("appName", "live", "live\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"),
    ("appName", "live", "li\u00adve", "U+00AD SOFT HYPHEN"),
    ("streamName", "cup-final", "cup\ufe0f", "U+FE0F VARIATION SELECTOR-16"),
    ("streamName", "cup-final", "cup\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A"),
    ("streamName", "⚽-🎉-final", "cup\u3164", "U+3164 HANGUL FILLER"),
    ("streamName", "cup-final", "cup\ud800", "a lone surrogate U+D800"),
    ("publishDomain", "push.example.com", "push.example.com\n", "ends with a line break"),
    ("publishDomain", "push.example.com", "push.example\u200b.com", "U+200B"),
    ("saveEndpoint", "s3.example.com", "s3.example.com\r\n", "ends with a line break"),
    ("saveBucket", "highlights", "highlights\n", "ends with a line break"),
    ("recordFileType", "mp4;flv", "mp4;flv\n", "ends with a line break"),
    ("saveObject", "clips/cup final/goal 1", "clips/goal-1\n", "ends with a line break"),
    ("saveObject", "clips/球赛/⚽\u00a0🎉", "clips/\u202egoal", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("saveObject", " clips/goal-1 ", "clips\tgoal-1", "contains a tab at position 6"),
    ("saveObject", "clips/goal-1", "clips/goal-1\u2029", "the line separator U+2029"),
    ("taskExternalId", "cup final #1", "cup-final\n", "ends with a line break"),
    ("taskExternalId", "cup-final", "cup\u200bfinal", "U+200B ZERO WIDTH SPACE"),
    ("taskExternalId", "cup-final", "cup\x00final", "the control character U+0000"),
    ("taskExternalId", "x" * 256, "x" * 257, "257 characters long; at most 256"),
    (
        "saveObject",
        "clips/{Date}/{StreamName}.{format}",
        "clips/{date}.mp4",
        "unknown placeholder {date}",
    ),
    ("saveObject", "{ServerId}/{AppName}/{StartTime}_{EndTime}", "clips/{Date", "unmatched '{'"),
    ("saveObject", "/xxx/xxx/yourobject", "", "at least 1"),
    ("taskExternalId", "cup-final-goal-1", "", "at least 1"),
    ("taskExternalId", "x", 12, "must be text"),
    ("recordTimes", times((T + "00:00Z", T + "05:00Z")), [], "0 entries; at least 1"),
    (
        "recordTimes",
        times(*[(f"{T}{m:02d}:00Z", f"{T}{m:02d}:30Z") for m in range(10)]),
        times(*[(f"{T}{m:02d}:00Z", f"{T}{m:02d}:30Z") for m in range(11)]),
        "11 entries; at most 10",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "00:10Z")),
        times((T + "00:00Z", T + "00:09Z")),
        "total length 9 s is below the 10 s minimum",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "00:05Z"), (T + "01:00Z", T + "01:05Z")),
        times((T + "00:00Z", T + "00:04Z"), (T + "01:00Z", T + "01:05Z")),
        "total length 9 s",
    ),
    (
        "recordTimes",
        times(("2026-11-20T10:00:00Z", "2026-11-20T18:00:00Z")),
        times(("2026-11-20T10:00:00Z", "2026-11-20T18:00:01Z")),
        "spans 8 h 1 s",
    ),
    (
        "recordTimes",
        times(
            ("2026-11-20T10:00:00Z", "2026-11-20T10:10:00Z"),
            ("2026-11-20T17:59:00Z", "2026-11-20T18:00:00Z"),
        ),
        times(
            ("2026-11-20T10:00:00Z", "2026-11-20T10:10:00Z"),
            ("2026-11-20T18:00:00Z", "2026-11-20T18:00:30Z"),
        ),
        "at most 8 h is allowed",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "01:00Z")),
        times((T + "01:00Z", T + "00:00Z")),
        "is not after startTime",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "01:00Z")),
        times((T + "00:00Z", T + "00:00Z")),
        "is not after startTime",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "01:00Z"), (T + "01:00Z", T + "02:00Z")),
        times((T + "00:00Z", T + "01:00Z"), (T + "00:59Z", T + "02:00Z")),
        "segment 2 starts at 2026-11-20T19:00:59Z, before segment 1 ends",
    ),
    (
        "recordTimes",
        times((T + "00:00Z", T + "01:00Z"), (T + "02:00Z", T + "03:00Z")),
        times((T + "02:00Z", T + "03:00Z"), (T + "00:00Z", T + "01:00Z")),
        "ascending order",
    ),
    (
        "recordTimes",
        times(("2024-02-29T10:00:00Z", "2024-02-29T10:01:00Z")),
        times(("2026-02-29T10:00:00Z", "2026-02-29T10:01:00Z")),
        "2026-02-29T10:00:00Z is not a real calendar time",
    ),
    (
        "recordTimes",
        times(("2026-11-20T23:59:00Z", "2026-11-21T00:00:59Z")),
        times(("2026-11-20T23:59:00Z", "2026-11-20T24:00:00Z")),
        "not a real calendar time",
    ),
    (
        "recordTimes",
        times(("2026-11-20T23:59:00Z", "2026-11-20T23:59:59Z")),
        times(("2026-11-20T23:59:00Z", "2026-11-20T23:59:60Z")),
        "not a real calendar time",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21T10:00:00.000Z", "2018-10-21T10:05:00Z")),
        "yyyy-MM-dd'T'HH:mm:ss followed by Z (UTC) or its offset",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21T18:00:00+0800", "2018-10-21T10:05:00Z")),
        "or 2018-10-21T18:00:00+08:00 (no fractions)",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21T10:00:00", "2018-10-21T10:05:00Z")),
        "write 2018-10-21T10:00:00Z if it is UTC, or add its offset",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21T18:00:00+08:00", "2018-10-21T10:05:00Z")),
        "must be sent as its UTC form, 2018-10-21T10:00:00Z",  # a request; a manifest may
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21t10:00:00z", "2018-10-21T10:05:00Z")),
        "followed by Z (UTC)",
    ),
    ("publishDomain", "push.example.com", "Push.Example.COM", "write push.example.com"),
    ("saveEndpoint", "s3.example.com", "S3.EXAMPLE.COM", "lower case: write s3.example.com"),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        [{"startTime": "2018-10-21T10:00:00Z"}],
        "recordTimes[0].endTime: required field is missing",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        [{"startTime": "2018-10-21T10:00:00Z", "endTime": "2018-10-21T10:05:00Z", "end": "x"}],
        "unknown field 'end'",
    ),
]


@pytest.mark.parametrize(("field", "good", "bad", "message"), RULES)
def test_rule_accepts_good_and_refuses_bad(
    base: dict[str, Any], field: str, good: Any, bad: Any, message: str
) -> None:
    assert problems_for(with_spec(base, **{field: good})) == []
    found = problems_for(with_spec(base, **{field: bad}))
    assert found, f"{field}={bad!r} should be refused"
    assert any(message in problem for problem in found), found


@pytest.mark.parametrize(
    "field",
    [
        "publishDomain",
        "appName",
        "streamName",
        "recordTimes",
        "saveBucket",
        "saveEndpoint",
        "recordFileType",
    ],
)
def test_required_fields(base: dict[str, Any], field: str) -> None:
    assert problems_for(with_spec(base, **{field: None})) == [f"{field}: required field is missing"]


@pytest.mark.parametrize("field", ["saveObject", "taskExternalId"])
def test_optional_fields_may_be_absent_or_null(base: dict[str, Any], field: str) -> None:
    assert problems_for(with_spec(base, **{field: None})) == []
    # The official SDK sends null for unset optional fields; the sandbox must accept that.
    doc = with_spec(base)
    doc["spec"][field] = None
    assert any("must be text" in problem for problem in problems_for(doc)), (
        "null is not text in a manifest"
    )


def test_unknown_field_suggests_the_right_one(base: dict[str, Any]) -> None:
    doc = with_spec(base, saveBuckte="highlights")
    assert any(
        p.startswith("saveBuckte: unknown field 'saveBuckte'; did you mean 'saveBucket'?")
        for p in problems_for(doc)
    )


def test_top_level_rules(base: dict[str, Any], tmp_path: Path) -> None:
    doc = copy.deepcopy(base)
    doc["apiVersion"] = "reconciler/v2"
    doc["metadata"] = {
        "name": "Bad_Name",
        "labels": {"ok": "yes", "bad key!": "x", "n": 1},
        "extra": 1,
    }
    (tmp_path / "m.yaml").write_text(json.dumps(doc))
    manifests, _ = load_manifests([str(tmp_path / "m.yaml")])
    found = [f"{p.field}: {p.message}" for p in check_manifest(manifests[0])]
    assert "apiVersion: must be 'reconciler/v1', not text 'reconciler/v2'" in found
    assert any(f.startswith("metadata.name: 'Bad_Name' must be 1 to 63 lowercase") for f in found)
    assert any(f.startswith("metadata.labels.bad key!: key 'bad key!'") for f in found)
    assert (
        "metadata.labels.n: must be text, not the number 1 (put it in quotes to make it text)"
        in found
    )
    assert any(f.startswith("metadata.extra: unknown field 'extra'") for f in found)


def test_an_unknown_kind_is_the_only_problem(base: dict[str, Any], tmp_path: Path) -> None:
    doc = copy.deepcopy(base)
    doc["kind"] = "Task"
    doc["spec"]["saveBuckte"] = doc["spec"].pop("saveBucket")  # not reported: wrong kind
    (tmp_path / "m.yaml").write_text(json.dumps(doc))
    manifests, _ = load_manifests([str(tmp_path / "m.yaml")])
    found = [f"{p.field}: {p.message}" for p in check_manifest(manifests[0])]
    assert found == [
        "kind: unknown kind 'Task'; the kinds are RecordTask, RecordTaskSet, RecordNotifyConfig "
        "(closest first)"
    ]


def test_metadata_name_rules(base: dict[str, Any]) -> None:
    from reconciler.schema import _errors

    for good in ["a", "cup-final-goal-1", "a" * 63, "0"]:
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = good
        assert _errors(doc) == [], good
    for bad in ["", "-a", "a-", "A", "a" * 64, "a_b", "a.b"]:
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = bad
        assert _errors(doc), bad


def test_problem_positions_point_at_the_spot(tmp_path: Path) -> None:
    text = (FIXTURES / "valid" / "minimal.yaml").read_text()
    text = text.replace("saveBucket: highlights", "saveBucket: Highlights")
    text = text.replace("  saveEndpoint: s3.cn-north-1.jdcloud-oss.com\n", "")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    manifests, _ = load_manifests([str(path)])
    found = {p.field: (p.line, p.column) for p in check_manifest(manifests[0])}
    lines = text.splitlines()
    bucket_line = next(i for i, line in enumerate(lines, 1) if "saveBucket" in line)
    spec_line = next(i for i, line in enumerate(lines, 1) if line.startswith("spec:"))
    assert found["spec.saveBucket"] == (bucket_line, lines[bucket_line - 1].index("Highlights") + 1)
    assert found["spec.saveEndpoint"] == (spec_line, 1)


def test_parse_record_time() -> None:
    assert parse_record_time("2018-10-21T10:00:00Z") is not None
    assert parse_record_time("2018-13-21T10:00:00Z") is None
    assert parse_record_time("2018-10-21T10:00:00") is None


def test_schema_is_valid_draft_2020_12_without_python_only_regex() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    text = json.dumps(schema)
    for python_only in ["(?i)", "(?P<", "\\\\A", "\\\\Z", "(?#"]:
        assert python_only not in text


def test_standard_validator_agrees_on_structure(base: dict[str, Any]) -> None:
    """A plain Draft 2020-12 validator (what editors use) accepts valid manifests and refuses
    structural mistakes; only the project keywords need our validator."""
    plain = Draft202012Validator(load_schema())
    assert list(plain.iter_errors(base)) == []
    assert list(plain.iter_errors(with_spec(base, saveBuckte="x")))
    assert list(plain.iter_errors(with_spec(base, recordFileType="mp4,flv")))
    too_short = with_spec(base, recordTimes=times((T + "00:00Z", T + "00:05Z")))
    assert list(plain.iter_errors(too_short)) == [], "the 10 s rule is a project keyword"
    assert problems_for(too_short), "... which our validator enforces"


# --- one meaning for every value (issue 11, findings 9 and 10) ---------------------------------

MINIMAL = (FIXTURES / "valid" / "minimal.yaml").read_text()
# Every field with a `pattern` (or a rule of our own) and a valid value for it, written as one
# line of the fixture (metadata.name included: not sent, but a name with a line break is not
# the name a reviewer reads).
PATTERN_FIELDS: list[tuple[str, str, str]] = [
    ("metadata.name", "  name: minimal\n", "  name: {}\n"),
    ("spec.publishDomain", "  publishDomain: push.example.com\n", "  publishDomain: {}\n"),
    ("spec.appName", "  appName: live\n", "  appName: {}\n"),
    ("spec.streamName", "  streamName: match\n", "  streamName: {}\n"),
    (
        "spec.recordTimes[0].startTime",
        '    - startTime: "2026-11-20T19:00:00Z"\n',
        "    - startTime: {}\n",
    ),
    (
        "spec.recordTimes[0].endTime",
        '      endTime: "2026-11-20T19:05:00Z"\n',
        "      endTime: {}\n",
    ),
    ("spec.saveBucket", "  saveBucket: highlights\n", "  saveBucket: {}\n"),
    (
        "spec.saveEndpoint",
        "  saveEndpoint: s3.cn-north-1.jdcloud-oss.com\n",
        "  saveEndpoint: {}\n",
    ),
    ("spec.recordFileType", "  recordFileType: mp4\n", "  recordFileType: {}\n"),
]


def _value_of(line: str) -> str:
    return line.split(": ", 1)[1].strip().strip('"')


def _with_block_scalar(line: str, template: str, indicator: str) -> str:
    """The fixture with one field's value written as a YAML block scalar (`|`, `|-`, `>`...)."""
    indent = " " * (len(template) - len(template.lstrip(" -")) + 2)
    block = indicator + "\n" + indent + _value_of(line)
    return MINIMAL.replace(line, template.format(block))


def _verdict(text: str) -> list[str]:
    from reconciler.manifests import parse_text

    result = parse_text("m.yaml", text)
    assert result.problems == [], result.problems
    return [f"{p.field}: {p.message}" for p in check_manifest(result.manifests[0])]


@pytest.mark.parametrize(("field", "line", "template"), PATTERN_FIELDS)
@pytest.mark.parametrize("indicator", ["|", ">", "|+", ">+"])
def test_a_block_scalar_keeping_its_line_break_is_refused(
    field: str, line: str, template: str, indicator: str
) -> None:
    """Python's `$` matches before a final newline, ECMA-262's does not: `|` must not pass."""
    assert line in MINIMAL
    found = _verdict(_with_block_scalar(line, template, indicator))
    assert any(problem.startswith(f"{field}: ") for problem in found), found
    assert any("line break" in problem for problem in found), found


@pytest.mark.parametrize(("field", "line", "template"), PATTERN_FIELDS)
@pytest.mark.parametrize("indicator", ["|-", ">-"])
def test_a_block_scalar_without_its_line_break_is_the_plain_value(
    field: str, line: str, template: str, indicator: str
) -> None:
    assert _verdict(_with_block_scalar(line, template, indicator)) == []


def test_a_label_key_with_a_line_break_is_refused(base: dict[str, Any]) -> None:
    from reconciler.schema import _errors

    for bad in ["event\n", "event\r\n", "\nevent"]:
        doc = copy.deepcopy(base)
        doc["metadata"]["labels"] = {bad: "x"}
        assert _errors(doc), repr(bad)


def test_times_parse_only_without_a_line_break() -> None:
    """The project's own time rules (calendar, order, sums) read times as ECMA `$` would."""
    assert parse_record_time("2018-10-21T10:00:00Z\n") is None
    assert parse_record_time("2018-10-21T10:00:00Z\r") is None


def test_every_pattern_in_the_schema_is_one_ecma_262_and_python_both_compile() -> None:
    """Editors, check-jsonschema (regress) and python-jsonschema (re) must all read each
    pattern; the ones that would disagree (`\\d`, `\\s`, `\\w`, `.`, `\\b`) are not used."""
    import re

    import regress

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "pattern" and isinstance(value, str):
                    found.append(value)
                assert key != "patternProperties", "our validator reads only `pattern` as ECMA-262"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(load_schema())
    assert len(found) >= 6
    for pattern in found:
        re.compile(pattern)
        regress.Regex(pattern, flags="u")
        regress.Regex(pattern)
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        for unicode_dependent in ("\\d", "\\D", "\\s", "\\S", "\\w", "\\W", "\\b", "\\B"):
            assert unicode_dependent not in pattern, (pattern, unicode_dependent)
        assert "." not in _outside_classes(pattern), f"{pattern}: '.' means another thing in each"


def _outside_classes(pattern: str) -> str:
    """The pattern's characters outside `[...]`, escapes removed."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        else:
            out.append(char)
    return "".join(out)


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt), with the interlinear
# annotation controls U+FFF9..U+FFFB: characters that show nothing where they stand.
INVISIBLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
]  # fmt: skip
# ECMA-262's \s beyond str.isspace(): U+FEFF (invisible anyway).
ECMA_ONLY_SPACE = "\ufeff"
INVISIBLE_CHARACTERS = {chr(code) for low, high in INVISIBLE for code in range(low, high + 1)}
CONTROLS = {chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)]}


@cache
def all_text() -> str:
    """Every Unicode code point but the surrogates (which no regress pattern can be given)."""
    return "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)


def _class_of(name: str, prefix: str, suffix: str) -> str:
    pattern: str = load_schema()["$defs"][name]["pattern"]
    assert pattern.startswith(prefix) and pattern.endswith(suffix), pattern
    return pattern[len(prefix) : -len(suffix)]


def _refused(klass: str) -> tuple[set[str], set[str]]:
    """Every character (surrogates aside) a character class does not match: (by ECMA-262, by
    Python's re). regress reports UTF-8 byte ranges; the gaps between them are the refusals."""
    import re

    import regress

    text = all_text()
    encoded = text.encode()
    by_ecma: set[str] = set()
    at = 0
    for match in regress.Regex(klass + "+", flags="u").find_iter(text) or []:
        by_ecma.update(encoded[at : match.range().start].decode())
        at = match.range().stop
    by_ecma.update(encoded[at:].decode())
    return by_ecma, set(re.sub(klass + "+", "", text))


def test_a_path_segment_refuses_exactly_the_unsendable_and_the_unseen() -> None:
    """Every code point: appName/streamName refuse '/ ? # %', controls, whitespace (Python's
    and ECMA's), invisible characters; ECMA-262 and Python agree; the client sends the rest."""
    from reconciler.client import record_task_path
    from reconciler.schema import ecma_match

    by_ecma, by_python = _refused(_class_of("pathSegment", "^(?!\\.\\.?$)", "+$"))
    assert by_ecma == by_python
    spaces = {char for char in all_text() if char.isspace()} | set(ECMA_ONLY_SPACE)
    assert by_ecma == set("/?#%") | CONTROLS | spaces | INVISIBLE_CHARACTERS
    pattern = load_schema()["$defs"]["pathSegment"]["pattern"]
    for code in range(0xD800, 0xE000):
        assert not ecma_match(pattern, "a" + chr(code))
    accepted = [char for char in all_text() if char not in by_ecma]
    for start in range(0, len(accepted), 127):  # what the schema accepts, the client sends
        chunk = "a" + "".join(accepted[start : start + 127])
        record_task_path("push.example.com", chunk, chunk)


def test_free_text_refuses_controls_and_invisible_characters_only() -> None:
    """saveObject and taskExternalId: any visible text, spaces included; no control, line
    separator or invisible character, and every refused one is named in the message."""
    from reconciler.schema import hidden_character

    by_ecma, by_python = _refused(_class_of("text", "^", "*$"))
    assert by_ecma == by_python
    assert by_ecma == CONTROLS | set("\u2028\u2029") | INVISIBLE_CHARACTERS
    for char in sorted(by_ecma):
        assert hidden_character(f"a{char}b"), f"U+{ord(char):04X} is not named"


# --- the compiled check: the same verdict as the validator's walk ------------------------------


@cache
def _written_docs() -> list[Any]:
    """Every document the fixtures and examples hold, valid or not; a set as it is written."""
    root = FIXTURES.parent.parent
    manifests, _ = load_manifests([str(FIXTURES), str(root / "examples")])
    docs: dict[int, Any] = {}
    for manifest in manifests:
        written = manifest.clip.set.manifest if manifest.clip is not None else manifest
        docs.setdefault(id(written.doc), written.doc)
    return list(docs.values())


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(
        [
            "", "RecordTask", "RecordTaskSet", "reconciler/v1", "mp4;flv", "mp4;MP4", "ts",
            "2026-11-20T19:00:00Z", "2026-11-20T19:00:30Z", "2026-02-30T19:00:00Z",
            "2026-11-20T19:00:00Z\n", "push.example.com", "https://push.example.com", "a b",
            "live\u200b", "record/{Date}/{Foo}.{format}", "{StreamName", "x" * 70, "goal-1",
        ]
    ),
    st.text(max_size=6),
)  # fmt: skip
KEYS = st.sampled_from(
    ["kind", "spec", "metadata", "name", "labels", "template", "clips", "recordTimes",
     "startTime", "endTime", "streamName", "saveObject", "recordFileType", "streamNme", "x"]
)  # fmt: skip


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """`doc` with one value somewhere in it replaced, removed or added."""
    doc = copy.deepcopy(doc)
    parent, key = None, None
    node = doc
    while isinstance(node, dict | list) and node and data.draw(st.integers(0, 4)) > 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "remove", "add", "copy", "stretch"]))
    if action == "stretch" and isinstance(node, str) and parent is not None:
        # To just under, at or just past a length bound (hostName 253, pathSegment 128, ...).
        bound = data.draw(st.sampled_from([63, 128, 253, 256, 1024])) + data.draw(
            st.integers(-1, 1)
        )
        parent[key] = node.ljust(bound, node[-1:] or "a")  # type: ignore[index]
        return doc
    if parent is None or action == "add":
        target = node if isinstance(node, dict) else parent
        if isinstance(target, dict):
            target[data.draw(KEYS)] = data.draw(SCALARS)
        return doc
    if action == "remove":
        del parent[key]
    elif action == "copy" and isinstance(parent, list):  # up to just past maxItems (10)
        parent.extend(copy.deepcopy(node) for _ in range(data.draw(st.integers(1, 10))))
    else:
        parent[key] = data.draw(SCALARS | st.just({}) | st.just([]))
    return doc


@given(data=st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_compiled_check_and_the_validator_agree(data: st.DataObject) -> None:
    """Valid documents are decided by the compiled check alone, so it must find a document
    valid exactly when the validator's walk finds no error: for one kind, and for sets as
    written (whose clips' spec fields are left open)."""
    from reconciler.schema import _set_validator, _validator

    doc = data.draw(st.sampled_from(_written_docs()))
    for _ in range(data.draw(st.integers(0, 3))):
        doc = _mutate(doc, data)
    for rules in (_validator(), _set_validator()):
        walked = next(rules.validator.iter_errors(doc), None)
        assert rules.valid(doc) == (walked is None), (doc, walked)


KEYWORD_SCHEMAS = [
    {"maxItems": 2}, {"minItems": 2}, {"maxLength": 2}, {"minLength": 2},
    {"type": "string"}, {"type": "object"}, {"type": "array"}, {"type": "null"},
    {"type": "boolean"}, {"type": "number"}, {"const": "ab"}, {"const": 1},
    {"pattern": "^a[bc]$"}, {"required": ["a"]}, {"properties": {"a": {"type": "string"}}},
    {"properties": {"a": True}, "additionalProperties": False},
    {"additionalProperties": {"maxLength": 1}}, {"propertyNames": {"maxLength": 1}},
    {"items": {"type": "string"}}, {"items": False}, {"prefixItems": [True], "items": False},
    {"if": {"const": "a"}, "then": {"maxLength": 0}, "else": {"minLength": 2}},
    {"if": {"const": "a"}, "then": False}, {"if": {"const": "a"}}, {"then": False},
    {"not": {"type": "string"}}, {"anyOf": [{"type": "string"}, {"type": "array"}]},
    {"x-reconciler-uniqueFileTypes": True}, {"title": "t", "x-unknown": 1}, True, False,
]  # fmt: skip
KEYWORD_INSTANCES = [
    None, True, False, 0, 1, 1.0, 1.5, "", "a", "ab", "ac", "abc", "a\n", "mp4;MP4",
    [], ["a"], ["a", "b"], ["a", "b", "c"], [1], {}, {"a": "x"}, {"a": 1}, {"b": "xy"},
    {"ab": "x"},
]  # fmt: skip


@pytest.mark.parametrize("schema", KEYWORD_SCHEMAS, ids=json.dumps)
def test_each_compiled_keyword_agrees_with_the_validator(schema: Any) -> None:
    """Each keyword at and around its bounds; keywords it does not compile are walked."""
    from reconciler.schema import _rules

    rules = _rules(schema if isinstance(schema, bool) else {"$defs": {}, **schema})
    for instance in KEYWORD_INSTANCES:
        walked = next(rules.validator.iter_errors(instance), None)
        assert rules.valid(instance) == (walked is None), (instance, walked)
