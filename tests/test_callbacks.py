"""reconciler/callbacks.py: a callback body read leniently, and matched to the task it is about.

Pure functions, so no server: the bodies of tests/fixtures/callbacks/ (the receiver's hostile
corpus) and bodies built here, against state entries built from the fixture manifests.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.callbacks import (
    RECORD_DONE,
    Callback,
    CallbackError,
    decide,
    match_callback,
    parse_body,
    parse_callback,
    recording_of,
    request_segments,
    same_clip,
    unmatched_of,
)
from reconciler.state import EvidenceSource, StateEntry, TaskStatus
from reconciler.state.model import generated_external_id
from reconciler.tasks import Task

CORPUS = Path(__file__).parent / "fixtures" / "callbacks"
MATCHED = sorted((CORPUS / "matched").iterdir())
UNMATCHED = sorted((CORPUS / "unmatched").iterdir())
REJECTED = sorted((CORPUS / "rejected").iterdir())
# The id the corpus's matched bodies carry (DESIGN's example), and the minimal task's clip.
CORPUS_ID = "163594946396839936"
BEGIN_MS, END_MS = 1795201200000, 1795201500000
STAMP = "2026-11-20T20:00:00Z"
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # make_task is pure: nothing to reset
    ],
)


def entry_of(task: Task, external_id: str | None = None) -> StateEntry:
    """`task` as the state records it once sent (with our generated id unless told one)."""
    return StateEntry(
        task.hash,
        TaskStatus.SUBMITTED,
        task.name,
        task.source,
        task.request,
        STAMP,
        "r" * 32,
        STAMP,
        external_id if external_id is not None else generated_external_id(task.hash),
    )


def millis(text: str) -> int:
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def body_for(task: Task, **changes: Any) -> dict[str, Any]:
    """The documented callback for `task` (numbers as strings); a change of None drops a key."""
    request = task.request["body"]
    document: dict[str, Any] = {
        "version": "v1.1",
        "publishDomain": request["publishDomain"],
        "appName": request["appName"],
        "streamName": request["streamName"],
        "event": "record_done",
        "status": "success",
        "format": "mp4",
        "duration": "300000.0",
        "fileSize": "6007851",
        "group": [
            {"beginTime": str(millis(s["startTime"])), "endTime": str(millis(s["endTime"]))}
            for s in request["recordTimes"]
        ],
        "downloadUrl": "http://s3.example.com/highlights/x.mp4",
        "taskExternalId": generated_external_id(task.hash),
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not None}


def shifted(task: Task, offset_ms: int, *, end_too: bool = False) -> list[dict[str, int]]:
    """`task`'s segments as a group, the begin (and the end) moved by `offset_ms`."""
    return [
        {
            "beginTime": millis(s["startTime"]) + offset_ms,
            "endTime": millis(s["endTime"]) + (offset_ms if end_too else 0),
        }
        for s in task.request["body"]["recordTimes"]
    ]


@pytest.fixture
def minimal(make_task: Callable[..., Task]) -> Task:
    """The task of tests/fixtures/valid/minimal.yaml, which the corpus's bodies are about."""
    return make_task(0, name="minimal", streamName="match")


# --- the corpus ---------------------------------------------------------------------------------


def test_the_corpus_minimal_task_is_the_one_its_readme_describes(minimal: Task) -> None:
    assert minimal.request["path"] == {
        "publishDomain": "push.example.com",
        "appName": "live",
        "streamName": "match",
    }
    assert request_segments(minimal.request["body"]) == [(BEGIN_MS // 1000, END_MS // 1000)]


@pytest.mark.parametrize("path", MATCHED, ids=lambda p: p.name)
def test_every_matched_body_matches_the_minimal_task(
    path: Path, minimal: Task, make_task: Callable[..., Task]
) -> None:
    callback = parse_body(path.read_bytes())
    other = entry_of(make_task(1))  # another stream, another id
    match = match_callback(callback, [other, entry_of(minimal, CORPUS_ID)])
    assert match.entry is not None and match.entry.hash == minimal.hash, match.reason
    assert match.reason is None


@pytest.mark.parametrize("path", UNMATCHED, ids=lambda p: p.name)
def test_every_unmatched_body_is_kept_with_a_reason(path: Path, minimal: Task) -> None:
    callback = parse_body(path.read_bytes())
    match, recording, unmatched = decide(
        callback, [entry_of(minimal, CORPUS_ID)], lambda _: (), STAMP
    )
    assert match.entry is None and recording is None
    assert unmatched is not None and unmatched.reason == match.reason and match.reason
    assert unmatched.body == json.loads(path.read_bytes())  # kept exactly as received
    assert unmatched.id == callback.id and unmatched.received_at == STAMP


@pytest.mark.parametrize("path", REJECTED, ids=lambda p: p.name)
def test_every_rejected_body_is_a_callback_error(path: Path) -> None:
    with pytest.raises(CallbackError) as raised:
        parse_body(path.read_bytes())
    message = str(raised.value)
    assert message.startswith("the body ") and len(message) < 200


# --- reading leniently -------------------------------------------------------------------------


def test_numbers_as_strings_and_as_numbers_read_the_same(minimal: Task) -> None:
    as_strings = parse_body((CORPUS / "matched" / "documented.json").read_bytes())
    as_numbers = parse_body((CORPUS / "matched" / "numbers-as-numbers.json").read_bytes())
    assert as_strings.segments == as_numbers.segments == ((BEGIN_MS, END_MS),)
    assert as_strings.external_id == as_numbers.external_id == CORPUS_ID
    assert as_strings.file_size == as_numbers.file_size == "6007851133"
    assert as_strings.duration == "300000.0"
    assert as_numbers.duration == "300000"  # a float that is whole is written without noise
    assert as_strings.id != as_numbers.id  # different bodies, even when they mean the same


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795201200000", 1795201200000),
        (" 1795201200000 ", 1795201200000),
        (1795201200000, 1795201200000),
        (1795201200000.0, 1795201200000),
        (1795201200000.9, 1795201200000),  # a fraction of a millisecond is dropped
        ("1795201200000.5", 1795201200000),
        ("1.7952012e12", 1795201200000),
        (-5, -5),
    ],
)
def test_group_times_as_numbers_and_strings(value: object, expected: int) -> None:
    callback = parse_callback({"group": [{"beginTime": value, "endTime": value}]})
    assert callback.segments == ((expected, expected),)


@pytest.mark.parametrize(
    "value",
    [None, True, False, "", "soon", "0x10", [], {}, "1e400", "nan", "inf", "-1e18", 1e300],
)
def test_an_unreadable_group_time_gives_no_segments(value: object) -> None:
    callback = parse_callback({"group": [{"beginTime": value, "endTime": 1}]})
    assert callback.segments is None


@pytest.mark.parametrize("group", [None, [], "1-2", [1, 2], [{"beginTime": 1}], {"a": 1}])
def test_an_unreadable_group_gives_no_segments(group: object) -> None:
    assert parse_callback({"group": group}).segments is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        (163594946396839936, "163594946396839936"),
        (12.5, "12.5"),
        (12.0, "12"),
        (True, None),
        (None, None),
        ([1], None),
        ({"a": 1}, None),
    ],
)
def test_text_fields_read_strings_and_numbers(value: object, expected: str | None) -> None:
    callback = parse_callback(
        {"taskExternalId": value, "fileSize": value, "duration": value, "status": value}
    )
    assert callback.external_id == callback.file_size == callback.duration == expected
    assert callback.status == expected


def test_vod_task_id_names_the_id_in_older_bodies() -> None:
    assert parse_callback({"vodTaskId": "v-1"}).external_id == "v-1"
    assert parse_callback({"vodTaskId": 7}).external_id == "7"
    # taskExternalId wins when a body names both.
    assert parse_callback({"vodTaskId": "v-1", "taskExternalId": "t-1"}).external_id == "t-1"
    # An unreadable taskExternalId falls back to vodTaskId.
    assert parse_callback({"vodTaskId": "v-1", "taskExternalId": None}).external_id == "v-1"


def test_unknown_fields_are_kept_as_received(minimal: Task) -> None:
    raw = (CORPUS / "matched" / "unknown-fields.json").read_bytes()
    callback = parse_body(raw)
    assert callback.body == json.loads(raw)
    assert callback.body["futureField"] == {"nested": [1, 2, {"deeper": None}]}
    assert callback.body["group"][0]["extra"] is True
    unmatched = unmatched_of(callback, "because", STAMP)
    assert unmatched.body == json.loads(raw)
    assert unmatched.to_json()["callback"] == json.loads(raw)


def test_domain_and_format_are_read_in_any_case(minimal: Task) -> None:
    callback = parse_callback(body_for(minimal, publishDomain="PUSH.EXAMPLE.COM", format="MP4"))
    assert callback.publish_domain == "push.example.com" and callback.format == "mp4"
    assert callback.stream == "push.example.com/live/match"
    assert same_clip(callback, entry_of(minimal))
    # appName and streamName are case-sensitive (they are paths at the service).
    assert not same_clip(parse_callback(body_for(minimal, streamName="MATCH")), entry_of(minimal))


def test_missing_fields_are_none_and_the_recording_says_so(minimal: Task) -> None:
    callback = parse_body((CORPUS / "matched" / "missing-fields.json").read_bytes())
    assert callback.event == RECORD_DONE and callback.external_id == CORPUS_ID
    assert (
        callback.status,
        callback.format,
        callback.publish_domain,
        callback.app_name,
        callback.stream_name,
        callback.segments,
        callback.download_url,
        callback.file_size,
        callback.duration,
    ) == (None,) * 9
    assert callback.stream == "?/?/?"
    recording = recording_of(callback, STAMP)
    assert recording.status == "unknown" and recording.format == ""
    assert recording.source is EvidenceSource.CALLBACK and recording.evidence == callback.id
    assert not recording.succeeded


def test_a_recording_carries_what_the_callback_said(minimal: Task) -> None:
    callback = parse_callback(body_for(minimal, fileSize=6007851133, duration="18439.0"))
    recording = recording_of(callback, STAMP)
    assert (recording.format, recording.status, recording.received_at) == ("mp4", "success", STAMP)
    assert recording.download_url == "http://s3.example.com/highlights/x.mp4"
    assert (recording.file_size, recording.duration) == ("6007851133", "18439.0")
    assert recording.succeeded


@pytest.mark.parametrize("value", [[], [1], "x", 1, 1.5, None, True, False])
def test_a_non_object_is_a_callback_error(value: object) -> None:
    with pytest.raises(CallbackError, match="not an object"):
        parse_callback(value)
    with pytest.raises(CallbackError, match="not an object"):
        parse_body(json.dumps(value).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b"{",
        b"\xff\xfe{}",
        b"\x00",
        b'{"a": 1}}',
        b'{"a": NaN}',
        b'{"a": [Infinity]}',
        b'{"a": {"b": -Infinity}}',
        b'{"a": 1e400}',
        b'{"a": [-1e400]}',
        b'{"a": "\\ud83d"}',
        b'{"a": "\\ude00\\ud83d"}',  # a pair the wrong way round is two lone surrogates
        b'{"\\ud800": 1}',
        b'{"a": ' + b"7" * 5000 + b"}",
        b'{"a": "\xc3"}',  # a UTF-8 sequence cut short
        b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (not valid UTF-8)
    ],
)
def test_hostile_bodies_are_callback_errors(raw: bytes) -> None:
    with pytest.raises(CallbackError):
        parse_body(raw)


def test_a_surrogate_pair_is_one_character_not_an_error() -> None:
    callback = parse_body(b'{"streamName": "\\ud83d\\ude00"}')
    assert callback.stream_name == "\N{GRINNING FACE}"


def test_huge_numbers_within_the_limit_are_kept_as_written() -> None:
    digits = "9" * 4000
    callback = parse_body(f'{{"fileSize": {digits}, "duration": 1e20}}'.encode())
    assert callback.file_size == digits
    assert callback.duration == "100000000000000000000"
    assert callback.body["fileSize"] == int(digits)


def test_a_huge_group_time_is_kept_and_shown_without_an_overflow(minimal: Task) -> None:
    huge = 10**30
    body = body_for(minimal, taskExternalId=None, group=[{"beginTime": huge, "endTime": huge}])
    callback = parse_callback(body)
    assert callback.segments == ((huge, huge),)
    match = match_callback(callback, [entry_of(minimal)])
    assert match.entry is None and match.reason is not None and str(huge) in match.reason


@pytest.mark.parametrize("depth", [2_000, 100_000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_a_callback_error(opener: bytes, depth: int) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = b'{"a":' + opener * depth + b"1" + closer * depth + b"}"
    with pytest.raises(CallbackError):
        parse_body(raw)


def test_a_deep_value_built_in_python_is_a_callback_error() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    with pytest.raises(CallbackError, match="cannot be kept as JSON"):
        parse_callback({"event": RECORD_DONE, "deep": value})


def test_a_float_json_has_no_value_for_is_a_callback_error() -> None:
    # The decoder turns 1e400 into infinity; JSON (and the state) has no such value.
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(CallbackError):
            parse_callback({"event": RECORD_DONE, "value": value})


def test_the_same_body_twice_has_the_same_id(minimal: Task) -> None:
    body = body_for(minimal)
    first = parse_body(json.dumps(body).encode())
    # Key order and whitespace are not part of what a callback says.
    reordered = dict(reversed(list(body.items())))
    second = parse_body(json.dumps(reordered, indent=4).encode())
    assert first.id == second.id
    assert first.id == parse_callback(copy.deepcopy(body)).id
    assert len(first.id) == 64 and int(first.id, 16) >= 0
    assert parse_callback(body_for(minimal, format="flv")).id != first.id
    # Text outside ASCII: escaped or not, it is the same text.
    assert parse_body('{"a": "中"}'.encode()).id == parse_body(b'{"a": "\\u4e2d"}').id


# --- matching ----------------------------------------------------------------------------------


def test_matched_by_the_generated_id(minimal: Task, make_task: Callable[..., Task]) -> None:
    other = make_task(1)
    entries = [entry_of(minimal), entry_of(other)]
    assert match_callback(parse_callback(body_for(other)), entries).entry == entries[1]
    # The id decides, even when the stream and times would name another task.
    crossed = body_for(minimal, taskExternalId=generated_external_id(other.hash))
    assert match_callback(parse_callback(crossed), entries).entry == entries[1]


def test_matched_by_the_manifests_own_id(make_task: Callable[..., Task]) -> None:
    task = make_task(1, taskExternalId="mine-1")
    entry = StateEntry(
        task.hash, TaskStatus.SUBMITTED, task.name, task.source, task.request, STAMP
    )  # a version 1 entry: no recorded id, the request's own
    assert entry.sent_external_id == "mine-1"
    match = match_callback(parse_callback(body_for(task, taskExternalId="mine-1")), [entry])
    assert match.entry == entry


def test_an_unknown_id_is_unmatched_even_when_the_stream_fits(minimal: Task) -> None:
    match = match_callback(parse_callback(body_for(minimal, taskExternalId="nobody")), [])
    assert match.entry is None
    assert match.reason == "no task in this state was sent taskExternalId 'nobody'"
    match = match_callback(
        parse_callback(body_for(minimal, taskExternalId="nobody")), [entry_of(minimal)]
    )
    assert match.entry is None and "'nobody'" in (match.reason or "")


@pytest.mark.parametrize(
    ("offset", "matches"),
    [(0, True), (999, True), (-999, True), (1000, False), (-1000, False), (60_000, False)],
)
def test_segments_match_to_the_second(minimal: Task, offset: int, matches: bool) -> None:
    entry = entry_of(minimal)
    for end_too in (False, True):
        body = body_for(
            minimal, taskExternalId=None, group=shifted(minimal, offset, end_too=end_too)
        )
        match = match_callback(parse_callback(body), [entry])
        assert (match.entry == entry) is matches, (offset, end_too, match.reason)
        if not matches:
            assert match.reason is not None
            assert match.reason.startswith("no taskExternalId, and no task in this state records")
            assert "push.example.com/live/match" in match.reason


def test_the_end_alone_off_by_a_second_does_not_match(minimal: Task) -> None:
    group = [{"beginTime": BEGIN_MS, "endTime": END_MS + 1000}]
    body = body_for(minimal, taskExternalId=None, group=group)
    assert match_callback(parse_callback(body), [entry_of(minimal)]).entry is None


def test_several_segments_match_in_any_order(make_task: Callable[..., Task]) -> None:
    times = [
        {"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:05:00Z"},
        {"startTime": "2026-11-20T20:00:00Z", "endTime": "2026-11-20T20:01:00Z"},
    ]
    task = make_task(1, recordTimes=times)
    entry = entry_of(task)
    group = [
        {"beginTime": millis(s["startTime"]), "endTime": millis(s["endTime"])}
        for s in reversed(times)
    ]
    assert (
        match_callback(
            parse_callback(body_for(task, taskExternalId=None, group=group)), [entry]
        ).entry
        == entry
    )
    # One segment of two is not the clip.
    body = body_for(task, taskExternalId=None, group=group[:1])
    assert match_callback(parse_callback(body), [entry]).entry is None


def test_a_shared_id_is_narrowed_by_stream_and_segments(make_task: Callable[..., Task]) -> None:
    # A set's template may give every clip of a match one id: the segments tell them apart.
    tasks = [
        make_task(
            1,
            name=f"goal-{n}",
            streamName="final",
            taskExternalId="cup-final",
            recordTimes=[
                {"startTime": f"2026-11-20T19:0{n}:00Z", "endTime": f"2026-11-20T19:0{n}:30Z"}
            ],
        )
        for n in range(3)
    ]
    entries = [entry_of(task, "cup-final") for task in tasks]
    for task, entry in zip(tasks, entries, strict=True):
        match = match_callback(parse_callback(body_for(task, taskExternalId="cup-final")), entries)
        assert match.entry == entry, match.reason

    # Segments no one of them records: unmatched, saying the id is shared and what was looked for.
    body = body_for(tasks[0], taskExternalId="cup-final", group=shifted(tasks[0], 5000))
    match = match_callback(parse_callback(body), entries)
    assert match.entry is None
    assert match.reason is not None
    assert match.reason.startswith("3 tasks share taskExternalId 'cup-final' and no task")
    assert "push.example.com/live/final with 2026-11-20T19:00:05Z..2026-11-20T19:00:30Z" in (
        match.reason
    )


def test_ambiguous_is_unmatched_and_the_reason_names_the_tasks(
    make_task: Callable[..., Task],
) -> None:
    # Two tasks for the same clip (e.g. saved to two buckets) with one id: which one is unknown.
    first = make_task(1, name="to-bucket-a", taskExternalId="same", saveBucket="a")
    second = make_task(1, name="to-bucket-b", taskExternalId="same", saveBucket="b")
    entries = [entry_of(first, "same"), entry_of(second, "same")]
    match, recording, unmatched = decide(
        parse_callback(body_for(first, taskExternalId="same")), entries, lambda _: (), STAMP
    )
    assert match.entry is None and recording is None and unmatched is not None
    assert match.reason is not None
    assert match.reason.startswith("2 tasks share taskExternalId 'same' and 2 tasks record")
    assert f"to-bucket-a ({first.hash[:12]})" in match.reason
    assert f"to-bucket-b ({second.hash[:12]})" in match.reason
    assert match.reason.endswith("cannot tell which")

    # Without an id, the same: never a guess.
    match = match_callback(parse_callback(body_for(first, taskExternalId=None)), entries)
    assert match.entry is None and match.reason is not None
    assert match.reason.startswith("no taskExternalId, and 2 tasks record")
    assert "to-bucket-a" in match.reason and "to-bucket-b" in match.reason


def test_an_ambiguity_among_many_names_five_and_counts_the_rest(
    make_task: Callable[..., Task],
) -> None:
    tasks = [make_task(1, name=f"copy-{n}", saveBucket=f"bucket-{n}") for n in range(8)]
    entries = [entry_of(task) for task in tasks]
    match = match_callback(parse_callback(body_for(tasks[0], taskExternalId=None)), entries)
    assert match.entry is None and match.reason is not None
    assert "8 tasks record" in match.reason and "and 3 more" in match.reason
    assert sum(f"copy-{n} (" in match.reason for n in range(8)) == 5


@pytest.mark.parametrize("event", ["stream_publish", "record_start", "RECORD_DONE", "", 7])
def test_another_event_is_not_a_record_callback(minimal: Task, event: object) -> None:
    match = match_callback(parse_callback(body_for(minimal, event=event)), [entry_of(minimal)])
    assert match.entry is None and match.reason is not None
    assert match.reason.endswith("not 'record_done': not a record callback")
    assert repr(str(event)) in match.reason


def test_no_event_is_not_a_record_callback(minimal: Task) -> None:
    body = body_for(minimal)
    del body["event"]
    match = match_callback(parse_callback(body), [entry_of(minimal)])
    assert match.reason == "no event, not 'record_done': not a record callback"


@pytest.mark.parametrize("missing", ["publishDomain", "appName", "streamName", "group"])
def test_without_an_id_the_stream_and_segments_are_needed(minimal: Task, missing: str) -> None:
    body = body_for(minimal, taskExternalId=None, **{missing: None})
    match = match_callback(parse_callback(body), [entry_of(minimal)])
    assert match.entry is None
    assert match.reason is not None and match.reason.startswith("no taskExternalId, and no stream")


def test_a_duplicate_is_decided_as_nothing_new(minimal: Task) -> None:
    callback = parse_callback(body_for(minimal))
    entry = entry_of(minimal)
    match, recording, unmatched = decide(callback, [entry], lambda _: (), STAMP)
    assert match.entry == entry and recording is not None and unmatched is None
    held = {minimal.hash: (recording,)}
    again = decide(callback, [entry], lambda key: held.get(key, ()), "2026-11-21T00:00:00Z")
    assert again == (match, None, None)


def test_an_entry_with_an_odd_request_never_matches_by_stream(minimal: Task) -> None:
    callback = parse_callback(body_for(minimal, taskExternalId=None))
    for request in (
        {},
        {"path": "x", "body": {}},
        {"path": {}, "body": []},
        {"path": minimal.request["path"], "body": {"recordTimes": "soon"}},
        {"path": minimal.request["path"], "body": {"recordTimes": [{"startTime": 1}]}},
        {"path": minimal.request["path"], "body": {"recordTimes": [{"startTime": "today"}]}},
    ):
        odd = _OddEntry(request)
        assert same_clip(callback, odd) is False  # type: ignore[arg-type]


class _OddEntry:
    """Just what same_clip reads from an entry: its request (StateEntry refuses odd ones)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request


# --- properties ----------------------------------------------------------------------------------

# Any text, lone surrogates included (the decoder can hand those over from "\\ud800").
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**5000), max_value=10**5000)
    | st.floats()  # NaN and infinities too: 1e400 decodes to one
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = (
    "event",
    "status",
    "format",
    "publishDomain",
    "appName",
    "streamName",
    "group",
    "taskExternalId",
    "vodTaskId",
    "downloadUrl",
    "fileSize",
    "duration",
)
group_times = st.one_of(
    st.integers(min_value=BEGIN_MS - 5000, max_value=END_MS + 5000),
    st.integers(min_value=BEGIN_MS - 5000, max_value=END_MS + 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True),
    json_values,
)
callback_like = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from([RECORD_DONE, "other"]) | json_values,
        "publishDomain": st.sampled_from(["push.example.com", "PUSH.example.com"]) | json_values,
        "appName": st.just("live") | json_values,
        "streamName": st.sampled_from(["match", "clip-1"]) | json_values,
        "taskExternalId": st.sampled_from([CORPUS_ID, "cup-final", ""]) | json_values,
        "vodTaskId": st.just(CORPUS_ID) | json_values,
        "group": st.lists(
            st.fixed_dictionaries({}, optional={"beginTime": group_times, "endTime": group_times}),
            max_size=3,
        )
        | json_values,
        "status": json_values,
        "format": json_values,
        "fileSize": json_values,
        "duration": json_values,
        "downloadUrl": json_values,
        "extra": json_values,
    },
)


def _parsed_or_refused(document: object) -> Callback | None:
    try:
        return parse_callback(document)
    except CallbackError as error:
        assert str(error).startswith("the body ")
        return None


@SETTINGS
@given(json_values)
def test_parse_callback_never_raises_anything_but_callback_error(document: object) -> None:
    callback = _parsed_or_refused(document)
    if callback is not None:
        assert isinstance(document, dict) and callback.body is document
        assert len(callback.id) == 64


@SETTINGS
@given(callback_like)
def test_match_never_raises_and_always_says_why_not(
    make_task: Callable[..., Task], document: dict[str, Any]
) -> None:
    callback = _parsed_or_refused(document)
    if callback is None:
        return
    minimal = make_task(0, name="minimal", streamName="match")
    sharing = make_task(1, name="shared", taskExternalId="cup-final")
    entries = [entry_of(minimal, CORPUS_ID), entry_of(sharing, "cup-final"), entry_of(sharing)]
    match = match_callback(callback, entries)
    assert (match.entry is None) == (match.reason is not None)
    if match.entry is not None:
        assert match.entry in entries
    outcome, recording, unmatched = decide(callback, entries, lambda _: (), STAMP)
    assert outcome == match
    if match.entry is None:
        assert unmatched is not None and unmatched.reason == match.reason
        json.dumps(unmatched.to_json(), allow_nan=False)  # storable as it is
    else:
        assert recording is not None
        json.dumps(recording.to_json(), allow_nan=False)


@SETTINGS
@given(json_values)
def test_parse_body_of_any_json_text_is_a_callback_or_a_callback_error(value: object) -> None:
    try:
        raw = json.dumps({"event": RECORD_DONE, "value": value}).encode("utf-8", "surrogatepass")
    except ValueError:  # e.g. an integer beyond the conversion limit: no JSON text to send
        return
    try:
        callback = parse_body(raw)
    except CallbackError:
        return
    json.dumps(callback.body, allow_nan=False)  # what is accepted can be stored


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "latin-1"])
def test_a_body_in_another_encoding_than_utf_8_is_refused(encoding: str) -> None:
    """json.loads would read UTF-16 and UTF-32 bytes; a callback is JSON in UTF-8 (RFC 8259)."""
    raw = json.dumps({"event": "record_done", "streamName": "Zürich-é"}, ensure_ascii=False)
    with pytest.raises(CallbackError, match="not UTF-8"):
        parse_body(raw.encode(encoding))
