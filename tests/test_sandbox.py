"""Tests for reconciler.sandbox: the local stand-in of the Live API, over real loopback sockets."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import queue
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

import reconciler.sandbox
from reconciler.client import LiveClient, UnknownOutcomeError
from reconciler.sandbox import (
    Sandbox,
    SandboxConfig,
    parse_failures,
    running_sandbox,
    serve,
)
from reconciler.schema import check_spec
from reconciler.signing import (
    Credentials,
    canonical_request,
    compute_signature,
    sign_request,
)

ROOT = Path(__file__).resolve().parent.parent
REQUEST_ID = re.compile(r"^[a-z0-9]{32}$")
PATH_KEYS = ("publishDomain", "appName", "streamName")


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "accepted.jsonl"


@pytest.fixture
def box(journal: Path) -> Iterator[Sandbox]:
    with running_sandbox(SandboxConfig(journal=journal)) as sandbox:
        yield sandbox


def task_url(sandbox: Sandbox, body: dict[str, Any], path: dict[str, str] | None = None) -> str:
    params = path or {key: body[key] for key in PATH_KEYS}
    segments = [quote(params[key], safe="") for key in PATH_KEYS]
    return sandbox.url + "/v1/records/{}/appNames/{}/streamNames/{}/task".format(*segments)


def signed(url: str, data: bytes, credentials: Credentials, **options: Any) -> dict[str, str]:
    return sign_request(
        "POST", url, {"Content-Type": "application/json"}, data, credentials, **options
    )


def post(
    sandbox: Sandbox,
    body: Any,
    *,
    path: dict[str, str] | None = None,
    credentials: Credentials | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    """POST `body` signed with our signer (the sandbox's credentials unless given)."""
    url = task_url(sandbox, body, path) if isinstance(body, dict) else task_url(sandbox, {}, path)
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    headers = signed(url, data, credentials or sandbox.credentials)
    response = (session or requests).post(url, data=data, headers=headers, timeout=10)
    # The secret is never echoed, whatever the answer.
    assert sandbox.credentials.secret_key not in response.text
    return response


def assert_error(response: requests.Response, code: int, status: str) -> dict[str, Any]:
    """The answer is JD Cloud's error shape, with a fresh requestId; returns error."""
    assert response.status_code == code, response.text
    document = response.json()
    assert REQUEST_ID.match(document["requestId"])
    assert response.headers["x-jdcloud-request-id"] == document["requestId"]
    error: dict[str, Any] = document["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert error["message"]
    return error


def journal_lines(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]


# --- accepting ---------------------------------------------------------------------------------


def test_signed_request_is_accepted_and_journalled(
    box: Sandbox, journal: Path, base_spec: dict[str, Any]
) -> None:
    response = post(box, base_spec)

    assert response.status_code == 200, response.text
    request_id = response.json()["requestId"]
    assert REQUEST_ID.match(request_id)
    assert response.json() == {"requestId": request_id}
    [task] = box.accepted()
    assert task["requestId"] == request_id
    assert task["path"] == {key: base_spec[key] for key in PATH_KEYS}
    assert task["body"] == base_spec
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", task["receivedAt"])
    assert journal_lines(journal) == [task]
    assert box.counts().accepted == 1


def test_every_answer_has_a_fresh_request_id(box: Sandbox, base_spec: dict[str, Any]) -> None:
    ids = {post(box, base_spec).json()["requestId"] for _ in range(5)}
    assert len(ids) == 5


def test_accepted_returns_a_copy(box: Sandbox, base_spec: dict[str, Any]) -> None:
    post(box, base_spec)
    box.accepted()[0]["body"]["saveBucket"] = "changed"
    assert box.accepted()[0]["body"]["saveBucket"] == base_spec["saveBucket"]


def test_null_optional_fields_are_absent(
    box: Sandbox, journal: Path, base_spec: dict[str, Any]
) -> None:
    body = {**base_spec, "saveObject": None, "taskExternalId": None}
    response = post(box, body)

    assert response.status_code == 200, response.text
    assert journal_lines(journal)[0]["body"] == base_spec


def test_path_segments_are_percent_decoded(box: Sandbox, base_spec: dict[str, Any]) -> None:
    # `+` travels as %2B and must come out as `+`, not as a space.
    body = {**base_spec, "appName": "直播", "streamName": "cup+final"}
    url = task_url(box, body)
    assert "cup%2Bfinal" in url

    response = post(box, body)

    assert response.status_code == 200, response.text
    assert box.accepted()[0]["path"]["appName"] == "直播"
    assert box.accepted()[0]["path"]["streamName"] == "cup+final"


def test_path_parameters_alone_are_enough(box: Sandbox, base_spec: dict[str, Any]) -> None:
    body = {key: value for key, value in base_spec.items() if key not in PATH_KEYS}
    response = post(box, body, path={key: base_spec[key] for key in PATH_KEYS})
    assert response.status_code == 200, response.text
    assert box.accepted()[0]["path"]["streamName"] == base_spec["streamName"]


def test_concurrent_requests_are_each_accepted_once(
    box: Sandbox, journal: Path, base_spec: dict[str, Any]
) -> None:
    answers: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with requests.Session() as session:
            for i in range(10):
                body = {**base_spec, "streamName": f"clip-{n}-{i}"}
                response = post(box, body, session=session)
                assert response.status_code == 200, response.text
                with lock:
                    answers.append(response.json()["requestId"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == len(set(answers)) == 80
    assert sorted(task["requestId"] for task in box.accepted()) == sorted(answers)
    assert sorted(line["requestId"] for line in journal_lines(journal)) == sorted(answers)


def test_reconcilers_own_client_works(box: Sandbox, base_spec: dict[str, Any]) -> None:
    with LiveClient(box.credentials, endpoint=box.url) as client:
        result = client.add_live_record_task({key: base_spec[key] for key in PATH_KEYS}, base_spec)
    assert result.http_status == 200
    assert [task["requestId"] for task in box.accepted()] == [result.request_id]


# --- the official SDK, unchanged ---------------------------------------------------------------


def send_with_official_sdk(sandbox: Sandbox, spec: dict[str, Any], secret_key: str) -> Any:
    from jdcloud_sdk.core.config import Config
    from jdcloud_sdk.core.credential import Credential
    from jdcloud_sdk.core.logger import FATAL, Logger
    from jdcloud_sdk.services.live.apis.AddLiveRecordTaskRequest import (
        AddLiveRecordTaskParameters,
        AddLiveRecordTaskRequest,
    )
    from jdcloud_sdk.services.live.client.LiveClient import LiveClient as SdkLiveClient
    from jdcloud_sdk.services.live.models.RecordTime import RecordTime

    parameters = AddLiveRecordTaskParameters(
        spec["publishDomain"],
        spec["appName"],
        spec["streamName"],
        [RecordTime(t["startTime"], t["endTime"]) for t in spec["recordTimes"]],
        spec["saveBucket"],
        spec["saveEndpoint"],
        spec["recordFileType"],
    )  # saveObject / taskExternalId stay None: the SDK sends them as null
    client = SdkLiveClient(
        Credential(sandbox.credentials.access_key, secret_key),
        Config(endpoint=f"127.0.0.1:{sandbox.port}", scheme="http", timeout=10),
        logger=Logger(FATAL),  # its default logger prints every header to stdout
    )
    return client.send(AddLiveRecordTaskRequest(parameters))


def test_official_sdk_is_accepted(box: Sandbox, base_spec: dict[str, Any]) -> None:
    response = send_with_official_sdk(box, base_spec, box.credentials.secret_key)

    assert response.error is None
    assert REQUEST_ID.match(response.request_id)
    [task] = box.accepted()
    assert task["requestId"] == response.request_id
    assert task["body"] == base_spec  # its nulls were dropped


def test_official_sdk_gets_a_clean_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    response = send_with_official_sdk(box, base_spec, "not-the-secret")

    assert REQUEST_ID.match(response.request_id)
    assert response.error.code == 401
    assert response.error.status == "UNAUTHENTICATED"
    assert "signature" in response.error.message
    assert box.accepted() == []


# --- refusing: 401 -----------------------------------------------------------------------------


def test_wrong_secret_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    wrong = Credentials(box.credentials.access_key, "not-the-secret")
    response = post(box, base_spec, credentials=wrong)

    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert "signature does not match" in error["message"]
    assert "not-the-secret" not in response.text
    assert "Signature=" not in response.text
    assert box.accepted() == []
    assert box.counts().rejected == {401: 1}


def test_unknown_access_key_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    stranger = Credentials("someone-else", box.credentials.secret_key)
    error = assert_error(post(box, base_spec, credentials=stranger), 401, "UNAUTHENTICATED")
    assert "unknown access key" in error["message"]


def test_tampered_body_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    url = task_url(box, base_spec)
    data = json.dumps(base_spec).encode()
    headers = signed(url, data, box.credentials)
    tampered = data.replace(b'"highlights"', b'"elsewhere"')
    assert tampered != data

    response = requests.post(url, data=tampered, headers=headers, timeout=10)

    assert_error(response, 401, "UNAUTHENTICATED")
    assert box.accepted() == []


def test_missing_authorization_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    url = task_url(box, base_spec)
    response = requests.post(url, json=base_spec, timeout=10)
    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert "Authorization" in error["message"]


def test_signature_without_host_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    # A signature that is correct for the headers it names, but does not name host: a request
    # signed like that could be replayed against another host.
    url = task_url(box, base_spec)
    data = json.dumps(base_spec).encode()
    date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload_hash = hashlib.sha256(data).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "x-jdcloud-date": date,
        "x-jdcloud-nonce": "0b9c2f57-6b8a-4a1e-9d8f-2f4c6f0e1a11",
        "x-jdcloud-content-sha256": payload_hash,
    }
    names = [("content-type", "application/json"), ("x-jdcloud-date", date)]
    request = canonical_request("POST", urlsplit(url).path, "", names, payload_hash)
    signature = compute_signature(box.credentials.secret_key, date, "jdcloud-api", "live", request)
    headers["Authorization"] = (
        f"JDCLOUD3-HMAC-SHA256 Credential={box.credentials.access_key}/{date[:8]}/jdcloud-api/"
        f"live/jdcloud3_request, SignedHeaders=content-type;x-jdcloud-date, Signature={signature}"
    )

    response = requests.post(url, data=data, headers=headers, timeout=10)

    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert "host" in error["message"]


def test_stale_date_is_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    url = task_url(box, base_spec)
    data = json.dumps(base_spec).encode()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    headers = signed(url, data, box.credentials, now=an_hour_ago)

    response = requests.post(url, data=data, headers=headers, timeout=10)

    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert "clock" in error["message"]


# --- refusing: 400 -----------------------------------------------------------------------------


def test_invalid_body_is_400_with_the_rules_message(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    body = copy.deepcopy(base_spec)
    body["recordTimes"] = [{"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:00:09Z"}]
    problems = check_spec(body)
    assert problems  # the same rules as `reconciler validate`

    response = post(box, body)

    error = assert_error(response, 400, "INVALID_ARGUMENT")
    for where, message in problems:
        assert f"{where}: {message}" in error["message"]
    assert "10 s" in error["message"]
    assert box.accepted() == []


def test_unknown_field_is_400(box: Sandbox, base_spec: dict[str, Any]) -> None:
    error = assert_error(post(box, {**base_spec, "saveBuckte": "x"}), 400, "INVALID_ARGUMENT")
    assert "saveBuckte" in error["message"]


def test_path_and_body_mismatch_is_400(box: Sandbox, base_spec: dict[str, Any]) -> None:
    path = {key: base_spec[key] for key in PATH_KEYS}
    body = {**base_spec, "streamName": "another-stream"}

    response = post(box, body, path=path)

    error = assert_error(response, 400, "INVALID_ARGUMENT")
    assert "streamName" in error["message"]
    assert "another-stream" in error["message"]
    assert box.accepted() == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"appName": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"saveBucket": "a", "saveBucket": "b"}', "appears twice"),
        (b'{"saveBucket": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_json_is_400(
    box: Sandbox, base_spec: dict[str, Any], data: bytes, expected: str
) -> None:
    response = post(box, data, path={key: base_spec[key] for key in PATH_KEYS})
    error = assert_error(response, 400, "INVALID_ARGUMENT")
    assert expected in error["message"]


# --- other routes ------------------------------------------------------------------------------


def test_unknown_path_is_404_in_jd_cloud_shape(box: Sandbox) -> None:
    response = requests.get(box.url + "/v1/records", timeout=10)
    assert_error(response, 404, "NOT_FOUND")


def test_wrong_method_is_405_in_jd_cloud_shape(box: Sandbox, base_spec: dict[str, Any]) -> None:
    response = requests.get(task_url(box, base_spec), timeout=10)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["Allow"] == "POST"

    response = requests.post(box.url + "/_sandbox/tasks", json={}, timeout=10)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")


def test_sandbox_tasks_lists_what_was_accepted(box: Sandbox, base_spec: dict[str, Any]) -> None:
    assert requests.get(box.url + "/_sandbox/tasks", timeout=10).json() == {
        "tasks": [],
        "count": 0,
    }
    request_id = post(box, base_spec).json()["requestId"]

    document = requests.get(box.url + "/_sandbox/tasks", timeout=10).json()

    assert document["count"] == 1
    assert document["tasks"] == box.accepted()
    assert document["tasks"][0]["requestId"] == request_id


def test_health(box: Sandbox) -> None:
    response = requests.get(box.url + "/_sandbox/health", timeout=10)
    assert response.status_code == 200
    assert "not JD Cloud" in response.json()["server"]
    assert "not JD Cloud" in response.headers["Server"]


def test_chunked_body_is_refused_in_jd_cloud_shape(box: Sandbox, base_spec: dict[str, Any]) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps(base_spec).encode()

    response = requests.post(task_url(box, base_spec), data=chunks(), timeout=10)
    assert_error(response, 411, "LENGTH_REQUIRED")


def test_malformed_request_line_gets_a_json_error(box: Sandbox) -> None:
    with socket.create_connection(("127.0.0.1", box.port), timeout=10) as connection:
        connection.sendall(b"NONSENSE\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    document = json.loads(body)
    assert REQUEST_ID.match(document["requestId"])
    assert document["error"]["code"] == 400


# --- faults ------------------------------------------------------------------------------------


def test_injected_503_carries_retry_after_and_creates_nothing(
    journal: Path, base_spec: dict[str, Any]
) -> None:
    config = SandboxConfig(failures=parse_failures("503:1"), journal=journal)
    with running_sandbox(config) as sandbox:
        response = post(sandbox, base_spec)

        assert_error(response, 503, "UNAVAILABLE")
        assert response.headers["Retry-After"] == "0"
        assert sandbox.accepted() == []
        assert sandbox.counts().injected == {503: 1}
    assert journal_lines(journal) == []


def test_injected_500_creates_nothing(journal: Path, base_spec: dict[str, Any]) -> None:
    with running_sandbox(SandboxConfig(failures={500: 1.0}, journal=journal)) as sandbox:
        response = post(sandbox, base_spec)

        assert_error(response, 500, "INTERNAL")
        assert "Retry-After" not in response.headers
        assert sandbox.accepted() == []
    assert journal_lines(journal) == []


def test_faults_come_after_the_checks(base_spec: dict[str, Any]) -> None:
    # A bad signature is a 401 even when every checked request would fail: faults model the
    # service, the checks model the contract.
    with running_sandbox(SandboxConfig(failures={503: 1.0})) as sandbox:
        wrong = Credentials(sandbox.credentials.access_key, "not-the-secret")
        assert_error(post(sandbox, base_spec, credentials=wrong), 401, "UNAUTHENTICATED")


def test_drop_accepts_the_task_and_hangs_up(journal: Path, base_spec: dict[str, Any]) -> None:
    with running_sandbox(SandboxConfig(drop_rate=1.0, journal=journal)) as sandbox:
        with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            post(sandbox, base_spec)

        # The nasty case: the task exists although the client never heard.
        [task] = sandbox.accepted()
        assert task["body"] == base_spec
        assert sandbox.counts().dropped == 1
        assert journal_lines(journal) == [task]


def test_reconcilers_client_sees_a_drop_as_unknown_outcome(base_spec: dict[str, Any]) -> None:
    with (
        running_sandbox(SandboxConfig(drop_rate=1.0)) as sandbox,
        LiveClient(sandbox.credentials, endpoint=sandbox.url) as client,
        pytest.raises(UnknownOutcomeError),
    ):
        client.add_live_record_task({key: base_spec[key] for key in PATH_KEYS}, base_spec)
    assert len(sandbox.accepted()) == 1


def test_latency_is_honoured(base_spec: dict[str, Any]) -> None:
    with running_sandbox(SandboxConfig(latency_ms=200)) as sandbox:
        started = time.perf_counter()
        response = post(sandbox, base_spec)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed >= 0.2


def fault_sequence(seed: int, count: int, base_spec: dict[str, Any]) -> list[int | str]:
    config = SandboxConfig(failures={500: 0.2, 503: 0.3}, drop_rate=0.2, seed=seed)
    outcomes: list[int | str] = []
    with running_sandbox(config) as sandbox:
        for _ in range(count):
            try:
                outcomes.append(post(sandbox, base_spec).status_code)
            except requests.ConnectionError:
                outcomes.append("drop")
    return outcomes


def test_a_seed_gives_a_reproducible_sequence(base_spec: dict[str, Any]) -> None:
    first = fault_sequence(1234, 30, base_spec)
    again = fault_sequence(1234, 30, base_spec)
    other = fault_sequence(4321, 30, base_spec)

    assert first == again
    assert set(first) == {200, 500, 503, "drop"}  # every outcome happens, so the test can fail
    assert first != other


def test_rates_adding_up_past_one_are_refused() -> None:
    with pytest.raises(ValueError, match="add up to"):
        Sandbox(SandboxConfig(failures={503: 0.6}, drop_rate=0.5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("  ", {}),
        ("503:1", {503: 1.0}),
        ("503:0.2,500:0.05", {503: 0.2, 500: 0.05}),
        (" 503 : 0.2 , 429:0 ", {503: 0.2, 429: 0.0}),
    ],
)
def test_parse_failures(text: str, expected: dict[int, float]) -> None:
    assert parse_failures(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("503", "STATUS:RATE"),
        ("503:0.2,", "empty item"),
        ("abc:0.2", "not a number"),
        ("503:lots", "not a number"),
        ("200:0.5", "400 to 599"),
        ("503:1.5", "between 0 and 1"),
        ("503:-0.1", "between 0 and 1"),
        ("503:nan", "between 0 and 1"),
        ("503:0.6,500:0.6", "add up to"),
        ("503:0.1,503:0.2", "twice"),
    ],
)
def test_parse_failures_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_failures(text)


# --- replays: a nonce is used once ---------------------------------------------------------------


def test_a_replayed_nonce_is_refused_with_401(box: Sandbox, base_spec: dict[str, Any]) -> None:
    url = task_url(box, base_spec)
    data = json.dumps(base_spec).encode()
    headers = signed(url, data, box.credentials)
    assert requests.post(url, data=data, headers=headers, timeout=10).status_code == 200

    replay = requests.post(url, data=data, headers=headers, timeout=10)

    error = assert_error(replay, 401, "UNAUTHENTICATED")
    assert "x-jdcloud-nonce" in error["message"] and "already used" in error["message"]
    assert headers["x-jdcloud-nonce"] in error["message"]
    assert len(box.accepted()) == 1
    assert box.counts().rejected == {401: 1}


def test_a_retry_that_replays_a_503d_request_is_refused(base_spec: dict[str, Any]) -> None:
    # What a client that re-sends the same prepared request after a 503 runs into.
    with running_sandbox(SandboxConfig(failures={503: 1.0})) as sandbox:
        url = task_url(sandbox, base_spec)
        data = json.dumps(base_spec).encode()
        headers = signed(url, data, sandbox.credentials)
        assert_error(requests.post(url, data=data, headers=headers, timeout=10), 503, "UNAVAILABLE")
        replay = requests.post(url, data=data, headers=headers, timeout=10)
        assert_error(replay, 401, "UNAUTHENTICATED")


def test_the_same_body_with_a_fresh_signature_is_not_a_replay(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    assert post(box, base_spec).status_code == 200
    assert post(box, base_spec).status_code == 200
    assert len(box.accepted()) == 2


def test_the_official_sdk_signs_each_send_with_its_own_nonce(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    for _ in range(2):
        assert send_with_official_sdk(box, base_spec, box.credentials.secret_key).error is None
    assert len(box.accepted()) == 2


def test_nonces_are_remembered_for_a_bounded_number_and_time(
    monkeypatch: pytest.MonkeyPatch, base_spec: dict[str, Any]
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(reconciler.sandbox, "MAX_REMEMBERED_NONCES", 2)
    monkeypatch.setattr(reconciler.sandbox, "_clock", lambda: clock[0])
    with running_sandbox(SandboxConfig(max_clock_skew=timedelta(minutes=15))) as sandbox:
        url = task_url(sandbox, base_spec)
        data = json.dumps(base_spec).encode()
        first, second, third = (signed(url, data, sandbox.credentials) for _ in range(3))

        def status(headers: dict[str, str]) -> int:
            return requests.post(url, data=data, headers=headers, timeout=10).status_code

        assert [status(first), status(second), status(third)] == [200, 200, 200]
        assert status(third) == 401  # remembered
        assert status(first) == 200  # forgotten: at most 2 are remembered (now third, first)
        clock[0] += 30 * 60 + 1  # past twice the clock skew: a replay's date is refused anyway
        assert status(third) == 200


# --- received(): every checked request and what became of it --------------------------------------


def test_received_lists_every_checked_request_and_its_fate(
    monkeypatch: pytest.MonkeyPatch, box: Sandbox, base_spec: dict[str, Any]
) -> None:
    fates = iter([None, 0, 503, 500, 429])
    monkeypatch.setattr(box, "_draw", lambda: next(fates))
    bodies = [{**base_spec, "streamName": f"clip-{n}"} for n in range(5)]
    answers: list[int | str] = []
    for body in bodies:
        try:
            answers.append(post(box, body).status_code)
        except requests.ConnectionError:
            answers.append("drop")
    # Refused by the checks: never in received().
    wrong = Credentials(box.credentials.access_key, "not-the-secret")
    assert post(box, base_spec, credentials=wrong).status_code == 401
    assert post(box, {**base_spec, "saveBuckte": "x"}).status_code == 400

    received = box.received()

    assert answers == [200, "drop", 503, 500, 429]
    assert [entry["outcome"] for entry in received] == [
        "accepted",
        "dropped",
        "injected-503",
        "injected-500",
        "injected-429",
    ]
    assert [entry["body"] for entry in received] == bodies
    assert [entry["path"] for entry in received] == [
        {key: body[key] for key in PATH_KEYS} for body in bodies
    ]
    accepted = box.accepted()
    assert [
        {key: entry[key] for key in ("requestId", "receivedAt", "path", "body")}
        for entry in received[:2]
    ] == accepted
    assert all(REQUEST_ID.match(entry["requestId"]) for entry in received)
    received[0]["body"]["saveBucket"] = "changed"  # a copy
    assert box.received()[0]["body"] == bodies[0]


def test_received_records_a_request_the_stopping_sandbox_never_accepted(
    base_spec: dict[str, Any],
) -> None:
    sandbox = Sandbox(SandboxConfig(latency_ms=1000)).start()
    outcome: list[BaseException | requests.Response] = []

    def send() -> None:
        try:
            outcome.append(post(sandbox, base_spec))
        except requests.ConnectionError as error:
            outcome.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    for _ in range(500):  # until the request is in its latency, past the checks
        if sandbox.counts().requests:
            break
        time.sleep(0.01)
    sandbox.stop()
    sender.join(timeout=10)

    assert isinstance(outcome[0], requests.ConnectionError)
    for _ in range(500):  # the handler ends its latency after stop() returned
        if sandbox.received():
            break
        time.sleep(0.01)
    assert sandbox.accepted() == []
    assert [entry["outcome"] for entry in sandbox.received()] == ["stopped"]


# --- connections -------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_without_nagle_stalls(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    durations = []
    with requests.Session() as session:
        for _ in range(50):
            started = time.perf_counter()
            assert post(box, base_spec, session=session).status_code == 200
            durations.append(time.perf_counter() - started)

    assert box.counts().connections == 1
    assert sum(durations) < 5.0  # a sanity bound, not a benchmark
    # Nagle's algorithm with delayed ACKs costs ~40 ms per answer; without it a loopback
    # round trip takes about a millisecond. The median ignores the odd scheduling hiccup.
    assert statistics.median(durations) < 0.025


def test_stop_closes_kept_alive_connections(base_spec: dict[str, Any]) -> None:
    with requests.Session() as session:
        with running_sandbox() as sandbox:
            assert post(sandbox, base_spec, session=session).status_code == 200
        with pytest.raises(requests.ConnectionError):
            post(sandbox, base_spec, session=session)


def test_a_sandbox_runs_once() -> None:
    sandbox = Sandbox(SandboxConfig())
    with sandbox:
        pass
    sandbox.stop()  # twice is fine
    with pytest.raises(RuntimeError):
        sandbox.start()


def test_given_credentials_are_used(base_spec: dict[str, Any]) -> None:
    config = SandboxConfig(access_key="my-ak", secret_key="my-secret")
    assert "my-secret" not in repr(config)
    with running_sandbox(config) as sandbox:
        assert sandbox.credentials == Credentials("my-ak", "my-secret")
        assert not sandbox.throwaway_secret
        assert post(sandbox, base_spec).status_code == 200


# --- serve(): the `reconciler sandbox` command ---------------------------------------------------

SERVE = (
    "import sys\n"
    "from reconciler.sandbox import SandboxConfig, serve\n"
    "sys.exit(serve(SandboxConfig(secret_key=sys.argv[1] or None)))\n"
)


def pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Copy the child's stdout into `lines` (a thread, so reading can time out)."""
    for line in process.stdout or ():
        lines.put(line)


def read_banner(process: subprocess.Popen[str], lines: queue.Queue[str]) -> str:
    text = ""
    deadline = time.monotonic() + 20
    while "Press Ctrl-C" not in text:
        try:
            text += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            pytest.fail(f"no banner within 20 s; so far: {text!r}")
    return text


@pytest.mark.parametrize(
    ("stop_with", "given_secret"),
    [(signal.SIGTERM, ""), (signal.SIGINT, "a-secret-the-user-gave")],
)
def test_serve_says_it_is_a_stand_in_and_stops_on_a_signal(
    stop_with: signal.Signals, given_secret: str
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, given_secret],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=pump, args=(process, lines))
    reader.start()
    try:
        banner = read_banner(process, lines)
        url = re.search(r"endpoint\s+(http://127\.0\.0\.1:\d+)", banner)
        assert url, banner
        assert requests.get(url[1] + "/_sandbox/health", timeout=10).status_code == 200

        process.send_signal(stop_with)
        returncode = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    stderr = process.stderr.read() if process.stderr else ""
    rest = "".join(lines.queue)  # what came after the banner

    assert returncode == 0, stderr
    assert "LOCAL STAND-IN" in banner
    assert "NOT JD Cloud" in banner
    assert "Sandbox stopped" in rest
    if given_secret:
        assert given_secret not in banner + rest + stderr
        assert "secret key  (as given)" in banner
        assert "export" not in banner
    else:
        exports = re.search(r"export (.+)", banner)
        assert exports, banner
        names = (
            "JDCLOUD_ACCESS_KEY",
            "JDCLOUD_SECRET_KEY",
            "RECONCILER_ENDPOINT",
            "RECONCILER_STATE",
        )
        for name in names:
            assert f"{name}=" in exports[1]
        assert url[1] in exports[1]


def test_serve_refuses_rates_adding_up_past_one() -> None:
    out, err = io.StringIO(), io.StringIO()
    config = SandboxConfig(failures={503: 0.7}, drop_rate=0.7)
    assert serve(config, out=out, err=err) == 1
    assert "add up to" in err.getvalue()
    assert out.getvalue() == ""


def test_serve_warns_about_a_non_loopback_host_and_reports_a_bind_failure() -> None:
    # 192.0.2.1 is TEST-NET-1: never this machine's address, so binding fails (no traffic).
    out, err = io.StringIO(), io.StringIO()
    assert serve(SandboxConfig(host="192.0.2.1"), out=out, err=err) == 1
    assert "WARNING" in err.getvalue()
    assert "not loopback" in err.getvalue()
    assert "cannot listen on 192.0.2.1:0" in err.getvalue()


# --- what the banner tells a user to run -------------------------------------------------------

EXAMPLES = ROOT / "examples"


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: no reconciler or JD Cloud variables, the console script on PATH."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["HOME"] = str(tmp_path)
    return env


def test_the_banner_instructions_work_when_followed_literally(tmp_path: Path) -> None:
    """Exactly the printed commands, in one shell, against the running sandbox; then the
    same shell's `apply --sandbox` still has a state of its own."""
    env = user_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "sandbox", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=pump, args=(process, lines))
    reader.start()
    try:
        banner = read_banner(process, lines)
        url = re.search(r"endpoint\s+(http://127\.0\.0\.1:\d+)", banner)
        assert url, banner
        block = banner.split("in another shell:\n", 1)[1].split("\n\n", 1)[0]
        commands = [line.strip() for line in block.splitlines()]
        assert commands[0].startswith("export "), banner
        assert any(command.startswith("reconciler apply") for command in commands), banner
        # The one placeholder: the user's manifests.
        manifests = shlex.quote(str(EXAMPLES))
        commands = [command.replace("PATH...", manifests) for command in commands]
        work = tmp_path / "repo"
        work.mkdir()

        def shell(*lines: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-c", "set -e\n" + "\n".join(lines)],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        first = shell(*commands)
        assert first.returncode == 0, first.stdout + first.stderr
        assert requests.get(url[1] + "/_sandbox/tasks", timeout=10).json()["count"] == 7
        # The same shell later: the printed apply again (nothing to submit), and the
        # built-in sandbox's own run, which must not meet the state `init` made.
        export, apply = commands[0], commands[-1]
        again = shell(export, apply, f"reconciler apply {manifests} --sandbox -q")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Nothing to submit." in again.stdout
        assert requests.get(url[1] + "/_sandbox/tasks", timeout=10).json()["count"] == 7
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=10)
    state = re.search(r"RECONCILER_STATE=(\S+)", commands[0])
    assert state, commands[0]
    assert (work / state[1]).exists()
    assert (work / "reconciler-state.sandbox.json").exists(), "apply --sandbox's own state"
