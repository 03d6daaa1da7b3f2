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
import subprocess
import sys
from collections.abc import Iterator
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
from reconciler.manifests import Manifest, parse_text
from reconciler.sandbox import Sandbox, SandboxConfig
from reconciler.schema import check_manifest, check_spec
from reconciler.tasks import Task, load_tasks, task_from_manifest

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RECORD_TASK_SCHEMA = Path(__file__).parent.parent / "schemas" / "record-task.schema.json"

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
