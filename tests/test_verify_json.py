"""verify's JSON document is written two ways: `verify_json` (the documented structure, as
dicts) and `verify_json_text` (the text printed, the tasks written straight from the checks,
for speed). For any result, the printed text must be exactly json.dumps of the document."""

from __future__ import annotations

import json
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.bucket import Place
from reconciler.state import StateEntry, TaskStatus
from reconciler.text import json_text
from reconciler.verify import (
    BucketFailure,
    CheckResult,
    FileCheck,
    Target,
    TaskCheck,
    VerifyResult,
    Via,
    verify_json,
    verify_json_text,
)

# Any text a state or a bucket can hold (a lone surrogate cannot be printed by either writer).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
STAMP = st.datetimes(min_value=datetime(1000, 1, 1)).map(
    lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")
)
PLACES = st.builds(Place, TEXT, TEXT, TEXT)

files = st.one_of(
    st.builds(FileCheck, TEXT),  # not found
    st.builds(
        FileCheck,
        TEXT,
        TEXT,
        st.none() | st.integers(min_value=0, max_value=2**63),
        TEXT,
        st.sampled_from(list(Via)),
    ),
)


@st.composite
def checks(draw: st.DrawFn) -> TaskCheck:
    times = {"startTime": draw(STAMP), "endTime": draw(STAMP)}
    path = {"publishDomain": draw(TEXT), "appName": draw(TEXT), "streamName": draw(TEXT)}
    request = {
        "path": path,
        "body": {**path, "recordTimes": [times, *draw(st.lists(st.just(times), max_size=1))]},
    }
    entry = StateEntry(
        draw(HEX64),
        draw(st.sampled_from(list(TaskStatus))),
        draw(TEXT),
        draw(TEXT),
        request,
        draw(STAMP),
    )
    target = Target(entry, draw(TEXT), draw(st.none() | st.integers(min_value=1, max_value=10**6)))
    return TaskCheck(
        target,
        draw(PLACES),
        draw(TEXT),
        draw(st.sampled_from(list(CheckResult))),
        tuple(draw(st.lists(files, max_size=3))),
    )


@st.composite
def results(draw: st.DrawFn) -> VerifyResult:
    found = tuple(draw(st.lists(checks(), max_size=4)))
    places = [check.place for check in found]
    failures = tuple(
        BucketFailure(place, draw(TEXT), draw(st.integers(min_value=0, max_value=9)))
        for place in dict.fromkeys(places)
        if draw(st.booleans())
    )
    return VerifyResult(
        checked_at=draw(STAMP),
        grace_seconds=draw(st.integers(min_value=0, max_value=10**6)),
        checks=found,
        failures=failures,
        not_due=draw(st.integers(min_value=0, max_value=99)),
        already_found=draw(st.integers(min_value=0, max_value=99)),
        recorded=draw(st.integers(min_value=0, max_value=99)),
        places=tuple(
            (place, tuple(draw(st.lists(TEXT, max_size=2)))) for place in dict.fromkeys(places)
        ),
    )


@settings(max_examples=300)
@given(results(), TEXT)
def test_the_printed_document_is_json_dumps_of_verify_json(
    result: VerifyResult, state: str
) -> None:
    document = verify_json(result, state_path=state)
    assert verify_json_text(result, state_path=state) == json.dumps(
        document, indent=2, ensure_ascii=False
    )
    assert json_text(document) == verify_json_text(result, state_path=state)
