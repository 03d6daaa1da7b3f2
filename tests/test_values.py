"""One meaning for every value (DESIGN §3): `validate` against standard validators, and sending.

Generated values (control and invisible characters, YAML block scalars, "." and "..", long
values, unicode, leading and trailing whitespace) are written into one string field of a valid
manifest, as YAML text, so the real loader reads them. Then:
- whatever `validate` accepts, a standard Draft 2020-12 validator on our schema file accepts
  too: python-jsonschema as it is (Python `re`), and the same with ECMA-262 patterns (regress,
  which check-jsonschema uses by default). Only our own keywords may refuse more.
- whatever `validate` accepts can be sent: the client builds its path, and the sandbox (its
  body check, and a real Sandbox over a socket) accepts the request as it was meant.
- a value holding a control or invisible character is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_jsonschema.regex_variants import (  # type: ignore[import-untyped]
    RegexImplementation,
    RegexVariantName,
)
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

from reconciler.client import LiveClient, encode_body, record_task_path
from reconciler.manifests import MAX_VALUES_PER_SET, Manifest, parse_text
from reconciler.plan import MAX_SETTLE_SECONDS
from reconciler.sandbox import Sandbox, SandboxConfig
from reconciler.schema import check_manifest, check_spec
from reconciler.tasks import Task, load_tasks, task_from_manifest

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ROOT = Path(__file__).parent.parent
RECORD_TASK_SCHEMA = ROOT / "schemas" / "record-task.schema.json"

# --- a valid manifest with one field open ---------------------------------------------------------

# field -> (its valid value, the indentation of its key, whether the value is a mapping key)
FIELDS: dict[str, tuple[str, int, bool]] = {
    "name": ("minimal", 2, False),
    "labelKey": ("event", 4, True),
    "labelValue": ("cup-final", 4, False),
    "publishDomain": ("push.example.com", 2, False),
    "appName": ("live", 2, False),
    "streamName": ("match", 2, False),
    "startTime": ("2026-11-20T19:00:00Z", 6, False),
    "endTime": ("2026-11-20T19:05:00Z", 6, False),
    "saveBucket": ("highlights", 2, False),
    "saveEndpoint": ("s3.cn-north-1.jdcloud-oss.com", 2, False),
    "recordFileType": ("mp4;flv", 2, False),
    "saveObject": ("highlights/cup-final/{StreamName}-{StartTime}.{format}", 2, False),
    "taskExternalId": ("cup-final-goal-1", 2, False),
}
TEMPLATE = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: {name}
  labels:
    {labelKey}: {labelValue}
spec:
  publishDomain: {publishDomain}
  appName: {appName}
  streamName: {streamName}
  recordTimes:
    - startTime: {startTime}
      endTime: {endTime}
  saveBucket: {saveBucket}
  saveEndpoint: {saveEndpoint}
  recordFileType: {recordFileType}
  saveObject: {saveObject}
  taskExternalId: {taskExternalId}
"""
# Not sent, and so not held to "sendable": the manifest's name and its labels. Label values
# are free-form (no pattern): the only field that may hold any character.
NOT_SENT = ("name", "labelKey", "labelValue")

# --- values -----------------------------------------------------------------------------------

CONTROLS = [chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)]]
INVISIBLE = [
    "\u00ad", "\u034f", "\u061c", "\u115f", "\u17b4", "\u180e", "\u200b", "\u200c", "\u200d",
    "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2060", "\u2061",
    "\u2066", "\u2067", "\u2068", "\u2069", "\u3164", "\ufe0f", "\ufeff", "\uffa0", "\ufff9",
    "\U0001d173", "\U000e0001", "\U000e0041", "\U000e0100",
]  # fmt: skip
LINE_SEPARATORS = ["\u2028", "\u2029"]
# Whitespace beyond a space (visible as a gap: allowed in free text, never in identifiers).
SPACES = [" ", "\u00a0", "\u1680", "\u2000", "\u2007", "\u200a", "\u202f", "\u205f", "\u3000"]
UNSEEN = frozenset(CONTROLS + INVISIBLE + LINE_SEPARATORS)
OTHERS = [*"/?#%.;:{}[]'\"\\|>-_~+*&!@`,=", "é", "ß", "球", "赛", "⚽", "🎉", "\U0002a6d6"]
tricky = st.sampled_from(CONTROLS + INVISIBLE + LINE_SEPARATORS + SPACES + OTHERS)
visible = st.sampled_from([*SPACES, *OTHERS, *"aZ09-."])


@st.composite
def values_for(draw: st.DrawFn, field: str) -> str:
    """Mostly the field's valid value with something tricky put in, around it or repeated."""
    valid = FIELDS[field][0]
    kinds = ["insert", "visible", "visible", "wrap", "dots", "long", "text", "valid", "valid"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("insert", "visible"):
        chars = tricky if kind == "insert" else visible
        at = draw(st.integers(0, len(valid)))
        return valid[:at] + "".join(draw(st.lists(chars, min_size=1, max_size=3))) + valid[at:]
    if kind == "wrap":
        return (
            draw(st.sampled_from(["", " ", "\n", "\t", "\ufeff"]))
            + valid
            + draw(st.sampled_from(["", " ", "\n", "\r\n", "\n\n", "\u200b", "\u2028"]))
        )
    if kind == "dots":
        return draw(st.sampled_from([".", "..", "...", "./", "../x", ".a", "a.", ".\n", ""]))
    if kind == "long":
        size = draw(st.sampled_from([61, 62, 63, 64, 127, 128, 129, 253, 254, 256, 257, 1025]))
        filler = draw(st.sampled_from(["a", "-", "球", "🎉", "a.", "ab.", "\u00a0"]))
        return (valid + filler * size)[:size] if draw(st.booleans()) else (filler * size)[:size]
    if kind == "text":
        return draw(st.text(st.characters(codec="utf-8") | tricky, max_size=12))
    return valid


# --- writing a value as YAML text ---------------------------------------------------------------


def _yaml_raw(char: str) -> bool:
    """Whether libyaml reads `char` as it is in a quoted scalar: printable, not a line break."""
    code = ord(char)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or code >= 0x10000
    ) and char not in "\u2028\u2029\ufeff"


def _double_quoted(value: str) -> str:
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif _yaml_raw(char) and ord(char) < 0x7F:
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _plain_is_safe(value: str) -> bool:
    """Conservative: letters, digits and a few marks, starting with a letter (never read as a
    number, boolean or null by the loader's YAML 1.2 core schema)."""
    return (
        value[:1].isascii()
        and value[:1].isalpha()
        and all(char.isascii() and (char.isalnum() or char in "-._/;") for char in value)
        and value.lower() not in ("true", "false", "null")
    )


@st.composite
def rendered(draw: st.DrawFn, field: str, value: str) -> str:
    """`value` as YAML text for `field`: plain, quoted, or a block scalar (`|`, `|-`, `>`...).

    Block scalars carry the value's text on one line; the chomping indicator decides whether
    the final line break (or two) is kept, which is the point."""
    _, indent, is_key = FIELDS[field]
    styles = ["double"]
    if all(_yaml_raw(char) for char in value):
        styles.append("single")
    if value and _plain_is_safe(value):
        styles.append("plain")
    single_line = value.rstrip("\n")
    if (
        not is_key
        and single_line
        and single_line[0] not in " #"
        and single_line[-1] != " "
        and all(_yaml_raw(char) and char != "\t" for char in single_line)
    ):
        styles.append("block")
    style = draw(st.sampled_from(styles))
    if style == "plain":
        return value
    if style == "single":
        return "'" + value.replace("'", "''") + "'"
    if style == "double":
        return _double_quoted(value)
    indicator = draw(st.sampled_from(["|", "|-", "|+", ">", ">-", ">+"]))
    trailing = draw(st.sampled_from(["", "\n"])) if indicator.endswith("+") else ""
    return f"{indicator}\n{' ' * (indent + 2)}{single_line}\n{trailing}".rstrip("\n")


def manifest_text(field: str, value_text: str) -> str:
    values = {name: spec[0] for name, spec in FIELDS.items()}
    values[field] = value_text
    return TEMPLATE.format(**values)


# --- the standard validators, and what validate says -------------------------------------------


class Standard:
    """python-jsonschema as it is, and with check-jsonschema's default (regress) patterns."""

    def __init__(self) -> None:
        schema = json.loads(RECORD_TASK_SCHEMA.read_text(encoding="utf-8"))
        regex = RegexImplementation(RegexVariantName.default)
        ecma = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
            Draft202012Validator,
            {
                "pattern": regex.pattern_keyword,
                "patternProperties": regex.patternProperties_keyword,
            },
        )
        self.validators: dict[str, Validator] = {
            "python-jsonschema": Draft202012Validator(schema),
            "python-jsonschema + regress": ecma(schema),
        }

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return "Standard()"

    def errors(self, doc: Any) -> dict[str, list[str]]:
        found = {
            name: [error.message for error in validator.iter_errors(doc)]
            for name, validator in self.validators.items()
        }
        return {name: messages for name, messages in found.items() if messages}


@pytest.fixture(scope="module")
def standard() -> Standard:
    return Standard()


def _loaded(text: str) -> Manifest | None:
    """The manifest as `validate` reads it, or None when the YAML itself is refused."""
    result = parse_text("generated.yaml", text)
    return result.manifests[0] if result.manifests and not result.problems else None


def _value_at(manifest: Manifest, field: str) -> Any:
    doc = manifest.doc
    if field == "name":
        return doc["metadata"]["name"]
    labels = doc["metadata"]["labels"]
    if field in ("labelKey", "labelValue"):
        (key, label), *_ = labels.items()
        return key if field == "labelKey" else label
    if field in ("startTime", "endTime"):
        return doc["spec"]["recordTimes"][0][field]
    return doc["spec"][field]


def check_sendable(task: Task) -> None:
    """The client builds the request; the sandbox's check accepts what it would receive."""
    path = record_task_path(
        task.path["publishDomain"], task.path["appName"], task.path["streamName"]
    )
    assert path.startswith("/v1/records/")
    received = json.loads(encode_body(task.body).decode("utf-8"))
    assert received == task.body
    assert check_spec({**task.path, **received}) == []


field_names = st.sampled_from(list(FIELDS))


@given(data=st.data(), field=field_names)
@SETTINGS
def test_standard_validators_never_refuse_what_validate_accepts(
    standard: Standard, data: st.DataObject, field: str
) -> None:
    value = data.draw(values_for(field), label="value")
    text = manifest_text(field, data.draw(rendered(field, value), label="yaml"))
    manifest = _loaded(text)
    if manifest is None:
        return  # the YAML is refused: nothing to compare
    loaded = _value_at(manifest, field)
    note(f"{field} = {loaded!r}")
    problems = check_manifest(manifest)
    event(f"{field}: {'refused' if problems else 'accepted'}")
    if field != "labelValue" and isinstance(loaded, str) and UNSEEN.intersection(loaded):
        assert problems, f"{field} {loaded!r} holds a control or invisible character"
    if problems:
        return
    assert standard.errors(manifest.doc) == {}
    check_sendable(task_from_manifest(manifest))


# --- over a socket, against a real sandbox -------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(SandboxConfig(host="127.0.0.1", port=0)).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> Iterator[LiveClient]:
    with LiveClient(sandbox.credentials, endpoint=sandbox.url, max_retries=0) as live:
        yield live


SENT = [name for name in FIELDS if name not in NOT_SENT]


@given(data=st.data(), field=st.sampled_from(SENT))
@settings(SETTINGS, max_examples=120)
def test_the_sandbox_accepts_every_request_validate_accepts(
    sandbox: Sandbox,
    client: LiveClient,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    field: str,
) -> None:
    """`load_tasks` on a real file, then a signed POST: 200, and the sandbox recorded exactly
    the request the manifest means (path segments and body, byte for byte once decoded)."""
    value = data.draw(values_for(field), label="value")
    text = manifest_text(field, data.draw(rendered(field, value), label="yaml"))
    path = tmp_path_factory.mktemp("values") / "clip.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_tasks([str(path)])
    if not loaded.ok:
        return
    (task,) = loaded.tasks
    note(f"request: {task.request!r}")
    result = client.add_live_record_task(task.path, task.body)
    assert result.http_status == 200
    (accepted,) = [item for item in sandbox.accepted() if item["requestId"] == result.request_id]
    assert accepted["path"] == dict(task.path)
    assert accepted["body"] == dict(task.body)


# --- the real check-jsonschema, once, over the values that matter most --------------------------

CORNER_VALUES = [".", "..", "...", "a\n", "a\r\n", "a\t", " a", "a ", "a\u00a0b", "a\u200bb",
                 "\ufeffa", "a\u202eb", "a\u2066b", "a\x85", "a\u2028", "a\U000e0041", "球赛",
                 "⚽🎉"]  # fmt: skip


def test_check_jsonschema_accepts_what_validate_accepts(tmp_path: Path) -> None:
    """Each corner value in each field, through our loader and through check-jsonschema's CLI
    (ECMA-262 patterns): every file validate accepts, check-jsonschema accepts too."""
    accepted: list[Path] = []
    refused = 0
    for field, (valid, _indent, _key) in FIELDS.items():
        for index, corner in enumerate(CORNER_VALUES):
            for value in (corner, valid + corner, corner + valid):
                text = manifest_text(field, _double_quoted(value))
                manifest = _loaded(text)
                assert manifest is not None, text
                path = tmp_path / f"{field}-{index}-{len(accepted) + refused}.yaml"
                if check_manifest(manifest):
                    refused += 1
                    continue
                path.write_text(text, encoding="utf-8")
                accepted.append(path)
    assert accepted and refused
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(RECORD_TASK_SCHEMA)]
        + [str(path) for path in accepted],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- no value breaks a run: the last and first times a manifest can write ----------------------

VALUES = Path(__file__).parent / "fixtures" / "values"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_clip_in_the_year_9999_validates_plans_and_applies(tmp_path: Path) -> None:
    """The far-future clip waits (its settle time runs past the last second a time can hold);
    the year-1 clip is sent. No OverflowError, in any command or format, at any --settle."""
    manifests = str(VALUES / "year-9999.yaml")
    checked = run_cli("validate", manifests, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert run_cli("init", cwd=tmp_path).returncode == 0
    for settle in ("0", "300", str(MAX_SETTLE_SECONDS)):
        for output in ("text", "json", "markdown", "github"):
            planned = run_cli(
                "plan", manifests, "--settle", settle, "--format", output, cwd=tmp_path
            )
            assert planned.returncode == 0, planned.stdout + planned.stderr
            assert "Traceback" not in planned.stderr
    planned = run_cli("plan", manifests, "--format", "json", "--out", "plan.json", cwd=tmp_path)
    items = {item["name"]: item for item in json.loads(planned.stdout)["items"]}
    assert items["last-second"]["action"] == "waiting"
    assert items["last-second"]["readyAt"] == "9999-12-31T23:59:59Z"
    assert items["first-second"]["action"] == "create"
    applied = run_cli("apply", manifests, "--sandbox", cwd=tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "1 submitted" in applied.stdout and "1 waiting" in applied.stdout
    again = run_cli("apply", "plan.json", "--sandbox", cwd=tmp_path)
    assert "Traceback" not in again.stdout + again.stderr
    # Were the far-future clip ever due, the sandbox would take it as it takes the year-1 one.
    last = next(task for task in load_tasks([manifests]).tasks if task.name == "last-second")
    assert check_spec({**last.path, **last.body}) == []


# --- times with an offset are the same clip as their UTC form -----------------------------------


def _loaded_spec(text: str) -> Manifest:
    manifest = _loaded(text)
    assert manifest is not None, text
    return manifest


def _times_text(start: str, end: str) -> str:
    text = manifest_text("startTime", f'"{start}"')
    return text.replace(f"endTime: {FIELDS['endTime'][0]}", f'endTime: "{end}"')


def _written(moment: datetime, minutes: int) -> str:
    """`moment` (UTC) as the local time at an offset of `minutes`, with that offset."""
    local = moment + timedelta(minutes=minutes)
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{local.isoformat(timespec='seconds')}{sign}{hours:02d}:{rest:02d}"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59)


@given(
    start=st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30)),
    length=st.integers(10, 8 * 3600),
    start_offset=offsets,
    end_offset=offsets,
)
@settings(SETTINGS, max_examples=200)
def test_any_time_written_with_any_offset_hashes_like_its_utc_form(
    start: datetime, length: int, start_offset: int, end_offset: int
) -> None:
    start = start.replace(microsecond=0)
    end = start + timedelta(seconds=length)
    utc = _loaded_spec(_times_text(_written(start, 0)[:-6] + "Z", _written(end, 0)[:-6] + "Z"))
    text = _times_text(_written(start, start_offset), _written(end, end_offset))
    note(text)
    offset = _loaded_spec(text)
    assert check_manifest(utc) == []
    assert check_manifest(offset) == []
    assert task_from_manifest(offset).request == task_from_manifest(utc).request
    assert task_from_manifest(offset).hash == task_from_manifest(utc).hash


def test_one_clip_written_in_three_zones_is_one_task(tmp_path: Path) -> None:
    """Unquoted offsets are text too; the copies are found as copies (same request)."""
    loaded = load_tasks([str(VALUES / "offsets.yaml")])
    assert [task.name for task in loaded.tasks] == ["goal-utc", "goal-beijing", "goal-new-york"]
    assert len({task.hash for task in loaded.tasks}) == 1
    assert loaded.tasks[1].body["recordTimes"] == [
        {"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:05:00Z"}
    ]
    copies = [p for p in loaded.problems if "same request as 'goal-utc'" in p.message]
    assert len(copies) == 2


def _time_problems(start: str, end: str = "2026-11-20T19:05:00Z") -> list[str]:
    return [problem.message for problem in check_manifest(_loaded_spec(_times_text(start, end)))]


def test_a_time_without_offset_is_refused_with_its_utc_reading() -> None:
    manifest = _loaded_spec(_times_text("2026-11-20T19:00:00", "2026-11-20T19:05:00Z"))
    (problem,) = check_manifest(manifest)
    assert (problem.location.line, problem.location.column) == (12, 18)
    assert problem.field == "spec.recordTimes[0].startTime"
    assert "write 2026-11-20T19:00:00Z if it is UTC" in problem.message
    assert "+08:00" in problem.message  # how to write a local time instead
    (spaced,) = _time_problems("2026-11-20 19:00:00")
    assert "write 2026-11-20T19:00:00Z if it is UTC" in spaced


@pytest.mark.parametrize(
    ("start", "why"),
    [
        ("2026-02-29T01:00:00+08:00", "not a real calendar time"),
        ("2026-11-20T24:00:00+08:00", "not a real calendar time"),
        ("2026-11-20T19:00:00+24:00", "offset"),
        ("2026-11-20T19:00:00+08:60", "offset"),
        ("0001-01-01T00:00:00+08:00", "0001-01-01T00:00:00Z"),
        ("2026-11-20T19:00:00+0800", "or 2018-10-21T18:00:00+08:00"),
    ],
)
def test_the_written_form_is_a_real_calendar_time(start: str, why: str) -> None:
    messages = _time_problems(start)
    assert messages and why in messages[0], messages


def test_the_utc_reading_must_be_a_time_a_request_can_carry() -> None:
    (message,) = _time_problems("9999-12-31T23:59:00Z", "9999-12-31T23:00:00-05:00")
    assert "9999-12-31T23:59:59Z" in message


def test_a_local_time_whose_utc_reading_is_the_day_before_is_valid() -> None:
    assert _time_problems("2026-03-01T00:30:00+08:00", "2026-02-28T16:35:00Z") == []


def test_order_sums_and_spans_use_utc() -> None:
    # 03:04+08:00 is 19:04Z: before the first segment ends at 19:05Z, though it reads later.
    text = _times_text("2026-11-20T19:00:00Z", "2026-11-20T19:05:00Z").replace(
        '      endTime: "2026-11-20T19:05:00Z"\n',
        '      endTime: "2026-11-20T19:05:00Z"\n'
        '    - startTime: "2026-11-21T03:04:00+08:00"\n'
        '      endTime: "2026-11-21T03:09:00+08:00"\n',
    )
    (overlap,) = check_manifest(_loaded_spec(text))
    assert "must not overlap" in overlap.message
    (backwards,) = _time_problems("2026-11-20T19:00:00Z", "2026-11-21T02:59:00+08:00")
    assert "is not after startTime" in backwards
    # 00:00Z to 08:00:01Z, though as written the end is before the start; and 00:00Z to 06:00Z,
    # though as written it is 19 h.
    (long,) = _time_problems("2026-11-21T08:00:00+08:00", "2026-11-21T03:00:01-05:00")
    assert "spans 8 h 1 s" in long
    assert _time_problems("2026-11-20T19:00:00-05:00", "2026-11-21T14:00:00+08:00") == []


def test_the_schema_file_accepts_offsets_as_a_standard_validator_reads_it(
    standard: Standard,
) -> None:
    manifest = _loaded_spec(_times_text("2026-11-21T03:00:00+08:00", "2026-11-20T14:05:00-05:00"))
    assert check_manifest(manifest) == []
    assert standard.errors(manifest.doc) == {}


def test_requests_carry_utc_times_only() -> None:
    """The sandbox (and a saved plan's check) read a request, which is always sent in UTC."""
    manifest = _loaded_spec(_times_text("2026-11-20T19:00:00Z", "2026-11-20T19:05:00Z"))
    body = dict(task_from_manifest(manifest).body)
    assert check_spec(body) == []
    body["recordTimes"] = [
        {"startTime": "2026-11-21T03:00:00+08:00", "endTime": "2026-11-20T19:05:00Z"}
    ]
    ((where, message),) = check_spec(body)
    assert where == "recordTimes[0].startTime"
    assert "2026-11-20T19:00:00Z" in message


# --- host names: one spelling ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "lower"),
    [
        ("publishDomain", "Push.Example.COM", "push.example.com"),
        ("saveEndpoint", "S3.cn-north-1.jdcloud-oss.com", "s3.cn-north-1.jdcloud-oss.com"),
    ],
)
def test_a_host_name_in_upper_case_is_refused_with_its_lower_case_spelling(
    standard: Standard, field: str, value: str, lower: str
) -> None:
    manifest = _loaded_spec(manifest_text(field, value))
    (problem,) = check_manifest(manifest)
    line = 8 if field == "publishDomain" else 15
    assert (problem.location.line, problem.field) == (line, f"spec.{field}")
    assert problem.location.column == len(f"  {field}: ") + 1
    assert f"write {lower}" in problem.message and "lower case" in problem.message
    assert standard.errors(manifest.doc)  # the schema file says the same
    body = dict(task_from_manifest(_loaded_spec(manifest_text(field, lower))).body)
    assert check_spec(body) == []
    ((where, message),) = check_spec({**body, field: value})  # the sandbox refuses it too
    assert where == field and f"write {lower}" in message


def test_a_host_name_in_a_sets_template_is_refused_at_the_template(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "cup-final" / "clips.yaml").read_text(encoding="utf-8")
    path = tmp_path / "set.yaml"
    path.write_text(
        text.replace("publishDomain: push.example.com", "publishDomain: Push.example.com")
    )
    loaded = load_tasks([str(path)])
    (problem,) = loaded.problems
    assert problem.field == "spec.template.publishDomain"
    assert "write push.example.com" in problem.message


# --- an unknown kind names the kinds there are, and nothing else ---------------------------


@pytest.mark.parametrize(
    ("kind", "closest"),
    [("RecordTaskset", "RecordTaskSet"), ("recordtaskset", "RecordTaskSet"),
     ("Recordtask", "RecordTask"), ("RecordNotify", "RecordNotifyConfig")],
)  # fmt: skip
def test_an_unknown_kind_names_the_kinds_closest_first(kind: str, closest: str) -> None:
    for source in (ROOT / "examples" / "cup-final" / "clips.yaml", VALUES / "year-9999.yaml"):
        text = source.read_text(encoding="utf-8").split("---\n")[0]
        written = "RecordTaskSet" if "RecordTaskSet" in text else "RecordTask"
        result = parse_text("kind.yaml", text.replace(f"kind: {written}\n", f"kind: {kind}\n"))
        assert result.problems == []
        (problem,) = check_manifest(result.manifests[0])
        assert problem.field == "kind"
        kinds = problem.message.split("the kinds are ")[1]
        assert kinds.startswith(closest), problem.message
        assert all(name in kinds for name in ("RecordTask,", "RecordTaskSet", "RecordNotifyConfig"))


def test_a_task_written_as_a_notify_config_is_checked_as_one() -> None:
    text = manifest_text("name", "minimal").replace(
        "kind: RecordTask\n", "kind: RecordNotifyConfig\n"
    )
    problems = check_manifest(_loaded_spec(text))
    assert "spec.notifyUrl" in {problem.field for problem in problems}
    assert any("unknown field 'appName'" in problem.message for problem in problems)
    assert not any(problem.field == "kind" for problem in problems)


def test_a_mistyped_set_kind_on_a_large_set_is_told_about_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(many_clips(1_000).replace("kind: RecordTaskSet", "kind: recordtaskset"))
    loaded = load_tasks([str(path)])
    (problem,) = loaded.problems
    assert problem.field == "kind" and "RecordTaskSet" in problem.message


# --- aliases in a set: the set's budget, expansion still bounded ---------------------------


def many_clips(count: int, *, shared_labels: bool = False) -> str:
    head = (
        "apiVersion: reconciler/v1\nkind: RecordTaskSet\nmetadata:\n  name: big\nspec:\n"
        "  template:\n    publishDomain: push.example.com\n    appName: live\n"
        "    streamName: match\n    saveBucket: highlights\n"
        "    saveEndpoint: s3.cn-north-1.jdcloud-oss.com\n    recordFileType: mp4\n  clips:\n"
    )
    start = datetime(2026, 11, 20, 0, 0, 0)
    lines = []
    for n in range(count):
        at = start + timedelta(seconds=20 * n)
        times = (
            f"[{{startTime: '{at.strftime(TIME_FORMAT)}', "
            f"endTime: '{(at + timedelta(seconds=10)).strftime(TIME_FORMAT)}'}}]"
        )
        labels = ""
        if shared_labels:
            labels = ", labels: &shared {kind: goal, team: home}" if n == 0 else ", labels: *shared"
        lines.append(f"    - {{name: c{n}, recordTimes: {times}{labels}}}\n")
    return head + "".join(lines)


def test_a_large_set_with_one_shared_anchor_loads(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(many_clips(3_000, shared_labels=True))
    loaded = load_tasks([str(path)])
    assert loaded.problems == []
    assert len(loaded.tasks) == 3_000
    assert loaded.tasks[-1].labels == {"kind": "goal", "team": "home"}


def test_an_alias_bomb_in_a_set_is_still_refused_and_blamed_on_its_aliases() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
    )
    result = parse_text("bomb.yaml", "apiVersion: reconciler/v1\nkind: RecordTaskSet\n" + bomb)
    (problem,) = result.problems
    assert problem.message.startswith(f"RecordTaskSet holds more than {MAX_VALUES_PER_SET} values")
    assert "repeated by aliases" in problem.message
    assert "as in an alias bomb" in problem.message
