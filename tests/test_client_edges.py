"""client.py at the edges of exactly-once (issue 11), over real loopback sockets: a request that
never left is a final failure, an unreachable endpoint says so, and every retry is signed afresh."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3.connection
import urllib3.util.connection
import urllib3.util.retry

import reconciler.sandbox
import reconciler.signing
from reconciler.client import (
    EndpointUnreachableError,
    FinalError,
    InvalidRequestError,
    LiveClient,
    UnknownOutcomeError,
    check_endpoint,
)
from reconciler.sandbox import Sandbox, SandboxConfig, running_sandbox
from tests.test_client import serve

PATH_KEYS = ("publishDomain", "appName", "streamName")


@pytest.fixture(autouse=True)
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No proxy from the environment; every retry's sleep recorded instead of slept."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    sleeps: list[float] = []
    monkeypatch.setattr(
        urllib3.util.retry, "time", SimpleNamespace(sleep=sleeps.append, time=time.time)
    )
    return sleeps


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with running_sandbox(SandboxConfig()) as sandbox:
        yield sandbox


def path_of(spec: dict[str, Any]) -> dict[str, str]:
    return {key: spec[key] for key in PATH_KEYS}


def script_fates(monkeypatch: pytest.MonkeyPatch, box: Sandbox, fates: list[int | None]) -> None:
    """The sandbox's next fault draws, in order (a status to inject, None to accept)."""
    remaining = iter(fates)
    monkeypatch.setattr(box, "_draw", lambda: next(remaining))


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll a server-side condition for a while (the server may still be working)."""
    for _ in range(200):
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def count_connection_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    attempts: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def counting(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return attempts


# --- nothing sent is never an unknown outcome ----------------------------------------------------


def test_https_to_an_http_only_server_is_unreachable_and_nothing_reached_it(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    endpoint = box.url.replace("http://", "https://")
    host = endpoint.removeprefix("https://")
    with (
        LiveClient(box.credentials, endpoint=endpoint) as client,
        pytest.raises(EndpointUnreachableError) as caught,
    ):
        client.add_live_record_task(path_of(base_spec), base_spec)

    error = caught.value
    assert isinstance(error, FinalError)
    assert error.host == host and host in str(error)
    assert "TLS" in str(error) and "nothing was sent" in str(error)
    # The server saw a TLS hello it could not parse, never an HTTP request.
    assert box.counts().requests == 0 and box.accepted() == []
    assert box.counts().connections == 1  # a handshake failure is not retried


def test_a_port_nobody_listens_on_is_unreachable_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch, slept: list[float], base_spec: dict[str, Any]
) -> None:
    attempts = count_connection_attempts(monkeypatch)
    client = LiveClient(
        reconciler.signing.Credentials("ak", "sk"), endpoint="http://127.0.0.1:1", max_retries=3
    )
    with client, pytest.raises(EndpointUnreachableError) as caught:
        client.add_live_record_task(path_of(base_spec), base_spec)

    assert "127.0.0.1:1" in str(caught.value) and "nothing was sent" in str(caught.value)
    assert caught.value.host == "127.0.0.1:1"
    assert attempts == [("127.0.0.1", 1)] * 4  # the first try and 3 retries
    assert len(slept) == 3 and all(seconds > 0 for seconds in slept)


def test_a_name_that_does_not_resolve_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, base_spec: dict[str, Any]
) -> None:
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client = LiveClient(
        reconciler.signing.Credentials("ak", "sk"),
        endpoint="https://no-such-host.invalid",
        max_retries=2,
    )
    with client, pytest.raises(EndpointUnreachableError) as caught:
        client.add_live_record_task(path_of(base_spec), base_spec)
    assert "no-such-host.invalid" in str(caught.value) and "nothing was sent" in str(caught.value)
    assert len(lookups) == 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"streamName": ".."}, "streamName"),
        ({"appName": "."}, "appName"),
        ({"streamName": "a/b"}, "streamName"),
        ({"recordFileType": float("nan")}, "JSON"),
        ({"saveObject": object()}, "JSON"),
    ],
)
def test_a_request_the_client_refuses_to_build_is_invalid_and_never_sent(
    box: Sandbox, base_spec: dict[str, Any], change: dict[str, Any], words: str
) -> None:
    spec = {**base_spec, **change}
    with (
        LiveClient(box.credentials, endpoint=box.url) as client,
        pytest.raises(InvalidRequestError, match=words) as caught,
    ):
        client.add_live_record_task(path_of(spec), spec)
    assert isinstance(caught.value, FinalError) and isinstance(caught.value, ValueError)
    assert box.counts().connections == 0


def test_missing_path_keys_and_a_body_that_contradicts_the_path_are_invalid(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    with LiveClient(box.credentials, endpoint=box.url) as client:
        with pytest.raises(InvalidRequestError, match="appName"):
            client.add_live_record_task({"publishDomain": "d", "streamName": "s"}, base_spec)
        with pytest.raises(InvalidRequestError, match="streamName"):
            client.add_live_record_task(path_of(base_spec), {**base_spec, "streamName": "other"})
    assert box.counts().connections == 0


def test_an_unexpected_error_before_any_byte_is_sent_is_final(
    monkeypatch: pytest.MonkeyPatch, box: Sandbox, base_spec: dict[str, Any]
) -> None:
    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug before sending")

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "putrequest", broken)
    with (
        LiveClient(box.credentials, endpoint=box.url) as client,
        pytest.raises(FinalError, match="a bug before sending") as caught,
    ):
        client.add_live_record_task(path_of(base_spec), base_spec)
    assert "nothing was sent" in str(caught.value)
    assert box.counts().requests == 0


def test_an_unexpected_error_after_the_request_was_written_is_unknown(
    monkeypatch: pytest.MonkeyPatch, box: Sandbox, base_spec: dict[str, Any]
) -> None:
    def broken(self: Any) -> None:
        raise RuntimeError("a bug after sending")

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", broken)
    with (
        LiveClient(box.credentials, endpoint=box.url) as client,
        pytest.raises(UnknownOutcomeError, match="a bug after sending"),
    ):
        client.add_live_record_task(path_of(base_spec), base_spec)
    assert wait_for(lambda: len(box.accepted()) == 1)  # it was indeed processed


# --- retries against the real API ---------------------------------------------------------------


class TickingClock(datetime):
    """datetime whose now() moves one second on each call, so every signature has its own date."""

    start = datetime.now(UTC)
    ticks = itertools.count()

    @classmethod
    def now(cls, tz: Any = None) -> TickingClock:  # type: ignore[override]
        moment = cls.start + timedelta(seconds=next(cls.ticks))
        return cls.fromtimestamp(moment.timestamp(), tz or UTC)


def test_every_retry_is_signed_afresh_and_a_replayed_nonce_would_be_refused(
    monkeypatch: pytest.MonkeyPatch, box: Sandbox, slept: list[float], base_spec: dict[str, Any]
) -> None:
    script_fates(monkeypatch, box, [503, 429, None])
    monkeypatch.setattr(reconciler.signing, "datetime", TickingClock)
    seen: list[dict[str, str]] = []
    verify = reconciler.sandbox.verify_request

    def recording_verify(
        method: str, path: str, query: str, headers: Any, *rest: Any, **kw: Any
    ) -> str:
        seen.append(dict(headers))
        return verify(method, path, query, headers, *rest, **kw)

    monkeypatch.setattr(reconciler.sandbox, "verify_request", recording_verify)

    with LiveClient(box.credentials, endpoint=box.url) as client:
        result = client.add_live_record_task(path_of(base_spec), base_spec)

    assert [task["requestId"] for task in box.accepted()] == [result.request_id]
    assert len(seen) == 3
    assert len({headers["x-jdcloud-nonce"] for headers in seen}) == 3
    assert len({headers["x-jdcloud-date"] for headers in seen}) == 3
    assert len({headers["authorization"] for headers in seen}) == 3
    assert box.counts().injected == {503: 1, 429: 1}
    assert slept == []  # the sandbox's Retry-After: 0 means "again, now"


def raw_server(answers: list[bytes]) -> tuple[str, list[bytes], socket.socket]:
    """A one-request-per-connection HTTP server answering `answers` in turn (the last repeats)."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer(connection: socket.socket) -> None:
        connection.sendall(answers.pop(0) if len(answers) > 1 else answers[0])

    received = serve(server, answer)
    return f"http://127.0.0.1:{server.getsockname()[1]}", received, server


def http_answer(status: str, headers: dict[str, str], document: dict[str, Any]) -> bytes:
    body = json.dumps(document).encode()
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_the_first_retry_backs_off_and_retry_after_zero_is_honoured(slept: list[float]) -> None:
    busy = {"requestId": "r1", "error": {"code": 503, "status": "UNAVAILABLE", "message": "busy"}}
    answers = [
        http_answer("503 Service Unavailable", {}, busy),
        http_answer("503 Service Unavailable", {}, busy),
        http_answer("429 Too Many Requests", {"Retry-After": "0"}, busy),
        http_answer("200 OK", {}, {"requestId": "r2"}),
    ]
    endpoint, received, server = raw_server(answers)
    client = LiveClient(
        reconciler.signing.Credentials("ak", "sk"),
        endpoint=endpoint,
        backoff_factor=0.5,
        backoff_jitter=0.0,
    )
    with server, client:
        result = client.add_live_record_task(
            {"publishDomain": "d", "appName": "a", "streamName": "s"}, {}
        )
    assert result.request_id == "r2"
    assert len(received) == 4
    assert slept == [0.5, 1.0]  # 0.5 x 2**(n-1), then nothing: Retry-After: 0


# --- endpoints given by the user ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://live.jdcloud-api.com", "https://live.jdcloud-api.com"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://[::1]:8000/gateway/", "http://[::1]:8000/gateway"),
        ("HTTPS://Live.JDCloud-api.com", "HTTPS://Live.JDCloud-api.com"),
    ],
)
def test_check_endpoint_accepts_http_urls_with_a_host(endpoint: str, expected: str) -> None:
    assert check_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("localhost:8000", ["no scheme", "http://localhost:8000"]),
        ("live.jdcloud-api.com", ["no scheme", "https://live.jdcloud-api.com"]),
        ("", ["empty"]),
        ("ftp://x", ["ftp", "http:// or https://"]),
        ("https://", ["no host"]),
        ("http:///v1", ["no host"]),
        ("https://h?x=1", ["query"]),
        ("https://h#top", ["fragment"]),
        ("https://user:hunter2@h", ["user"]),
        # No `://`: still never echoed, the suggestion included.
        ("user:hunter2@h", ["no scheme", "http://***@h"]),
        ("//user:hunter2@h:9", ["no scheme"]),
        ("http:/user:hunter2@h", ["no scheme"]),
        ("https://h:99999", ["port"]),
        ("https://h:abc", ["port"]),
        ("https://h ost", ["whitespace"]),
        ("https://h\n", ["whitespace"]),
        ("http://[::1", ["is not a valid URL"]),
    ],
)
def test_check_endpoint_says_what_is_wrong(endpoint: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        check_endpoint(endpoint)
    message = str(caught.value)
    assert message.startswith("the endpoint")
    for word in words:
        assert word in message
    assert "hunter2" not in message  # a password in a URL is never echoed
