"""verify over a state whose requests were edited by hand, the hash made to match (a state is
committed to Git: anyone with a pull request can write one). Each is refused before anything
is read, naming the state and the task: no traceback, exit 1, the state left as it was, and
`--format json` still one failure document. No server is needed: nothing is asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.identity import request_hash
from tests.test_cli import cli

BODY: dict[str, Any] = {
    "publishDomain": "push.example.com",
    "appName": "live",
    "streamName": "cam",
    "recordTimes": [{"startTime": "2025-05-01T00:00:00Z", "endTime": "2025-05-01T00:10:00Z"}],
    "saveBucket": "clips",
    "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
    "recordFileType": "mp4",
}
PATH = {"publishDomain": "push.example.com", "appName": "live", "streamName": "cam"}
CREDENTIALS = {"JDCLOUD_ACCESS_KEY": "ak", "JDCLOUD_SECRET_KEY": "the-verify-secret"}


def with_body(**changes: Any) -> dict[str, Any]:
    body = {**BODY, **changes}
    return {"path": PATH, "body": {k: v for k, v in body.items() if v is not ...}}


def write_state(folder: Path, request: Any) -> Path:
    state = folder / "state.json"
    entry = {
        "name": "goal-<b>1</b>\x1b[31m",
        "request": request,
        "source": "clips/goal.yaml",
        "status": "submitted",
        "updatedAt": "2025-05-01T00:00:00Z",
        "requestId": "r" * 32,
        "submittedAt": "2025-05-01T00:00:00Z",
    }
    state.write_text(
        json.dumps({"version": 2, "tasks": {request_hash(request): entry}}), encoding="utf-8"
    )
    return state


HOSTILE: dict[str, tuple[Callable[[], Any], str]] = {
    "body a list": (lambda: {"path": PATH, "body": [1, 2]}, "`path` and `body` objects"),
    "path a string": (lambda: {"path": "x", "body": BODY}, "`path` and `body` objects"),
    "no saveBucket": (lambda: with_body(saveBucket=...), "body.saveBucket must be a string"),
    "saveEndpoint an object": (
        lambda: with_body(saveEndpoint={"host": "x"}),
        "body.saveEndpoint must be a string",
    ),
    "streamName a number": (lambda: with_body(streamName=7), "body.streamName must be a string"),
    "saveObject a list": (lambda: with_body(saveObject=["a"]), "body.saveObject must be a string"),
    "recordFileType a number": (
        lambda: with_body(recordFileType=5),
        "body.recordFileType must name a file type",
    ),
    "recordFileType empty": (
        lambda: with_body(recordFileType=";"),
        "body.recordFileType must name a file type",
    ),
    "recordTimes an object": (
        lambda: with_body(recordTimes={"a": 1}),
        "body.recordTimes must be a non-empty list",
    ),
    "recordTimes empty": (lambda: with_body(recordTimes=[]), "non-empty list"),
    "endTime a number": (
        lambda: with_body(recordTimes=[{"startTime": "2025-05-01T00:00:00Z", "endTime": 5}]),
        "body.recordTimes[0].endTime must be a UTC time",
    ),
    "startTime with an offset": (
        lambda: with_body(
            recordTimes=[
                {"startTime": "2025-05-01T08:00:00+08:00", "endTime": "2025-05-01T00:10:00Z"}
            ]
        ),
        "body.recordTimes[0].startTime must be a UTC time",
    ),
    "startTime in other digits": (  # \\d would take them; the clock cannot read them
        lambda: with_body(
            recordTimes=[
                {
                    "startTime": "\u0662\u0660\u0662\u0665-05-01T00:00:00Z",
                    "endTime": "2025-05-01T00:10:00Z",
                }
            ]
        ),
        "body.recordTimes[0].startTime must be a UTC time",
    ),
    "startTime no calendar day": (  # the pattern holds; the calendar does not
        lambda: with_body(
            recordTimes=[{"startTime": "2025-02-30T00:00:00Z", "endTime": "2025-05-01T00:10:00Z"}]
        ),
        "body.recordTimes[0].startTime must be a UTC time",
    ),
    "endTime in month 13": (
        lambda: with_body(
            recordTimes=[{"startTime": "2025-05-01T00:00:00Z", "endTime": "2025-13-01T00:10:00Z"}]
        ),
        "body.recordTimes[0].endTime must be a UTC time",
    ),
    "endTime at hour 24": (
        lambda: with_body(
            recordTimes=[{"startTime": "2025-05-01T00:00:00Z", "endTime": "2025-05-01T24:00:00Z"}]
        ),
        "body.recordTimes[0].endTime must be a UTC time",
    ),
    "a segment a string": (
        lambda: with_body(recordTimes=["2025-05-01T00:00:00Z"]),
        "body.recordTimes[0].startTime must be a UTC time",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_hand_made_request_is_refused_before_anything_is_read(
    tmp_path: Path, case: str, fmt: str
) -> None:
    make, problem = HOSTILE[case]
    state = write_state(tmp_path, make())
    before = state.read_bytes()
    result = cli(
        tmp_path,
        "verify",
        "--state",
        str(state),
        "--storage-endpoint",
        "http://127.0.0.1:9",  # nothing listens: a read would be "unreadable", not this
        "--format",
        fmt,
        env=CREDENTIALS,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert problem in output and "nothing was read or recorded" in output
    assert str(state) in output and "goal-<b>1</b>\\x1b[31m" in output  # named, shown as text
    assert "\x1b" not in output and "the-verify-secret" not in output
    assert state.read_bytes() == before
    assert not state.with_name("state.json.journal").exists()
    if fmt == "json":
        document = json.loads(result.stdout)
        assert document["ok"] is False and problem in document["error"]["message"]
