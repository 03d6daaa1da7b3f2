"""Property tests: however a valid manifest is written, it validates and keeps the same identity.

A valid manifest is generated as plain Python values, then written out as YAML text by a small
emitter that picks, at random, key order, quoting (plain only where the YAML 1.2 core schema
keeps it text), flow or block style, indentation, comments, blank lines, `---`/`...`, a BOM and
CRLF line endings. The loaded task must be exactly the request of the original values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.tasks import (
    BODY_FIELDS,
    OPTIONAL_BODY_FIELDS,
    Task,
    canonical_request,
    load_tasks,
    normalise_file_types,
    request_hash,
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PLACEHOLDERS = ("Date", "ServerId", "AppName", "StreamName", "StartTime", "EndTime", "format")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# --- valid manifests, as values -----------------------------------------------------------------


def _label(first: str, middle: str, size: int) -> st.SearchStrategy[str]:
    """`first`, then up to `size` of `middle`, ending with a `first` character (DNS-label shape)."""
    return st.builds(
        lambda a, b, c: a + b + c if b or c else a,
        st.sampled_from(first),
        st.text(middle, max_size=size),
        st.sampled_from(first),
    ) | st.sampled_from(first)


LOWER_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"
LETTERS_DIGITS = LOWER_DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = _label(LOWER_DIGITS, LOWER_DIGITS + "-", 20)
buckets = st.builds(
    lambda a, b, c: a + b + c,
    st.sampled_from(LOWER_DIGITS),
    st.text(LOWER_DIGITS + "-", min_size=1, max_size=20),
    st.sampled_from(LOWER_DIGITS),
)
# Host names are written in lower case (one spelling, one identity): upper case is refused.
hosts = st.lists(_label(LOWER_DIGITS, LOWER_DIGITS + "-", 10), min_size=1, max_size=4).map(".".join)
# A single URL path segment: no / ? # %, no whitespace or control characters. Everything else,
# including YAML indicators and words YAML 1.1 would turn into booleans or numbers, is fair.
SEGMENT_CHARACTERS = LETTERS_DIGITS + "-_.~:@!$&'()*+,;=[]{}\"\\|^`<>éüß球赛决⚽"
path_segments = st.text(SEGMENT_CHARACTERS, min_size=1, max_size=30).filter(
    lambda text: text not in (".", "..")  # dot segments name another path: refused
) | st.sampled_from(
    ["yes", "no", "on", "off", "y", "n", "true", "False", "null", "~", "2026", "0x1F", "0o17",
     "1e3", ".5", "-1", "1_000", "12:30", "2026-11-20", "2026-11-20T19:00:00Z", ".inf", ".nan",
     "<<", "-", "*a", "&a", "!x", "|", ">", "'", '"', "@home", "`x`"]
)  # fmt: skip
# Default-ignorable characters outside category Cf (fillers, variation selectors): invisible.
INVISIBLE_NOT_CF = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)
free_text = st.text(
    st.characters(
        codec="utf-8",
        # Control, format (invisible) and line-separator characters are refused in free text.
        exclude_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Cf"),
        exclude_characters=INVISIBLE_NOT_CF,
    ),
    max_size=40,
) | st.sampled_from(
    [" padded ", " lead", "trail ", "a  b", "a\u3000b", "x # y", "#x", "a: b", "- x", "[x]",
     "{x}", "'", '"', "\\", "\\n", "yes", "null", "~", "2026", "\u00a0nbsp", "球赛 ⚽"]
)  # fmt: skip
label_keys = _label(LETTERS_DIGITS, LETTERS_DIGITS + "-_./", 12)


@st.composite
def record_times(draw: st.DrawFn) -> list[dict[str, str]]:
    """1..10 ascending, non-overlapping segments, together >= 10 s, spanning <= 8 h."""
    start = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31))).replace(microsecond=0)
    count = draw(st.integers(1, 10))
    durations = draw(st.lists(st.integers(1, 1440), min_size=count, max_size=count))
    gaps = draw(st.lists(st.integers(0, 1440), min_size=count - 1, max_size=count - 1))
    edge = draw(st.sampled_from(["none", "shortest", "longest"]))
    if edge == "shortest" or sum(durations) < 10:
        durations = [1] * count
        durations[0] += 10 - count
    if edge == "longest":  # the first start to the last end is exactly 8 h
        durations[-1] += 8 * 3600 - sum(durations) - sum(gaps)
    segments = []
    at = start
    for index, duration in enumerate(durations):
        end = at + timedelta(seconds=duration)
        segments.append(
            {"startTime": at.strftime(TIME_FORMAT), "endTime": end.strftime(TIME_FORMAT)}
        )
        at = end + timedelta(seconds=gaps[index] if index < len(gaps) else 0)
    assert sum(durations) >= 10
    assert sum(durations) + sum(gaps) <= 8 * 3600
    return segments


@st.composite
def file_types(draw: st.DrawFn) -> str:
    kinds = draw(
        st.lists(st.sampled_from(["ts", "flv", "mp4"]), min_size=1, max_size=3, unique=True)
    )
    return ";".join(
        "".join(c.upper() if draw(st.booleans()) else c for c in kind) for kind in kinds
    )


save_objects = st.lists(
    st.sampled_from([f"{{{name}}}" for name in PLACEHOLDERS])
    | st.text(LOWER_DIGITS + "-_.", min_size=1, max_size=8),
    min_size=1,
    max_size=6,
).flatmap(
    lambda parts: st.lists(
        st.sampled_from(["/", "_", "-", "."]), min_size=len(parts), max_size=len(parts)
    ).map(lambda seps: "".join(part + sep for part, sep in zip(parts, seps, strict=True))[:-1])
) | st.just("record/{Date}/{ServerId}/{AppName}/{StreamName}/{StartTime}_{EndTime}.{format}")


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest (optional fields present or absent; null is not text, so never null)."""
    spec: dict[str, Any] = {
        "publishDomain": draw(hosts),
        "appName": draw(path_segments),
        "streamName": draw(path_segments),
        "recordTimes": draw(record_times()),
        "saveBucket": draw(buckets),
        "saveEndpoint": draw(hosts),
        "recordFileType": draw(file_types()),
    }
    for name, values in (("saveObject", save_objects), ("taskExternalId", free_text)):
        if draw(st.booleans()):
            spec[name] = draw(values.filter(bool))
    metadata: dict[str, Any] = {"name": draw(names)}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(label_keys, free_text, max_size=3))
    return {"apiVersion": "reconciler/v1", "kind": "RecordTask", "metadata": metadata, "spec": spec}


# --- writing values as YAML text, in many styles ------------------------------------------------

# What the YAML 1.2 core schema reads as null, a boolean or a number when written plain.
CORE_NOT_TEXT = re.compile(
    r"~|null|Null|NULL|true|True|TRUE|false|False|FALSE"
    r"|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def plain_is_safe(text: str, flow: bool) -> bool:
    """Conservative: plain only for text that YAML cannot read as anything but this text."""
    if not text or CORE_NOT_TEXT.fullmatch(text) or not text[0].isalnum():
        return False
    for index, char in enumerate(text):
        if char.isalnum() or char in "-._/;~" or (char in "{}" and not flow):
            continue
        following = text[index + 1 : index + 2]
        if char == ":" and following.isalnum():
            continue
        return False
    return True


class Writer:
    """Renders values as YAML lines, drawing every style decision from hypothesis."""

    def __init__(self, draw: st.DrawFn, comments: bool) -> None:
        self.draw = draw
        self.comments = comments

    def scalar(self, value: str, flow: bool, *, key: bool = False) -> str:
        styles = ["single", "double"] + (["plain"] * 2 if plain_is_safe(value, flow) else [])
        style = self.draw(st.sampled_from(styles))
        if style == "plain":
            return value
        if style == "single":
            return "'" + value.replace("'", "''") + "'"
        escape_non_ascii = not key and self.draw(st.booleans())
        out = []
        for char in value:
            if char in '\\"':
                out.append("\\" + char)
            elif escape_non_ascii and ord(char) > 0x7F:
                out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
            else:
                out.append(char)
        return '"' + "".join(out) + '"'

    def comment(self) -> str:
        return "#" + self.draw(st.sampled_from(["", " "])) + self.draw(free_text)

    def trailing(self) -> str:
        if not (self.comments and self.draw(st.booleans())):
            return ""
        return self.draw(st.sampled_from([" ", "  ", "   "])) + self.comment()

    def extras(self, indent: int) -> list[str]:
        """Blank lines and comment lines, at any indentation (they do not count for YAML)."""
        if not self.comments:
            return []
        lines = []
        for _ in range(self.draw(st.integers(0, 2))):
            if self.draw(st.booleans()):
                lines.append(" " * self.draw(st.integers(0, indent + 2)) + self.comment())
            else:
                lines.append(" " * self.draw(st.integers(0, 3)))
        return lines

    def flow(self, value: Any) -> str:
        comma = self.draw(st.sampled_from([", ", ",", " , "]))
        if isinstance(value, dict):
            keys = self.draw(st.permutations(list(value)))
            inner = comma.join(
                f"{self.scalar(k, True, key=True)}: {self.flow(value[k])}" for k in keys
            )
            pad = self.draw(st.sampled_from(["", " "])) if inner else ""
            return "{" + pad + inner + pad + "}"
        if isinstance(value, list):
            return "[" + comma.join(self.flow(item) for item in value) + "]"
        return self.scalar(value, True)

    def mapping(self, value: dict[str, Any], indent: int, *, in_list: bool = False) -> list[str]:
        lines: list[str] = []
        for position, key in enumerate(self.draw(st.permutations(list(value)))):
            if not (in_list and position == 0):  # that line becomes "- key: ..."
                lines += self.extras(indent)
            head = " " * indent + self.scalar(key, False, key=True) + ":"
            item = value[key]
            if isinstance(item, dict | list) and item and self.draw(st.booleans()):
                lines.append(head + self.trailing())
                if isinstance(item, dict):
                    lines += self.mapping(item, indent + self.draw(st.integers(1, 4)))
                else:  # a block list may sit at its key's indentation
                    lines += self.sequence(item, indent + self.draw(st.integers(0, 3)))
            else:
                text = (
                    self.flow(item) if isinstance(item, dict | list) else self.scalar(item, False)
                )
                lines.append(head + " " + text + self.trailing())
        return lines

    def sequence(self, items: list[Any], indent: int) -> list[str]:
        lines: list[str] = []
        for item in items:
            lines += self.extras(indent)
            if isinstance(item, dict) and item and self.draw(st.booleans()):
                body = self.mapping(item, indent + 2, in_list=True)
                body[0] = " " * indent + "- " + body[0][indent + 2 :]
                lines += body
            else:
                lines.append(" " * indent + "- " + self.flow(item) + self.trailing())
        return lines

    def document(self, doc: dict[str, Any]) -> bytes:
        lines = self.extras(0)
        if self.draw(st.booleans()):
            lines.append(
                "---" + (" " + self.comment() if self.comments and self.draw(st.booleans()) else "")
            )
        if self.draw(st.sampled_from(["block"] * 5 + ["flow"])) == "flow":
            lines.append(self.flow(doc))
        else:
            lines += self.mapping(doc, 0)
        lines += self.extras(0)
        ending = self.draw(st.sampled_from(["", "...", "---"]))  # `---`: an empty last document
        if ending:
            lines.append(ending)
        newline = self.draw(st.sampled_from(["\n", "\r\n"]))
        text = newline.join(lines) + (newline if self.draw(st.booleans()) else "")
        bom = b"\xef\xbb\xbf" if self.draw(st.booleans()) else b""
        return bom + text.encode("utf-8")


@st.composite
def written(draw: st.DrawFn, doc: dict[str, Any]) -> bytes:
    return Writer(draw, comments=draw(st.booleans())).document(doc)


# --- the properties -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


def load_one(folder: Path, text: bytes, name: str) -> Task:
    path = folder / name
    path.write_bytes(text)
    result = load_tasks([str(path)])
    shown = text.decode("utf-8", "replace")
    assert result.problems == [], f"{[str(p) for p in result.problems]}\n{shown}"
    assert len(result.tasks) == 1, shown
    return result.tasks[0]


file_names = st.builds(
    lambda stem, suffix: stem + suffix,
    st.text(LOWER_DIGITS + "-_", min_size=1, max_size=12),
    st.sampled_from([".yaml", ".yml"]),
)


@SETTINGS
@given(data=st.data(), doc=manifests(), name=file_names)
def test_any_way_of_writing_a_valid_manifest_validates_to_the_same_request(
    folder: Path, data: st.DataObject, doc: dict[str, Any], name: str
) -> None:
    task = load_one(folder, data.draw(written(doc), label="yaml"), name)
    spec = doc["spec"]
    assert task.request == canonical_request(spec)
    assert task.hash == request_hash(canonical_request(spec))
    # And the request holds exactly the values generated, not what a YAML reader made of them.
    assert task.path == {key: spec[key] for key in ("publishDomain", "appName", "streamName")}
    assert task.body["recordTimes"] == spec["recordTimes"]
    assert task.body["recordFileType"] == ";".join(
        sorted(kind.lower() for kind in spec["recordFileType"].split(";"))
    )
    for key in OPTIONAL_BODY_FIELDS:
        assert task.body.get(key) == spec.get(key)
    assert task.name == doc["metadata"]["name"]
    assert dict(task.labels) == doc["metadata"].get("labels", {})


@SETTINGS
@given(data=st.data(), doc=manifests())
def test_identity_ignores_formatting_metadata_and_file_name(
    folder: Path, data: st.DataObject, doc: dict[str, Any]
) -> None:
    first = load_one(folder, data.draw(written(doc), label="first"), "first.yaml")
    other = copy.deepcopy(doc)
    other["metadata"] = {"name": data.draw(names, label="name")}
    if data.draw(st.booleans(), label="labels"):
        other["metadata"]["labels"] = data.draw(st.dictionaries(label_keys, free_text, max_size=3))
    second = load_one(folder, data.draw(written(other), label="second"), "sub-second.yml")
    assert second.hash == first.hash


def changed(spec: dict[str, Any], field: str, draw: Callable[..., Any]) -> dict[str, Any]:
    """The spec with one sent field changed to another valid value."""
    spec = copy.deepcopy(spec)
    value: Any = spec.get(field)
    if field in ("publishDomain", "saveEndpoint"):
        spec[field] = "x." + value
    elif field in ("appName", "streamName"):
        spec[field] = value + "x"
    elif field == "saveBucket":
        spec[field] = value[:-1] + ("a" if value[-1] != "a" else "b")
    elif field == "recordFileType":
        spec[field] = "flv" if normalise_file_types(value) == "mp4" else "mp4"
    elif field == "recordTimes":  # the same clip one second later
        for segment in spec[field]:
            for end in ("startTime", "endTime"):
                moved = datetime.strptime(segment[end], TIME_FORMAT) + timedelta(seconds=1)
                segment[end] = moved.strftime(TIME_FORMAT)
    elif value is None:  # an optional field: set it, change it, or leave it out
        spec[field] = "x"
    elif draw(st.booleans()):
        del spec[field]
    else:
        spec[field] = value + "x"
    return spec


@SETTINGS
@given(
    data=st.data(),
    doc=manifests(),
    field=st.sampled_from(sorted({*BODY_FIELDS, *OPTIONAL_BODY_FIELDS})),
)
def test_changing_any_sent_field_changes_the_identity(
    folder: Path, data: st.DataObject, doc: dict[str, Any], field: str
) -> None:
    before = load_one(folder, data.draw(written(doc), label="before"), "before.yaml")
    other = copy.deepcopy(doc)
    other["spec"] = changed(doc["spec"], field, data.draw)
    after = load_one(folder, data.draw(written(other), label="after"), "after.yaml")
    assert after.hash == request_hash(canonical_request(other["spec"]))
    assert after.hash != before.hash
    assert after.request["body"] != before.request["body"]


@settings(max_examples=200, deadline=None)
@given(spec=manifests().map(lambda doc: doc["spec"]), data=st.data())
def test_file_type_case_and_order_do_not_change_the_identity(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    kinds = data.draw(st.permutations(spec["recordFileType"].split(";")))
    other = {
        **spec,
        "recordFileType": ";".join(
            "".join(c.swapcase() if data.draw(st.booleans()) else c for c in kind) for kind in kinds
        ),
    }
    request = canonical_request(other)
    assert request_hash(request) == request_hash(canonical_request(spec))
    assert request["body"]["recordFileType"] == ";".join(
        sorted(spec["recordFileType"].lower().split(";"))
    )


def test_the_writer_can_produce_what_the_properties_claim() -> None:
    """The generator is not vacuous: plain values YAML 1.1 would mangle do get written plain."""
    assert plain_is_safe("yes", flow=False)
    assert plain_is_safe("2026-11-20T19:00:00Z", flow=True)
    assert plain_is_safe("archive/{Date}/x", flow=False)
    assert not plain_is_safe("archive/{Date}/x", flow=True)
    unsafe = ["2026", "0x1F", "1e3", "true", "~", "null", "-x", "a b", "a: b", "a #b", "", ".inf"]
    for text in unsafe:
        assert not plain_is_safe(text, flow=False), text
