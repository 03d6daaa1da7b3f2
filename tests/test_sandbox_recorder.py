"""The sandbox records too: its record notify URL API and its recorder (callbacks, faults), over
real loopback sockets, callbacks collected by a small HTTP server the test runs."""

from __future__ import annotations

import copy
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
import requests

from reconciler.client import LiveClient
from reconciler.sandbox import (
    DEFAULT_SAVE_OBJECT,
    NOTIFY_CONFIG_PATH,
    RECORDINGS_PATH,
    Sandbox,
    SandboxConfig,
    banner,
    callback_body,
    describe_faults,
    download_url,
    masked_url,
    parse_delay,
    record_key,
    running_sandbox,
)
from reconciler.signing import Credentials, sign_request
from tests.test_sandbox import ROOT, assert_error, pump, read_banner

PATH_KEYS = ("publishDomain", "appName", "streamName")
DOMAIN = "push.example.com"
RECORDER_THREAD = "reconciler-sandbox-recorder"


# --- a receiver: the test side of a callback ----------------------------------------------------


class Receiver:
    """A tiny HTTP server that keeps every callback posted to it. `statuses` answers the posts
    in turn (200 once it runs out); while `hold` is set, posts wait for it to be cleared."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.statuses = list(statuses or [])
        self.hold = threading.Event()
        self.holding = threading.Event()  # a post is waiting on `hold`
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                assert self.headers["Content-Type"].startswith("application/json")
                while receiver.hold.is_set():
                    receiver.holding.set()
                    time.sleep(0.01)
                with receiver._lock:
                    receiver.posts.append((self.path, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.clear()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def url(self, token: str = "the-token") -> str:
        return f"http://127.0.0.1:{self._server.server_port}/callbacks/{token}"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for _, body in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def box() -> Iterator[Sandbox]:
    """A sandbox without a recorder."""
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def spec(base_spec: dict[str, Any]) -> dict[str, Any]:
    # base_spec: push.example.com/live/match, 2026-11-20T19:00:00Z to 19:05:00Z, mp4.
    return {**copy.deepcopy(base_spec), "taskExternalId": "cup-final-goal-1"}


@pytest.fixture
def recorder(receiver: Receiver) -> Iterator[Callable[..., Sandbox]]:
    """recorder(**SandboxConfig options) -> a started sandbox that records at once, posting
    to `receiver` unless told otherwise; stopped at the end."""
    started: list[Sandbox] = []

    def start(**options: Any) -> Sandbox:
        options = {
            "record_after": 0.0,
            "notify_url": receiver.url(),
            "callback_backoff": 0.0,
            **options,
        }
        sandbox = Sandbox(SandboxConfig(**options)).start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


def add_task(sandbox: Sandbox, spec: dict[str, Any]) -> str:
    """Submit `spec` with reconciler's own client; its requestId."""
    with LiveClient(sandbox.credentials, endpoint=sandbox.url) as client:
        result = client.add_live_record_task({key: spec[key] for key in PATH_KEYS}, spec)
    assert result.http_status == 200
    return result.request_id


def settle(sandbox: Sandbox) -> dict[str, Any]:
    """Wait until the recorder has nothing left to do; its recordings document."""
    deadline = time.monotonic() + 30
    while sandbox.counts().recorder_pending:
        assert time.monotonic() < deadline, sandbox.recordings()
        time.sleep(0.01)
    return sandbox.recordings()


def call(
    sandbox: Sandbox,
    method: str,
    path: str,
    body: Any = None,
    *,
    credentials: Credentials | None = None,
    sign: bool = True,
) -> requests.Response:
    """One request to the sandbox, signed with our signer (its credentials unless given)."""
    url = sandbox.url + path
    data = b"" if body is None else json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if sign:
        headers = sign_request(method, url, headers, data, credentials or sandbox.credentials)
    response = requests.request(method, url, data=data, headers=headers, timeout=10)
    assert sandbox.credentials.secret_key not in response.text
    return response


def set_notify_url(sandbox: Sandbox, url: str, domain: str = DOMAIN) -> requests.Response:
    return call(sandbox, "POST", NOTIFY_CONFIG_PATH, {"publishDomain": domain, "notifyUrl": url})


def notify_path(domain: str = DOMAIN) -> str:
    return f"/v1/recordNotifys/{quote(domain, safe='')}"


# --- the record notify URL API -----------------------------------------------------------------


def test_a_notify_url_is_set_read_replaced_and_deleted(box: Sandbox) -> None:
    url = "http://hooks.example.com:8080/callbacks/a-token"

    unset = call(box, "GET", notify_path())
    error = assert_error(unset, 404, "NOT_FOUND")
    assert DOMAIN in error["message"]

    answer = set_notify_url(box, url)
    assert answer.status_code == 200, answer.text
    assert list(answer.json()) == ["requestId"]
    assert answer.headers["x-jdcloud-request-id"] == answer.json()["requestId"]

    read = call(box, "GET", notify_path())
    assert read.status_code == 200, read.text
    assert read.json() == {
        "requestId": read.json()["requestId"],
        "result": {"publishDomain": DOMAIN, "notifyUrl": url},
    }
    assert read.json()["requestId"] != answer.json()["requestId"]

    assert set_notify_url(box, url).status_code == 200  # the same value again: harmless
    assert set_notify_url(box, url + "-2").status_code == 200
    assert call(box, "GET", notify_path()).json()["result"]["notifyUrl"] == url + "-2"
    assert box.notify_url(DOMAIN) == url + "-2"
    assert box.notify_url("other.example.com") is None  # one URL per domain

    deleted = call(box, "DELETE", notify_path())
    assert deleted.status_code == 200 and list(deleted.json()) == ["requestId"]
    assert_error(call(box, "GET", notify_path()), 404, "NOT_FOUND")
    assert call(box, "DELETE", notify_path()).status_code == 200  # nothing set: still 200
    assert box.counts().rejected == {}  # "none set" is an answer, not a refused request


def test_null_fields_are_absent(box: Sandbox) -> None:
    # The official SDK sends null for what is unset: null is no notifyUrl, not the text "None".
    response = call(box, "POST", NOTIFY_CONFIG_PATH, {"publishDomain": DOMAIN, "notifyUrl": None})
    error = assert_error(response, 400, "INVALID_ARGUMENT")
    assert "notifyUrl" in error["message"]
    assert box.notify_url(DOMAIN) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"publishDomain": DOMAIN, "notifyUrl": "https://hooks.example.com/x"}, "http://"),
        ({"publishDomain": DOMAIN, "notifyUrl": "ftp://hooks.example.com/x"}, "http://"),
        ({"publishDomain": DOMAIN, "notifyUrl": "http:///callbacks"}, "host"),
        ({"publishDomain": DOMAIN, "notifyUrl": "http://hooks:99999/x"}, "port"),
        ({"publishDomain": DOMAIN, "notifyUrl": "http://hooks/a b"}, "spaces"),
        ({"publishDomain": DOMAIN, "notifyUrl": 42}, "notifyUrl"),
        ({"publishDomain": DOMAIN}, "notifyUrl"),
        ({"notifyUrl": "http://hooks.example.com/x"}, "publishDomain"),
        ({"publishDomain": "Push.Example.com", "notifyUrl": "http://h/x"}, "lower case"),
        ({"publishDomain": "https://push.example.com", "notifyUrl": "http://h/x"}, "host name"),
        ({"publishDomain": DOMAIN, "notifyUrl": "http://h/x", "notifyURL": "x"}, "notifyURL"),
    ],
)
def test_a_bad_notify_config_is_400(box: Sandbox, body: dict[str, Any], expected: str) -> None:
    error = assert_error(call(box, "POST", NOTIFY_CONFIG_PATH, body), 400, "INVALID_ARGUMENT")
    assert expected in error["message"]
    assert box.notify_url(DOMAIN) is None


def test_a_refusal_never_repeats_the_url_it_refused(box: Sandbox) -> None:
    # A notify URL carries the receiver's token; a client may print the error it gets.
    url = "https://hooks.example.com/callbacks/the-secret-token"
    response = set_notify_url(box, url)
    assert response.status_code == 400
    assert "the-secret-token" not in response.text


def test_a_bad_domain_in_the_path_is_400(box: Sandbox) -> None:
    for method in ("GET", "DELETE"):
        error = assert_error(call(box, method, notify_path("Bad_Domain")), 400, "INVALID_ARGUMENT")
        assert "publishDomain" in error["message"]


def test_a_domain_in_the_path_is_percent_decoded(box: Sandbox) -> None:
    assert set_notify_url(box, "http://hooks.example.com/x").status_code == 200
    encoded = "/v1/recordNotifys/push%2Eexample%2Ecom"
    assert call(box, "GET", encoded).json()["result"]["publishDomain"] == DOMAIN


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", NOTIFY_CONFIG_PATH),
        ("GET", f"/v1/recordNotifys/{DOMAIN}"),
        ("DELETE", f"/v1/recordNotifys/{DOMAIN}"),
    ],
)
def test_the_notify_endpoints_need_a_signature(box: Sandbox, method: str, path: str) -> None:
    assert set_notify_url(box, "http://hooks.example.com/kept").status_code == 200
    body = {"publishDomain": DOMAIN, "notifyUrl": "http://evil.example.com/x"}
    data = body if method == "POST" else None

    unsigned = call(box, method, path, data, sign=False)
    error = assert_error(unsigned, 401, "UNAUTHENTICATED")
    assert "Authorization" in error["message"]
    wrong = Credentials(box.credentials.access_key, "not-the-secret")
    assert_error(call(box, method, path, data, credentials=wrong), 401, "UNAUTHENTICATED")

    assert box.notify_url(DOMAIN) == "http://hooks.example.com/kept"  # nothing changed
    assert box.counts().rejected == {401: 2}


def test_a_replayed_notify_request_is_refused(box: Sandbox) -> None:
    url = box.url + NOTIFY_CONFIG_PATH
    data = json.dumps({"publishDomain": DOMAIN, "notifyUrl": "http://hooks/x"}).encode()
    headers = sign_request("POST", url, {"Content-Type": "application/json"}, data, box.credentials)
    assert requests.post(url, data=data, headers=headers, timeout=10).status_code == 200
    call(box, "DELETE", notify_path())

    replay = requests.post(url, data=data, headers=headers, timeout=10)

    error = assert_error(replay, 401, "UNAUTHENTICATED")
    assert "already used" in error["message"]
    assert box.notify_url(DOMAIN) is None


def test_the_notify_endpoints_refuse_other_methods(box: Sandbox) -> None:
    config = requests.get(box.url + NOTIFY_CONFIG_PATH, timeout=10)
    assert_error(config, 405, "METHOD_NOT_ALLOWED")
    assert config.headers["Allow"] == "POST"
    one = requests.put(box.url + notify_path(), timeout=10)
    assert_error(one, 405, "METHOD_NOT_ALLOWED")
    assert one.headers["Allow"] == "GET, DELETE"
    assert_error(requests.get(box.url + "/v1/recordNotifys/", timeout=10), 404, "NOT_FOUND")


def test_the_notify_endpoints_take_no_task_faults(base_spec: dict[str, Any]) -> None:
    # `failures` model the task POST; the notify API answers, and draws no fate from them.
    with running_sandbox(SandboxConfig(failures={503: 1.0})) as sandbox:
        assert set_notify_url(sandbox, "http://hooks.example.com/x").status_code == 200
        assert call(sandbox, "GET", notify_path()).status_code == 200
        assert sandbox.counts().injected == {}
        assert [e["outcome"] for e in sandbox.notify_received()] == ["set", "read"]


def test_notify_received_lists_every_checked_notify_request(box: Sandbox) -> None:
    assert call(box, "GET", notify_path()).status_code == 404
    answer = set_notify_url(box, "http://hooks.example.com/secret-token")
    assert call(box, "GET", notify_path()).status_code == 200
    assert call(box, "DELETE", notify_path()).status_code == 200
    assert call(box, "GET", notify_path(), sign=False).status_code == 401  # refused: not listed
    received = box.notify_received()
    assert [(e["method"], e["publishDomain"], e["outcome"]) for e in received] == [
        ("GET", DOMAIN, "none"),
        ("POST", DOMAIN, "set"),
        ("GET", DOMAIN, "read"),
        ("DELETE", DOMAIN, "deleted"),
    ]
    assert received[1]["requestId"] == answer.json()["requestId"]
    assert "secret-token" not in json.dumps(received)  # the URL is no part of the log


@pytest.mark.parametrize("status", [401, 403, 500, 503])
def test_an_injected_notify_read_fault_reads_nothing(status: int) -> None:
    config = SandboxConfig(notify_read_failures={status: 1.0})
    with running_sandbox(config) as sandbox:
        assert set_notify_url(sandbox, "http://hooks.example.com/x").status_code == 200  # sets work
        answer = call(sandbox, "GET", notify_path())
        names = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 500: "INTERNAL"}
        error = assert_error(answer, status, names.get(status, "UNAVAILABLE"))
        assert DOMAIN in error["message"] and "injected" in error["message"]
        assert "hooks.example.com" not in answer.text
        assert ("Retry-After" in answer.headers) is (status == 503)
        assert call(sandbox, "DELETE", notify_path()).status_code == 200  # a DELETE takes none
        outcomes = [e["outcome"] for e in sandbox.notify_received()]
        assert outcomes == ["set", f"injected-{status}", "deleted"]
        assert sandbox.counts().injected == {}  # those count the task POST's faults


def test_an_injected_notify_set_fault_sets_nothing() -> None:
    with running_sandbox(SandboxConfig(notify_set_failures={403: 1.0})) as sandbox:
        answer = set_notify_url(sandbox, "http://hooks.example.com/x")
        error = assert_error(answer, 403, "PERMISSION_DENIED")
        assert "was not set" in error["message"]
        assert sandbox.notify_url(DOMAIN) is None
        assert_error(call(sandbox, "GET", notify_path()), 404, "NOT_FOUND")  # reads work
        assert [e["outcome"] for e in sandbox.notify_received()] == ["injected-403", "none"]


def test_notify_faults_leave_the_task_fault_sequence_of_a_seed_alone(
    base_spec: dict[str, Any],
) -> None:
    def outcomes(**notify: Any) -> tuple[list[str], list[str]]:
        config = SandboxConfig(failures={409: 0.5}, seed=7, **notify)
        with running_sandbox(config) as sandbox:
            for n in range(12):
                set_notify_url(sandbox, "http://hooks.example.com/x")
                call(sandbox, "GET", notify_path())
                spec = {**base_spec, "streamName": f"s{n}"}
                path = "/v1/records/{publishDomain}/appNames/{appName}/streamNames/{streamName}"
                call(sandbox, "POST", path.format(**spec) + "/task", spec)
            tasks = [e["outcome"] for e in sandbox.received()]
            return tasks, [e["outcome"] for e in sandbox.notify_received()]

    plain, untouched = outcomes()
    assert set(plain) == {"accepted", "injected-409"}  # the draws do decide something
    assert set(untouched) == {"set", "read"}
    faulty = {"notify_read_failures": {500: 0.5}, "notify_set_failures": {503: 0.5}}
    tasks, notify = outcomes(**faulty)
    assert tasks == plain
    assert {"injected-500", "injected-503"} <= set(notify)
    assert outcomes(**faulty)[1] == notify  # the notify faults follow the seed too


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"notify_read_failures": {200: 0.5}}, "the notify read failures: the status 200"),
        ({"notify_set_failures": {500: 1.5}}, "the notify set failures: the rate 1.5"),
        ({"notify_set_failures": {500: 0.6, 503: 0.6}}, "add up to 1.2, more than 1"),
        ({"notify_read_failures": {500: float("nan")}}, "is not between 0 and 1"),
    ],
)
def test_bad_notify_faults_are_refused(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=r"^the notify") as raised:
        Sandbox(SandboxConfig(**options))
    assert says in str(raised.value)


def test_the_faults_line_lists_the_notify_faults() -> None:
    config = SandboxConfig(notify_read_failures={403: 0.25}, notify_set_failures={500: 1.0})
    assert describe_faults(config) == "notify read 403 25%, notify set 500 100%"


# --- what a recording is: keys, URLs, bodies (pure) ----------------------------------------------


def test_record_key_expands_the_default_template(spec: dict[str, Any]) -> None:
    assert "saveObject" not in spec
    assert (
        record_key(spec, "mp4", "sandbox01")
        == "record/20261120/sandbox01/live/match/20261120190000_20261120190500.mp4"
    )
    assert record_key(spec, "flv", "box7").startswith("record/20261120/box7/")


def test_record_key_uses_the_first_start_and_the_last_end_in_utc(spec: dict[str, Any]) -> None:
    spec["recordTimes"] = [
        # 2026-11-20T23:59:00Z, written in Beijing time: the date is UTC's, not Beijing's.
        {"startTime": "2026-11-21T07:59:00+08:00", "endTime": "2026-11-21T08:00:30+08:00"},
        {"startTime": "2026-11-21T00:10:00Z", "endTime": "2026-11-21T00:20:00Z"},
    ]
    spec["saveObject"] = "clips/{Date}/{AppName}-{StreamName}/{StartTime}_{EndTime}.{format}"
    assert record_key(spec, "ts") == "clips/20261120/live-match/20261120235900_20261121002000.ts"


@pytest.mark.parametrize(
    ("file_types", "key"),
    [("mp4", "highlights/cup-final/goal-1"), ("mp4;flv", "highlights/cup-final/goal-1.mp4")],
)
def test_a_template_without_format_gets_one_when_there_are_several(
    spec: dict[str, Any], file_types: str, key: str
) -> None:
    spec["saveObject"] = "highlights/cup-final/goal-1"
    spec["recordFileType"] = file_types
    assert record_key(spec, "mp4") == key


def test_the_default_template_is_the_documented_one() -> None:
    assert DEFAULT_SAVE_OBJECT == (
        "record/{Date}/{ServerId}/{AppName}/{StreamName}/{StartTime}_{EndTime}.{format}"
    )


def test_download_url_percent_encodes_the_key(spec: dict[str, Any]) -> None:
    spec["appName"] = "直播"
    key = record_key(spec, "mp4")
    assert "/直播/" in key
    assert download_url(spec, key) == (
        "http://s3.cn-north-1.jdcloud-oss.com/highlights/record/20261120/sandbox01/"
        "%E7%9B%B4%E6%92%AD/match/20261120190000_20261120190500.mp4"
    )


def test_callback_body_is_the_documented_shape(spec: dict[str, Any]) -> None:
    spec["recordTimes"].append(
        {"startTime": "2026-11-20T19:10:00Z", "endTime": "2026-11-20T19:10:12Z"}
    )
    body = callback_body(spec, "flv", url="http://s3/b/k.flv", file_size=1234)
    assert body == {
        "version": "v1.1",
        "publishDomain": "push.example.com",
        "appName": "live",
        "streamName": "match",
        "event": "record_done",
        "status": "success",
        "format": "flv",
        "duration": "312000.0",  # 5 min + 12 s, in milliseconds
        "fileSize": "1234",
        "group": [
            {"beginTime": "1795201200000", "endTime": "1795201500000"},
            {"beginTime": "1795201800000", "endTime": "1795201812000"},
        ],
        "downloadUrl": "http://s3/b/k.flv",
        "taskExternalId": "cup-final-goal-1",
    }
    without = callback_body(spec, "flv", url="u", file_size=1, status="failed", with_id=False)
    assert "taskExternalId" not in without
    assert without["status"] == "failed"
    del spec["taskExternalId"]
    assert "taskExternalId" not in callback_body(spec, "flv", url="u", file_size=1)


# --- the recorder: callbacks ---------------------------------------------------------------------


def test_each_format_is_recorded_and_its_callback_posted(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    spec["recordFileType"] = "MP4;flv;ts"
    sandbox = recorder()
    request_id = add_task(sandbox, spec)

    document = settle(sandbox)

    bodies = sorted(receiver.bodies(), key=lambda body: body["format"])
    assert [body["format"] for body in bodies] == ["flv", "mp4", "ts"]
    assert {path for path, _ in receiver.posts} == {"/callbacks/the-token"}
    for body in bodies:
        key = f"record/20261120/sandbox01/live/match/20261120190000_20261120190500.{body['format']}"
        assert body == {
            "version": "v1.1",
            "publishDomain": DOMAIN,
            "appName": "live",
            "streamName": "match",
            "event": "record_done",
            "status": "success",
            "format": body["format"],
            "duration": "300000.0",
            "fileSize": body["fileSize"],
            "group": [{"beginTime": "1795201200000", "endTime": "1795201500000"}],
            "downloadUrl": f"http://s3.cn-north-1.jdcloud-oss.com/highlights/{key}",
            "taskExternalId": "cup-final-goal-1",
        }
        assert int(body["fileSize"]) > 0
    assert sorted((r["requestId"], r["format"]) for r in document["recordings"]) == [
        (request_id, "flv"),
        (request_id, "mp4"),
        (request_id, "ts"),
    ]
    assert all(c["delivery"] == "delivered" and c["attempts"] == 1 for c in document["callbacks"])
    counts = sandbox.counts()
    assert (counts.recorded, counts.recorded_files, counts.callbacks_sent) == (1, 3, 3)
    assert (counts.callbacks_failed, counts.record_failed, counts.recorder_pending) == (0, 0, 0)


def test_a_task_without_an_id_gets_callbacks_without_one(
    recorder: Callable[..., Sandbox], receiver: Receiver, base_spec: dict[str, Any]
) -> None:
    sandbox = recorder()
    add_task(sandbox, base_spec)
    settle(sandbox)
    [body] = receiver.bodies()
    assert "taskExternalId" not in body


def test_the_recordings_document_is_served(
    recorder: Callable[..., Sandbox], spec: dict[str, Any]
) -> None:
    sandbox = recorder()
    add_task(sandbox, spec)
    document = settle(sandbox)

    served = requests.get(sandbox.url + RECORDINGS_PATH, timeout=10)

    assert served.status_code == 200
    assert served.json() == document
    assert document["counts"] == {
        "recorded": 1,
        "recordedFiles": 1,
        "recordFailed": 0,
        "callbacksSent": 1,
        "callbacksFailed": 0,
        "callbackAttemptsFailed": 0,
        "callbacksUnaddressed": 0,
        "recorderPending": 0,
        "objectsWritten": 0,  # no storage endpoint: no file written
        "objectsFailed": 0,
        "bucketsCreated": 0,
    }
    # The notify URL (it carries the receiver's token) is in no document.
    assert "the-token" not in served.text
    assert "the-token" not in requests.get(sandbox.url + "/_sandbox/tasks", timeout=10).text


def test_a_dropped_task_is_recorded_too(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    # Created although the client never heard: the callback is how its outcome is learnt.
    sandbox = recorder(drop_rate=1.0)
    url = sandbox.url + "/v1/records/{}/appNames/{}/streamNames/{}/task".format(
        *(spec[key] for key in PATH_KEYS)
    )
    data = json.dumps(spec).encode()
    headers = sign_request(
        "POST", url, {"Content-Type": "application/json"}, data, sandbox.credentials
    )
    with pytest.raises(requests.ConnectionError):
        requests.post(url, data=data, headers=headers, timeout=10)

    settle(sandbox)

    [body] = receiver.bodies()
    assert body["taskExternalId"] == "cup-final-goal-1"
    assert sandbox.counts().dropped == 1


def test_no_notify_url_means_no_callback(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    sandbox = recorder(notify_url=None)
    add_task(sandbox, spec)

    document = settle(sandbox)

    assert receiver.posts == []
    assert len(document["recordings"]) == 1  # recorded, only nobody is told
    assert [c["delivery"] for c in document["callbacks"]] == ["unaddressed"]
    assert sandbox.counts().callbacks_unaddressed == 1


def test_a_notify_url_set_through_the_api_wins_over_the_configured_one(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    sandbox = recorder()  # configured: receiver's /callbacks/the-token
    other_domain = {**spec, "publishDomain": "other.example.com"}
    with Receiver() as api_set:
        assert set_notify_url(sandbox, api_set.url("set-by-api")).status_code == 200

        add_task(sandbox, spec)
        add_task(sandbox, other_domain)
        settle(sandbox)
        assert [body["publishDomain"] for body in api_set.bodies()] == [DOMAIN]
        assert {path for path, _ in api_set.posts} == {"/callbacks/set-by-api"}
        assert [body["publishDomain"] for body in receiver.bodies()] == ["other.example.com"]

        # Deleted: the configured URL again.
        assert call(sandbox, "DELETE", notify_path()).status_code == 200
        add_task(sandbox, spec)
        settle(sandbox)
        assert len(api_set.posts) == 1
        assert [body["publishDomain"] for body in receiver.bodies()][-1] == DOMAIN


def test_the_api_answers_while_a_notify_url_hangs(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    receiver.hold.set()
    sandbox = recorder()
    add_task(sandbox, spec)
    assert receiver.holding.wait(timeout=20)  # a post is stuck in the receiver

    # Tasks, the notify API and the sandbox's own documents answer all the same, more tasks
    # than the recorder has threads included.
    streams = [f"clip-{n}" for n in range(5)]
    for stream in streams:
        add_task(sandbox, {**spec, "streamName": stream})
    assert set_notify_url(sandbox, receiver.url()).status_code == 200
    assert requests.get(sandbox.url + RECORDINGS_PATH, timeout=10).status_code == 200
    assert sandbox.counts().recorder_pending > 0

    receiver.hold.clear()
    settle(sandbox)
    assert {body["streamName"] for body in receiver.bodies()} == {"match", *streams}


# --- the recorder: failed posts --------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_notify_url_that_refuses_connections_does_not_break_the_sandbox(
    recorder: Callable[..., Sandbox], spec: dict[str, Any]
) -> None:
    sandbox = recorder(
        notify_url=f"http://127.0.0.1:{free_port()}/callbacks/the-token", callback_retries=2
    )
    add_task(sandbox, spec)

    document = settle(sandbox)

    [callback] = document["callbacks"]
    assert callback["delivery"] == "failed"
    assert callback["attempts"] == 3  # the first, and two retries
    assert "connect" in callback["lastResult"]
    assert "the-token" not in json.dumps(document)
    counts = sandbox.counts()
    assert (counts.callbacks_failed, counts.callback_attempts_failed) == (1, 3)
    assert counts.callbacks_sent == 0
    # Still a working sandbox.
    add_task(sandbox, {**spec, "streamName": "after"})
    assert settle(sandbox)["counts"]["callbacksFailed"] == 2
    assert requests.get(sandbox.url + "/_sandbox/health", timeout=10).status_code == 200


def test_a_failed_post_is_retried_until_it_is_delivered(
    recorder: Callable[..., Sandbox], spec: dict[str, Any]
) -> None:
    with Receiver(statuses=[500, 404]) as flaky:
        sandbox = recorder(notify_url=flaky.url(), callback_retries=3)
        add_task(sandbox, spec)
        document = settle(sandbox)

        assert len(flaky.posts) == 3
        assert flaky.bodies()[0] == flaky.bodies()[2]  # the same callback, again
    [callback] = document["callbacks"]
    assert (callback["delivery"], callback["attempts"], callback["lastResult"]) == (
        "delivered",
        3,
        "HTTP 200",
    )
    counts = sandbox.counts()
    assert (counts.callbacks_sent, counts.callback_attempts_failed, counts.callbacks_failed) == (
        1,
        2,
        0,
    )


def test_without_retries_one_failure_gives_up(
    recorder: Callable[..., Sandbox], spec: dict[str, Any]
) -> None:
    with Receiver(statuses=[503]) as flaky:
        sandbox = recorder(notify_url=flaky.url(), callback_retries=0)
        add_task(sandbox, spec)
        [callback] = settle(sandbox)["callbacks"]
    assert (callback["delivery"], callback["attempts"], callback["lastResult"]) == (
        "failed",
        1,
        "HTTP 503",
    )


# --- the recorder: faults ------------------------------------------------------------------------


def run_tasks(
    recorder: Callable[..., Sandbox], spec: dict[str, Any], count: int, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """Submit `count` tasks (streams clip-0...) to a new recorder, one after the other; their
    requestIds in order, and the recordings document once everything has settled."""
    sandbox = recorder(**options)
    ids = [add_task(sandbox, {**spec, "streamName": f"clip-{n}"}) for n in range(count)]
    return ids, settle(sandbox)


def recorded_fates(
    recorder: Callable[..., Sandbox], spec: dict[str, Any], count: int, **options: Any
) -> tuple[list[bool], dict[str, Any]]:
    """Per task in order, whether it was recorded."""
    ids, document = run_tasks(recorder, spec, count, **options)
    recorded = {recording["requestId"] for recording in document["recordings"]}
    return [request_id in recorded for request_id in ids], document


def test_the_record_fail_rate_leaves_tasks_unrecorded_as_the_seed_says(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    first, document = recorded_fates(recorder, spec, 20, record_fail_rate=0.5, seed=11)
    first_bodies = receiver.bodies()
    again, _ = recorded_fates(recorder, spec, 20, record_fail_rate=0.5, seed=11)
    other, _ = recorded_fates(recorder, spec, 20, record_fail_rate=0.5, seed=12)

    assert first == again
    assert first != other
    assert 0 < first.count(True) < 20  # both fates happen, so the test can fail
    never = {entry["requestId"] for entry in document["notRecorded"]}
    assert len(never) == first.count(False)
    # An unrecorded task has no callback; a recorded one has its one.
    streams = [body["streamName"] for body in first_bodies]
    assert sorted(streams) == sorted(f"clip-{n}" for n, ok in enumerate(first) if ok)


def test_a_record_fail_rate_of_one_records_nothing(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    fates, document = recorded_fates(recorder, spec, 3, record_fail_rate=1.0)
    assert fates == [False, False, False]
    assert receiver.posts == [] and document["recordings"] == []
    assert document["counts"]["recordFailed"] == 3


def test_duplicates_post_the_same_callback_twice(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    spec["recordFileType"] = "mp4;flv"
    sandbox = recorder(callback_duplicates=1.0)
    add_task(sandbox, spec)
    document = settle(sandbox)

    bodies = receiver.bodies()
    assert len(bodies) == 4
    for fmt in ("mp4", "flv"):
        copies = [body for body in bodies if body["format"] == fmt]
        assert len(copies) == 2 and copies[0] == copies[1]
    assert sorted(c["duplicate"] for c in document["callbacks"]) == [False, False, True, True]
    assert sandbox.counts().callbacks_sent == 4


def test_duplicates_follow_the_seed(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    def duplicated(seed: int) -> list[bool]:
        """Per task in order, whether its callback was posted twice."""
        ids, document = run_tasks(recorder, spec, 16, callback_duplicates=0.5, seed=seed)
        twice = {c["requestId"] for c in document["callbacks"] if c["duplicate"]}
        assert len(document["callbacks"]) == 16 + len(twice)
        return [request_id in twice for request_id in ids]

    first, again, other = duplicated(5), duplicated(5), duplicated(6)
    assert first == again
    assert first != other
    assert 0 < first.count(True) < 16


def test_callbacks_without_id_leave_the_id_out(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    spec["recordFileType"] = "mp4;ts"
    sandbox = recorder(callback_without_id=1.0)
    add_task(sandbox, spec)
    settle(sandbox)

    bodies = receiver.bodies()
    assert len(bodies) == 2
    for body in bodies:
        assert "taskExternalId" not in body
        # What is left to match by: the stream and the segments.
        assert (body["publishDomain"], body["appName"], body["streamName"]) == (
            DOMAIN,
            "live",
            "match",
        )
        assert body["group"] == [{"beginTime": "1795201200000", "endTime": "1795201500000"}]


def test_the_fail_status_fault_says_failed(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    sandbox = recorder(callback_fail_status=1.0)
    add_task(sandbox, spec)
    document = settle(sandbox)
    [body] = receiver.bodies()
    assert body["status"] == "failed"
    assert [recording["status"] for recording in document["recordings"]] == ["failed"]


def test_the_seed_decides_per_stream_which_callbacks_lose_their_id(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    def without_id(seed: int) -> list[str]:
        before = len(receiver.posts)
        recorded_fates(recorder, spec, 16, callback_without_id=0.5, seed=seed)
        bodies = receiver.bodies()[before:]
        return sorted(body["streamName"] for body in bodies if "taskExternalId" not in body)

    first, again, other = without_id(21), without_id(21), without_id(22)
    assert first == again
    assert first != other
    assert 0 < len(first) < 16


def test_a_callback_delay_holds_the_post_back(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    sandbox = recorder(callback_delay=(3600.0, 3600.0))
    add_task(sandbox, spec)
    deadline = time.monotonic() + 20
    while not sandbox.recordings()["recordings"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    document = sandbox.recordings()

    assert [c["delivery"] for c in document["callbacks"]] == ["pending"]
    assert document["pending"] == 1
    assert receiver.posts == []
    sandbox.stop()  # what is still to post is dropped
    assert [c["delivery"] for c in sandbox.recordings()["callbacks"]] == ["dropped"]
    assert sandbox.counts().recorder_pending == 0


def test_the_recorder_leaves_the_task_faults_as_the_seed_had_them(
    recorder: Callable[..., Sandbox], spec: dict[str, Any]
) -> None:
    # The recorder draws from a generator of its own: a seed's task POST fates stay the same.
    def statuses(**options: Any) -> list[int]:
        sandbox = recorder(failures={503: 0.4, 500: 0.2}, seed=3, callback_retries=0, **options)
        answers = []
        url = sandbox.url + "/v1/records/{}/appNames/{}/streamNames/{}/task".format(
            *(spec[key] for key in PATH_KEYS)
        )
        data = json.dumps(spec).encode()
        for _ in range(20):
            headers = sign_request(
                "POST", url, {"Content-Type": "application/json"}, data, sandbox.credentials
            )
            answers.append(requests.post(url, data=data, headers=headers, timeout=10).status_code)
        sandbox.stop()
        return answers

    quiet = statuses()
    assert quiet == statuses(record_fail_rate=0.5, callback_duplicates=0.5)
    assert set(quiet) == {200, 500, 503}


# --- stopping ----------------------------------------------------------------------------------


def recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(RECORDER_THREAD)]


def test_stop_drops_what_is_pending_and_leaves_no_thread(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    assert recorder_threads() == []
    sandbox = recorder(record_after=3600.0)
    add_task(sandbox, spec)
    add_task(sandbox, {**spec, "streamName": "other"})
    assert len(recorder_threads()) > 0
    assert sandbox.counts().recorder_pending == 2

    sandbox.stop()

    assert recorder_threads() == []
    assert sandbox.counts().recorder_pending == 0
    assert sandbox.recordings()["recordings"] == []
    assert receiver.posts == []


def test_no_recorder_no_threads_and_empty_documents(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    add_task(box, base_spec)
    assert recorder_threads() == []
    assert requests.get(box.url + RECORDINGS_PATH, timeout=10).json() == {
        "recordings": [],
        "notRecorded": [],
        "callbacks": [],
        "pending": 0,
        "counts": {},
    }
    assert box.counts().recorded == 0


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"record_fail_rate": 1.5}, "record fail rate"),
        ({"callback_duplicates": -0.1}, "callback duplicates rate"),
        ({"callback_without_id": float("nan")}, "callback without id rate"),
        ({"callback_fail_status": 2.0}, "callback fail status rate"),
        ({"callback_delay": (5.0, 1.0)}, "low end above"),
        ({"callback_delay": (-1.0, 1.0)}, ">= 0"),
        ({"callback_retries": -1}, "retries"),
        ({"record_after": -1.0}, "record after"),
        ({"record_after": float("inf")}, "record after"),
        ({"notify_url": "https://hooks/callbacks/the-token"}, "http://"),
        ({"record_after": None, "callback_duplicates": 0.5}, "(callback duplicates rate) need"),
        ({"record_after": None, "notify_url": "http://hooks/x"}, "(notify URL) need record_after"),
    ],
)
def test_bad_recorder_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    config = replace(SandboxConfig(record_after=1.0), **changes)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        Sandbox(config)
    assert "the-token" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", (2.0, 2.0)), (" 1-5 ", (1.0, 5.0)), ("0.5-0.5", (0.5, 0.5)), ("0", (0.0, 0.0))],
)
def test_parse_delay(text: str, expected: tuple[float, float]) -> None:
    assert parse_delay(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5-1", "-1", "1-", "nan", "inf", "1-2-3"])
def test_parse_delay_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_delay(text)


def test_the_faults_line_and_the_banner_list_the_recorder() -> None:
    config = SandboxConfig(
        record_after=5.0,
        notify_url="http://hooks.example.com:8080/callbacks/the-token",
        record_fail_rate=0.1,
        callback_duplicates=0.2,
        callback_delay=(1.0, 5.0),
        callback_without_id=0.3,
        callback_fail_status=0.05,
        seed=9,
    )
    faults = describe_faults(config)
    for part in (
        "never recorded 10%",
        "callback posted twice 20%",
        "callback delay 1-5 s",
        "callback without taskExternalId 30%",
        'callback status "failed" 5%',
        "seed 9",
    ):
        assert part in faults
    # The URL (and its token) is no part of the repr.
    assert "the-token" not in repr(config) and "hooks.example.com" not in repr(config)

    with running_sandbox(config) as sandbox:
        text = banner(sandbox)
    assert "the-token" not in text
    assert "http://hooks.example.com:8080/***" in text
    assert "after 5 s" in text
    assert f"GET {sandbox.url}{RECORDINGS_PATH}" in text
    with running_sandbox() as plain:
        assert "recorder    off" in banner(plain)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://hooks.example.com:8080/callbacks/the-token", "http://hooks.example.com:8080/***"),
        ("http://user:the-token@hooks.example.com", "http://hooks.example.com/***"),
        ("http://hooks.example.com/?token=the-token", "http://hooks.example.com/***"),
    ],
)
def test_masked_url_hides_every_place_a_token_can_be(url: str, shown: str) -> None:
    assert masked_url(url) == shown


# --- the command ---------------------------------------------------------------------------------


def test_the_sandbox_command_records_and_posts(
    receiver: Receiver, tmp_path: Any, spec: dict[str, Any]
) -> None:
    command = [
        sys.executable,
        "-m",
        "reconciler",
        "sandbox",
        "--port",
        "0",
        "--record-after",
        "0",
        "--notify-url",
        receiver.url(),
        "--callback-duplicates",
        "1",
        "--seed",
        "1",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=pump, args=(process, lines))
    reader.start()
    try:
        text = read_banner(process, lines)
        endpoint = re.search(r"endpoint\s+(http://127\.0\.0\.1:\d+)", text)
        access = re.search(r"JDCLOUD_ACCESS_KEY=(\S+)", text)
        secret = re.search(r"JDCLOUD_SECRET_KEY=(\S+)", text)
        assert endpoint and access and secret, text
        credentials = Credentials(access[1], secret[1].strip("'"))
        with LiveClient(credentials, endpoint=endpoint[1]) as client:
            path = {key: spec[key] for key in PATH_KEYS}
            assert client.add_live_record_task(path, spec).http_status == 200
        deadline = time.monotonic() + 30
        while len(receiver.posts) < 2:
            assert time.monotonic() < deadline, receiver.posts
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    rest = "".join(lines.queue)
    stderr = process.stderr.read() if process.stderr else ""

    assert returncode == 0, stderr
    assert "the-token" not in text + rest + stderr
    assert "callback posted twice 100%" in text
    assert "Recorder: 1 tasks recorded (1 files)" in rest
    assert "2 callbacks sent" in rest
    assert [body["taskExternalId"] for body in receiver.bodies()] == ["cup-final-goal-1"] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-after", "1", "--record-fail-rate", "1.5"], "--record-fail-rate"),
        (["--record-after", "1", "--callback-delay", "5-1"], "low end above"),
        (["--record-after", "1", "--callback-delay", "soon"], "SECONDS or LOW-HIGH"),
        (["--record-after", "1", "--notify-url", "https://h/the-token"], "http://"),
        (["--record-after", "-1"], "--record-after"),
        (["--callback-duplicates", "0.5"], "add --record-after"),
        (["--notify-url", "http://h/the-token"], "add --record-after"),
    ],
)
def test_bad_recorder_options_are_usage_errors(
    tmp_path: Any, args: list[str], message: str
) -> None:
    from tests.test_cli import cli

    result = cli(tmp_path, "sandbox", "--port", "0", *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "the-token" not in result.stderr
    assert "Traceback" not in result.stderr
