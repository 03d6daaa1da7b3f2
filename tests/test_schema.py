"""Every documented rule (DESIGN.md §2) with a manifest that passes it and one that breaks it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
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
        "yyyy-MM-dd'T'HH:mm:ss'Z'",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21T18:00:00+08:00", "2018-10-21T10:05:00Z")),
        "no fractions, no offsets",
    ),
    (
        "recordTimes",
        times(("2018-10-21T10:00:00Z", "2018-10-21T10:05:00Z")),
        times(("2018-10-21t10:00:00z", "2018-10-21T10:05:00Z")),
        "UTC time",
    ),
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
    doc["kind"] = "Task"
    doc["metadata"] = {
        "name": "Bad_Name",
        "labels": {"ok": "yes", "bad key!": "x", "n": 1},
        "extra": 1,
    }
    (tmp_path / "m.yaml").write_text(json.dumps(doc))
    manifests, _ = load_manifests([str(tmp_path / "m.yaml")])
    found = [f"{p.field}: {p.message}" for p in check_manifest(manifests[0])]
    assert "apiVersion: must be 'reconciler/v1', not text 'reconciler/v2'" in found
    assert "kind: must be 'RecordTask', not text 'Task'" in found
    assert any(f.startswith("metadata.name: 'Bad_Name' must be 1 to 63 lowercase") for f in found)
    assert any(f.startswith("metadata.labels.bad key!: key 'bad key!'") for f in found)
    assert (
        "metadata.labels.n: must be text, not the number 1 (put it in quotes to make it text)"
        in found
    )
    assert any(f.startswith("metadata.extra: unknown field 'extra'") for f in found)


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
