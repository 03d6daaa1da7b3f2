"""client.py: the exact request sent, the retry matrix, error mapping and secret redaction."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
import urllib3.util.retry
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import HTTPResponse

import reconciler
from reconciler.client import (
    DEFAULT_ENDPOINT,
    ApiError,
    AuthenticationError,
    CredentialsError,
    EndpointUnreachableError,
    FinalError,
    LiveClient,
    SubmitResult,
    UnknownOutcomeError,
    credentials_from_env,
    encode_body,
    record_task_path,
    redact_headers,
)
from reconciler.signing import Credentials, verify_request

SECRET = "S3cr3t-never-print-me-7f1c0a"
TOKEN = "T0ken-never-print-me-9b2e4d"
AK = "JDC_TESTACCESSKEY01"
REQUEST_ID = "bgvmivir54gddpgi764se9f4kfr7ge41"
PATH = {"publishDomain": "push.example.com", "appName": "live", "streamName": "cup-final"}
BODY = {
    "appName": "live",
    "publishDomain": "push.example.com",
    "recordFileType": "flv;mp4",
    "recordTimes": [{"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:05:00Z"}],
    "saveBucket": "highlights",
    "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
    "streamName": "cup-final",
}
TASK_URL = (
    f"{DEFAULT_ENDPOINT}/v1/records/push.example.com/appNames/live/streamNames/cup-final/task"
)


@pytest.fixture(autouse=True)
def no_proxies_no_sleeping(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No proxy from the environment, and urllib3's back-off sleeps recorded, not slept."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    slept: list[float] = []
    # Only urllib3's Retry sees this clock; the loopback servers below really sleep.
    monkeypatch.setattr(
        urllib3.util.retry, "time", SimpleNamespace(sleep=slept.append, time=time.time)
    )
    return slept


@pytest.fixture
def credentials() -> Credentials:
    return Credentials(AK, SECRET, TOKEN)


def client_for(credentials: Credentials, **options: Any) -> LiveClient:
    options.setdefault("backoff_jitter", 0.0)
    return LiveClient(credentials, **options)


def jd_error(status: int, code: str, message: str, request_id: str = REQUEST_ID) -> str:
    return json.dumps(
        {"requestId": request_id, "error": {"code": status, "status": code, "message": message}}
    )


def verify_sent(request: requests.PreparedRequest) -> str:
    """Check a request as the sandbox would: the signature over what actually went out."""
    assert request.url is not None and request.method is not None
    parts = urlsplit(request.url)
    headers = {**request.headers, "Host": parts.netloc}
    body = request.body if isinstance(request.body, bytes) else b""
    return verify_request(request.method, parts.path, parts.query, headers, body, {AK: SECRET}.get)


# --- what goes on the wire --------------------------------------------------------------------


@responses.activate
def test_sends_the_exact_url_headers_and_body(credentials: Credentials) -> None:
    path = {"publishDomain": "push.example.com", "appName": "a:b@c", "streamName": "x+y~直播"}
    body = {**BODY, **path, "saveObject": "精彩/goal 1"}
    url = (
        f"{DEFAULT_ENDPOINT}/v1/records/push.example.com/appNames/a%3Ab%40c"
        "/streamNames/x%2By~%E7%9B%B4%E6%92%AD/task"
    )
    responses.add(responses.POST, url, json={"requestId": REQUEST_ID})
    with client_for(credentials) as client:
        result = client.add_live_record_task(path, body)

    assert result == SubmitResult(request_id=REQUEST_ID, http_status=200)
    (call,) = responses.calls
    sent = call.request
    assert sent.method == "POST"
    assert sent.url == url
    assert sent.body == json.dumps(
        body, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    ).encode("utf-8")
    assert "精彩".encode() in sent.body  # UTF-8, not \\u escapes
    headers = sent.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == f"reconciler/{reconciler.__version__}"
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-jdcloud-date"])
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-jdcloud-nonce"])
    assert headers["x-jdcloud-content-sha256"] == hashlib.sha256(sent.body).hexdigest()
    assert base64.b64decode(headers["x-jdcloud-security-token"]).decode() == TOKEN
    assert headers["Authorization"].startswith(
        f"JDCLOUD3-HMAC-SHA256 Credential={AK}/{headers['x-jdcloud-date'][:8]}/jdcloud-api/live/"
        "jdcloud3_request, SignedHeaders=content-type;host;x-jdcloud-date;x-jdcloud-nonce;"
        "x-jdcloud-security-token, Signature="
    )
    assert verify_sent(sent) == AK


@responses.activate
def test_every_request_is_signed_afresh(credentials: Credentials) -> None:
    responses.add(responses.POST, TASK_URL, json={"requestId": REQUEST_ID})
    with client_for(credentials) as client:
        client.add_live_record_task(PATH, BODY)
        client.add_live_record_task(PATH, BODY)
    first, second = (call.request.headers for call in responses.calls)
    assert first["x-jdcloud-nonce"] != second["x-jdcloud-nonce"]
    assert first["Authorization"] != second["Authorization"]


@responses.activate
def test_an_endpoint_with_a_port_and_path_prefix(credentials: Credentials) -> None:
    endpoint = "http://127.0.0.1:8080/gateway/"
    url = "http://127.0.0.1:8080/gateway" + record_task_path("d.example.com", "a", "s")
    responses.add(responses.POST, url, json={"requestId": REQUEST_ID})
    with client_for(credentials, endpoint=endpoint) as client:
        client.add_live_record_task(
            {"publishDomain": "d.example.com", "appName": "a", "streamName": "s"}, {}
        )
    assert responses.calls[0].request.url == url
    assert verify_sent(responses.calls[0].request) == AK


def test_record_task_path_encodes_each_value_as_one_segment() -> None:
    assert record_task_path("push.example.com", "a+b", "~x:y@z") == (
        "/v1/records/push.example.com/appNames/a%2Bb/streamNames/~x%3Ay%40z/task"
    )


@pytest.mark.parametrize(
    ("app", "stream", "message"),
    [
        ("", "s", "must not be empty"),
        ("a", "x" * 129, "129 characters"),
        ("a/b", "s", "'/'"),
        ("a", "s?x=1", "'\\?'"),
        ("a", "s#f", "'#'"),
        ("a", "50%", "'%'"),
        ("a b", "s", "whitespace"),
        ("a", "s\t", "whitespace"),
        ("a", "s\x00", "control"),
        ("a", "s\x7f", "control"),
        ("a", "\u3000s", "whitespace"),
        ("..", "s", "not a valid path segment"),
        ("a", ".", "not a valid path segment"),
        ("a", "\ud800", "not valid Unicode"),
    ],
)
@responses.activate
def test_an_invalid_segment_never_reaches_the_network(
    credentials: Credentials, app: str, stream: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        record_task_path("push.example.com", app, stream)
    with client_for(credentials) as client, pytest.raises(ValueError, match=message):
        client.add_live_record_task({**PATH, "appName": app, "streamName": stream}, {})
    assert len(responses.calls) == 0


def test_a_128_character_name_is_fine() -> None:
    assert record_task_path("d", "a" * 128, "s" * 128).count("a" * 128) == 1


@responses.activate
def test_path_and_body_must_agree(credentials: Credentials) -> None:
    with client_for(credentials) as client:
        with pytest.raises(ValueError, match="streamName"):
            client.add_live_record_task(PATH, {**BODY, "streamName": "other"})
        with pytest.raises(ValueError, match="appName"):
            client.add_live_record_task({"publishDomain": "d", "streamName": "s"}, {})
    assert len(responses.calls) == 0


def test_encode_body_is_compact_sorted_utf8() -> None:
    assert (
        encode_body({"b": "é", "a": [1, {"d": 2, "c": 3}]})
        == '{"a":[1,{"c":3,"d":2}],"b":"é"}'.encode()
    )


def test_session_pool_timeouts_and_retry_configuration(credentials: Credentials) -> None:
    client = LiveClient(credentials, pool_size=7, max_retries=3, backoff_factor=0.25)
    adapter = client._session.get_adapter(DEFAULT_ENDPOINT)
    assert adapter is client._session.get_adapter("http://127.0.0.1:1")
    assert adapter._pool_connections == 7 and adapter._pool_maxsize == 7  # type: ignore[attr-defined]
    # The adapter never retries on its own: the client signs and sends every attempt.
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    retry = client._retry
    assert isinstance(retry, urllib3.util.retry.Retry)
    assert retry.total == 3
    assert set(retry.status_forcelist) == {429, 503}
    assert retry.allowed_methods is not None and "POST" in retry.allowed_methods
    assert retry.backoff_factor == 0.25 and retry.backoff_jitter == 0.5
    assert retry.respect_retry_after_header and not retry.raise_on_status
    client.close()


@pytest.mark.parametrize(
    "endpoint", ["live.jdcloud-api.com", "ftp://h", "https://", "https://h?x=1", "https://u:p@h"]
)
def test_bad_endpoints_are_refused(credentials: Credentials, endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        LiveClient(credentials, endpoint=endpoint)


# --- answers and what they mean ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, FinalError, "INVALID_ARGUMENT"),
        (403, FinalError, "PERMISSION_DENIED"),
        (404, FinalError, "NOT_FOUND"),
        (401, AuthenticationError, "UNAUTHENTICATED"),
        (500, UnknownOutcomeError, "INTERNAL"),
        (502, UnknownOutcomeError, "BAD_GATEWAY"),
        (504, UnknownOutcomeError, "GATEWAY_TIMEOUT"),
        (501, UnknownOutcomeError, "NOT_IMPLEMENTED"),
    ],
)
@responses.activate
def test_error_answers_are_typed_and_say_everything(
    credentials: Credentials, status: int, kind: type[ApiError], code: str
) -> None:
    message = f"recordTimes is invalid ({status})"
    responses.add(responses.POST, TASK_URL, status=status, body=jd_error(status, code, message))
    with client_for(credentials) as client, pytest.raises(ApiError) as caught:
        client.add_live_record_task(PATH, BODY)
    error = caught.value
    assert type(error) is kind
    assert (error.http_status, error.error_status, error.error_message, error.request_id) == (
        status,
        code,
        message,
        REQUEST_ID,
    )
    for part in (str(status), code, message, REQUEST_ID):
        assert part in str(error)
    assert len(responses.calls) == 1  # none of these is retried


@responses.activate
def test_a_non_json_error_body_is_tolerated(credentials: Credentials) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    headers = {"x-jdcloud-request-id": "hdr-request-id"}
    responses.add(responses.POST, TASK_URL, status=502, body=html, headers=headers)
    with client_for(credentials) as client, pytest.raises(UnknownOutcomeError) as caught:
        client.add_live_record_task(PATH, BODY)
    assert caught.value.request_id == "hdr-request-id"
    assert caught.value.error_status is None
    assert "502 Bad Gateway" in str(caught.value) and "hdr-request-id" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "",
        "[]",
        json.dumps({"result": {}}),
        json.dumps({"requestId": ""}),
        json.dumps({"requestId": 42}),
        jd_error(200, "INTERNAL", "odd"),
    ],
)
@responses.activate
def test_an_unusable_200_is_an_unknown_outcome(credentials: Credentials, body: str) -> None:
    responses.add(responses.POST, TASK_URL, status=200, body=body)
    with client_for(credentials) as client, pytest.raises(UnknownOutcomeError, match="unknown"):
        client.add_live_record_task(PATH, BODY)


@responses.activate
def test_a_redirect_is_not_followed(credentials: Credentials) -> None:
    responses.add(
        responses.POST, TASK_URL, status=301, headers={"Location": "https://elsewhere.test/"}
    )
    with client_for(credentials) as client, pytest.raises(FinalError, match=r"elsewhere\.test"):
        client.add_live_record_task(PATH, BODY)
    assert len(responses.calls) == 1


# --- the retry matrix, through urllib3's real Retry ---------------------------------------------


Answer = tuple[int, dict[str, str], str]
OK: Answer = (200, {}, json.dumps({"requestId": REQUEST_ID}))


@dataclass(frozen=True)
class WhileConnecting:
    """Raised while the connection is made (DNS, TCP connect, TLS handshake): nothing sent."""

    error: BaseException


@dataclass(frozen=True)
class AfterSending:
    """Raised after the request's bytes were written to the socket: it may have been processed."""

    error: BaseException


@dataclass(frozen=True)
class ResetBeforeSending:
    """The connection is up, and its very first write is reset: nothing sent."""


Outcome = Answer | WhileConnecting | AfterSending | ResetBeforeSending


class FakeSocket:
    """The socket under a connection: keeps what is written, or refuses the first write."""

    def __init__(self, *, reset: bool = False) -> None:
        self.reset = reset
        self.written = bytearray()

    def send(self, data: memoryview) -> int:
        if self.reset:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.written += data
        return len(data)

    def close(self) -> None:
        pass


@dataclass
class Wire:
    """Stands in for the network under urllib3's connection pool: each attempt takes the next
    scripted outcome. Failures go through the client's real connection class at the stage they
    happen (while connecting, or after writing the request to a fake socket), so what the
    connection records decides, as on a real network."""

    script: list[Outcome] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def make_request(
        self,
        conn: Any,
        method: str,
        url: str,
        body: Any,
        headers: Any,
        retries: Any,
        timeout: Any,
        **kw: Any,
    ) -> HTTPResponse:
        limits = (timeout.connect_timeout, timeout.read_timeout)
        sent = {"method": method, "url": url, "headers": dict(headers), "body": body}
        self.attempts.append({**sent, "timeout": limits})
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(outcome, WhileConnecting):

            def fail() -> None:
                raise outcome.error

            conn._new_conn = fail
            conn.connect()
            raise AssertionError("connect() should have raised")
        if isinstance(outcome, AfterSending | ResetBeforeSending):
            conn.sock = FakeSocket(reset=isinstance(outcome, ResetBeforeSending))
            try:
                conn.send(f"{method} {url} HTTP/1.1\r\n\r\n".encode())
            except ConnectionResetError as reset:
                raise ProtocolError("Connection aborted.", reset) from reset
            assert isinstance(outcome, AfterSending)
            raise outcome.error
        status, response_headers, text = outcome
        return HTTPResponse(
            body=io.BytesIO(text.encode()),
            headers=response_headers,
            status=status,
            preload_content=kw.get("preload_content", True),
            decode_content=kw.get("decode_content", True),
            request_method=method,
            request_url=url,
            retries=retries,
        )


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    wire = Wire()

    def make_request(pool: HTTPConnectionPool, conn: Any, method: str, url: str, **kw: Any) -> Any:
        return wire.make_request(conn, method, url, **kw)

    monkeypatch.setattr(HTTPConnectionPool, "_make_request", make_request)
    return wire


def busy(status: int, retry_after: str | None = None) -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return status, headers, jd_error(status, "BUSY", "try later")


def refused() -> WhileConnecting:
    message = "Failed to establish a new connection: [Errno 111] refused"
    return WhileConnecting(NewConnectionError(None, message))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("script", "attempts", "sleeps"),
    [
        # Back-off before every retry, the first included: 0.5 x 2**(n-1).
        ([busy(503), busy(503), OK], 3, [0.5, 1.0]),
        ([busy(429), OK], 2, [0.5]),
        ([busy(429), busy(429), busy(429), OK], 4, [0.5, 1.0, 2.0]),
        ([busy(429, "7"), OK], 2, [7.0]),
        ([busy(503, "2"), busy(503, "3"), OK], 3, [2.0, 3.0]),
        ([busy(429, "3600"), OK], 2, [30.0]),  # Retry-After is honoured up to backoff_max
        ([busy(503, "0"), busy(429, "0"), OK], 3, []),  # Retry-After: 0 is "again, now"
        ([busy(503, "0"), busy(503), OK], 3, [1.0]),
        ([refused(), refused(), OK], 3, [0.5, 1.0]),
        ([WhileConnecting(ConnectTimeoutError("connect timed out")), OK], 2, [0.5]),
        ([ResetBeforeSending(), OK], 2, [0.5]),
    ],
)
def test_not_processed_answers_are_retried_then_succeed(
    wire: Wire,
    no_proxies_no_sleeping: list[float],
    credentials: Credentials,
    script: list[Any],
    attempts: int,
    sleeps: list[float],
) -> None:
    wire.script = script
    with client_for(credentials) as client:
        assert client.add_live_record_task(PATH, BODY).request_id == REQUEST_ID
    assert len(wire.attempts) == attempts
    assert no_proxies_no_sleeping == sleeps
    # Every attempt is signed afresh (a replayed nonce may be refused), with the same body.
    nonces = {attempt["headers"]["x-jdcloud-nonce"] for attempt in wire.attempts}
    assert len(nonces) == attempts
    assert all(attempt["body"] == wire.attempts[0]["body"] for attempt in wire.attempts)
    for attempt in wire.attempts:
        url = DEFAULT_ENDPOINT + attempt["url"]
        sent = requests.Request("POST", url, headers=attempt["headers"], data=attempt["body"])
        assert verify_sent(sent.prepare()) == AK


@pytest.mark.parametrize("status", [429, 503])
def test_still_busy_after_every_retry_is_final(
    wire: Wire, no_proxies_no_sleeping: list[float], credentials: Credentials, status: int
) -> None:
    wire.script = [busy(status)]
    with client_for(credentials, max_retries=4) as client, pytest.raises(FinalError) as caught:
        client.add_live_record_task(PATH, BODY)
    assert type(caught.value) is FinalError
    assert len(wire.attempts) == 5  # the first try and 4 retries
    assert no_proxies_no_sleeping == [0.5, 1.0, 2.0, 4.0]  # the first retry backs off too
    assert caught.value.http_status == status and REQUEST_ID in str(caught.value)
    assert "nothing was created" in str(caught.value)


def test_backoff_is_bounded_and_jittered(
    wire: Wire,
    no_proxies_no_sleeping: list[float],
    credentials: Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.5)  # the jitter urllib3 adds: 0.5 x 2.0
    wire.script = [busy(503)]
    client = LiveClient(
        credentials, max_retries=6, backoff_factor=1.0, backoff_max=10.0, backoff_jitter=2.0
    )
    with client, pytest.raises(FinalError):
        client.add_live_record_task(PATH, BODY)
    assert no_proxies_no_sleeping == [2.0, 3.0, 5.0, 9.0, 10.0, 10.0]


@pytest.mark.parametrize("outcome", [refused(), ResetBeforeSending()])
def test_a_connection_that_cannot_be_made_is_unreachable_after_retries(
    wire: Wire, credentials: Credentials, outcome: Outcome
) -> None:
    wire.script = [outcome]
    client = client_for(credentials, max_retries=2)
    with client, pytest.raises(EndpointUnreachableError) as caught:
        client.add_live_record_task(PATH, BODY)
    assert len(wire.attempts) == 3
    message = str(caught.value)
    assert "nothing was sent" in message and "live.jdcloud-api.com" in message
    assert "refused" in message or "reset" in message
    assert caught.value.http_status is None and caught.value.host == "live.jdcloud-api.com"


@pytest.mark.parametrize(
    ("outcome", "words"),
    [
        (busy(500), "HTTP 500"),
        (busy(502), "HTTP 502"),
        (busy(504), "HTTP 504"),
        (AfterSending(ReadTimeoutError(None, "/", "Read timed out.")), "no answer"),  # type: ignore[arg-type]
        (AfterSending(http.client.RemoteDisconnected("closed without response")), "dropped"),
        (AfterSending(ConnectionResetError(104, "Connection reset by peer")), "dropped"),
        (AfterSending(SSLError(ssl.SSLError("decryption failed"))), "failed"),
    ],
)
def test_failures_after_sending_are_unknown_and_never_retried(
    wire: Wire, credentials: Credentials, outcome: Any, words: str
) -> None:
    wire.script = [outcome, OK]
    with client_for(credentials) as client, pytest.raises(UnknownOutcomeError) as caught:
        client.add_live_record_task(PATH, BODY)
    assert len(wire.attempts) == 1
    assert words in str(caught.value) and "unknown" in str(caught.value)


def test_a_413_is_final_even_with_retry_after(wire: Wire, credentials: Credentials) -> None:
    wire.script = [busy(413, "1"), OK]
    with client_for(credentials) as client, pytest.raises(FinalError):
        client.add_live_record_task(PATH, BODY)
    assert len(wire.attempts) == 1


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "certificate was refused"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "http://"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "TLS handshake"),
    ],
)
def test_a_failed_tls_handshake_is_unreachable_and_not_retried(
    wire: Wire, credentials: Credentials, error: ssl.SSLError, words: str
) -> None:
    wire.script = [WhileConnecting(SSLError(error)), OK]
    client = client_for(credentials)
    with client, pytest.raises(EndpointUnreachableError, match="nothing was sent") as caught:
        client.add_live_record_task(PATH, BODY)
    assert words in str(caught.value) and "live.jdcloud-api.com" in str(caught.value)
    assert len(wire.attempts) == 1


def test_timeouts_are_explicit(wire: Wire, credentials: Credentials) -> None:
    wire.script = [OK]
    with client_for(credentials, connect_timeout=2.5, read_timeout=12.0) as client:
        client.add_live_record_task(PATH, BODY)
    assert wire.attempts[0]["timeout"] == (2.5, 12.0)


# --- the same, over real loopback sockets -------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server, f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def serve(server: socket.socket, handle: Callable[[socket.socket], None]) -> list[bytes]:
    """Accept connections in the background; each one is handed to `handle`."""
    received: list[bytes] = []

    def loop() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                received.append(read_request(connection))
                handle(connection)

    threading.Thread(target=loop, daemon=True).start()
    return received


def read_request(connection: socket.socket) -> bytes:
    """One whole HTTP request: headers and Content-Length bytes of body (they may arrive in
    several segments: one recv() is not enough)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    wanted = int(match.group(1)) if match else 0
    while len(body) < wanted:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_real_refused_connection_is_unreachable(credentials: Credentials) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    client = client_for(credentials, endpoint=f"http://127.0.0.1:{port}", max_retries=1)
    with client, pytest.raises(EndpointUnreachableError, match="nothing was sent"):
        client.add_live_record_task(PATH, BODY)


def test_real_read_timeout_is_unknown_and_sent_once(
    credentials: Credentials, listener: tuple[socket.socket, str]
) -> None:
    server, endpoint = listener
    received = serve(server, lambda connection: time.sleep(1.0))
    client = client_for(credentials, endpoint=endpoint, read_timeout=0.3)
    with client, pytest.raises(UnknownOutcomeError, match="no answer"):
        client.add_live_record_task(PATH, BODY)
    time.sleep(0.1)
    assert len(received) == 1 and received[0].startswith(b"POST /v1/records/")


def test_real_dropped_connection_is_unknown_and_sent_once(
    credentials: Credentials, listener: tuple[socket.socket, str]
) -> None:
    server, endpoint = listener
    received = serve(server, lambda connection: None)  # read the request, then hang up
    client = client_for(credentials, endpoint=endpoint)
    with client, pytest.raises(UnknownOutcomeError, match="dropped"):
        client.add_live_record_task(PATH, BODY)
    assert len(received) == 1


def test_real_503_is_retried_on_the_wire(
    credentials: Credentials, listener: tuple[socket.socket, str]
) -> None:
    server, endpoint = listener
    answers = [b"503 Service Unavailable", b"200 OK"]

    def answer(connection: socket.socket) -> None:
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        body = json.dumps({"requestId": REQUEST_ID}).encode()
        connection.sendall(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    received = serve(server, answer)
    with client_for(credentials, endpoint=endpoint) as client:
        assert client.add_live_record_task(PATH, BODY).request_id == REQUEST_ID
    assert len(received) == 2
    first, second = (
        dict(
            line.split(": ", 1) for line in request.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
        )
        for request in received
    )
    assert first["x-jdcloud-nonce"] != second["x-jdcloud-nonce"]  # signed afresh
    assert first["Authorization"] != second["Authorization"]
    assert received[0].split(b"\r\n\r\n")[1] == received[1].split(b"\r\n\r\n")[1]


# --- credentials from the environment ----------------------------------------------------------


def test_credentials_from_env() -> None:
    environ = {"JDCLOUD_ACCESS_KEY": " ak ", "JDCLOUD_SECRET_KEY": "sk\n"}
    assert credentials_from_env(environ) == Credentials("ak", "sk", None)
    with_token = {**environ, "JDCLOUD_SESSION_TOKEN": "tok"}
    assert credentials_from_env(with_token).session_token == "tok"
    assert credentials_from_env({**environ, "JDCLOUD_SESSION_TOKEN": " "}).session_token is None


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({}, ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY")),
        ({"JDCLOUD_ACCESS_KEY": "ak"}, ("JDCLOUD_SECRET_KEY",)),
        ({"JDCLOUD_SECRET_KEY": SECRET}, ("JDCLOUD_ACCESS_KEY",)),
        ({"JDCLOUD_ACCESS_KEY": "ak", "JDCLOUD_SECRET_KEY": "  "}, ("JDCLOUD_SECRET_KEY",)),
    ],
)
def test_missing_credentials_name_the_variables(
    environ: dict[str, str], missing: tuple[str, ...]
) -> None:
    with pytest.raises(CredentialsError) as caught:
        credentials_from_env(environ)
    assert caught.value.missing == missing
    for name in ("JDCLOUD_ACCESS_KEY", "JDCLOUD_SECRET_KEY"):
        assert (name in str(caught.value)) == (name in missing)
    assert SECRET not in str(caught.value)


def test_an_unusable_access_key_is_a_credentials_error() -> None:
    with pytest.raises(CredentialsError, match="JDCLOUD_ACCESS_KEY") as caught:
        credentials_from_env({"JDCLOUD_ACCESS_KEY": "a b", "JDCLOUD_SECRET_KEY": SECRET})
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


# --- secrets never leak -------------------------------------------------------------------------


def test_redact_headers() -> None:
    headers = {"authorization": "JDCLOUD3 x", "X-JDCLOUD-SECURITY-TOKEN": "abc", "Accept": "a"}
    assert redact_headers(headers) == {
        "authorization": "REDACTED",
        "X-JDCLOUD-SECURITY-TOKEN": "REDACTED",
        "Accept": "a",
    }


def test_no_secret_in_logs_errors_or_reprs(
    wire: Wire,
    credentials: Credentials,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    seen: list[str] = []
    outcomes: list[Any] = [
        OK,
        (400, {}, jd_error(400, "INVALID_ARGUMENT", "bad")),
        (401, {}, jd_error(401, "UNAUTHENTICATED", "who")),
        busy(500),
        busy(503),
        AfterSending(ReadTimeoutError(None, "/", "Read timed out.")),  # type: ignore[arg-type]
        refused(),
    ]
    with client_for(credentials, max_retries=1) as client:
        seen += [repr(client), str(client), repr(credentials), repr(client._session.auth)]
        for outcome in outcomes:
            wire.script = [outcome]
            try:
                seen.append(repr(client.add_live_record_task(PATH, BODY)))
            except ApiError as error:
                seen += [str(error), repr(error), "".join(traceback.format_exception(error))]
                seen += [repr(vars(error))]
    output = capsys.readouterr()
    seen += [caplog.text, output.out, output.err]
    seen += [record.getMessage() for record in caplog.records]
    text = "\n".join(seen)

    assert "Authorization" in caplog.text and "REDACTED" in caplog.text  # logged, but redacted
    assert "x-jdcloud-security-token" in caplog.text
    assert REQUEST_ID in caplog.text and "POST https://live.jdcloud-api.com/v1/records" in text
    encoded_token = base64.b64encode(TOKEN.encode()).decode()
    signature = wire.attempts[0]["headers"]["Authorization"].rsplit("=", 1)[1]
    for secret in (SECRET, TOKEN, encoded_token, signature):
        assert secret not in text
