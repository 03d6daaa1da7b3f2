"""The signed HTTP client for JD Cloud Live's addLiveRecordTask, with DESIGN §1's retry rules."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import random
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from requests.auth import AuthBase
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.poolmanager import PoolManager
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from reconciler import __version__
from reconciler.signing import SECURITY_TOKEN_HEADER, Credentials, sign_request
from reconciler.text import has_space_or_control, without_user_info

DEFAULT_ENDPOINT = "https://live.jdcloud-api.com"
USER_AGENT = f"reconciler/{__version__}"
ACCESS_KEY_VARIABLE = "JDCLOUD_ACCESS_KEY"
SECRET_KEY_VARIABLE = "JDCLOUD_SECRET_KEY"
SESSION_TOKEN_VARIABLE = "JDCLOUD_SESSION_TOKEN"

#: Answers that mean "not processed, try again later": the only statuses retried.
RETRIED_STATUSES = frozenset({429, 503})
MAX_SEGMENT_LENGTH = 128

_log = logging.getLogger("reconciler.client")
_REDACTED = "REDACTED"
_SECRET_HEADERS = frozenset({"authorization", SECURITY_TOKEN_HEADER})
_LOGGED_BODY_CHARS = 2000
_SHOWN_BODY_CHARS = 200
# What urllib3 puts before its messages: `HTTPSConnection(host='h', port=443): `.
_URLLIB3_PREFIX = re.compile(r"^\w*Connection(?:Pool)?\(host=[^)]*\): ")


class CredentialsError(Exception):
    """JD Cloud credentials are missing from the environment; `missing` names the variables."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Credentials:
    """Credentials from JDCLOUD_ACCESS_KEY, JDCLOUD_SECRET_KEY and optional
    JDCLOUD_SESSION_TOKEN. Surrounding whitespace is dropped (keys never contain any, and a
    stray newline from `$(cat keyfile)` would otherwise break every signature)."""
    access_key = environ.get(ACCESS_KEY_VARIABLE, "").strip()
    secret_key = environ.get(SECRET_KEY_VARIABLE, "").strip()
    missing = tuple(
        name
        for name, value in ((ACCESS_KEY_VARIABLE, access_key), (SECRET_KEY_VARIABLE, secret_key))
        if not value
    )
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise CredentialsError(f"{' and '.join(missing)} {verb} not set", missing)
    session_token = environ.get(SESSION_TOKEN_VARIABLE, "").strip() or None
    try:
        return Credentials(access_key, secret_key, session_token)
    except ValueError as error:  # Credentials' messages name no secret
        raise CredentialsError(f"{ACCESS_KEY_VARIABLE} is not usable: {error}") from None


class ApiError(Exception):
    """A request to the Live API failed; str() is what a user needs to act."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_status: str | None = None,
        error_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_status = error_status
        self.error_message = error_message
        self.request_id = request_id


class FinalError(ApiError):
    """Nothing was created (a 4xx answer, 429/503 after every retry, or nothing sent at all);
    the same request may be sent again once the cause is fixed."""


class AuthenticationError(FinalError):
    """401: the credentials were refused; every other request would be refused too."""


class EndpointUnreachableError(FinalError):
    """The endpoint could not be reached, so nothing was sent: no connection (DNS failure,
    refused, reset or timed out, also after the retries) or a failed TLS handshake. Every other
    request to `host` would most likely fail the same way."""

    def __init__(self, message: str, *, host: str, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.host = host


class InvalidRequestError(FinalError, ValueError):
    """The client refuses to build this request (a path value that is not one URL segment,
    a body that contradicts the path or is not JSON): it was never sent. Also a ValueError."""


class UnknownOutcomeError(ApiError):
    """Bytes of the request reached the connection and no usable answer came back: the task
    may exist."""


@dataclass(frozen=True)
class SubmitResult:
    request_id: str
    http_status: int


def record_task_path(publish_domain: str, app_name: str, stream_name: str) -> str:
    """`/v1/records/{d}/appNames/{a}/streamNames/{s}/task`, each value one encoded segment.

    Raises InvalidRequestError (a ValueError) for a value that is not a valid single segment,
    so it never reaches the network: a `/` would change the path, and `?`, `#`, `%` and spaces
    are what a mangled value looks like.
    """
    segments = (
        _segment("publishDomain", publish_domain, None),
        _segment("appName", app_name, MAX_SEGMENT_LENGTH),
        _segment("streamName", stream_name, MAX_SEGMENT_LENGTH),
    )
    return "/v1/records/{}/appNames/{}/streamNames/{}/task".format(*segments)


def _segment(field: str, value: object, max_length: int | None) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidRequestError(f"{field} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise InvalidRequestError(
            f"{field} is {len(value)} characters long; at most {max_length} allowed"
        )
    # HTTP clients and servers resolve dot segments, so "." or ".." would name another path.
    if value in (".", ".."):
        raise InvalidRequestError(f"{field} {value!r} is not a valid path segment")
    for char in value:
        if char in "/?#%":
            raise InvalidRequestError(f"{field} {value!r} must not contain {char!r}")
        if char.isspace() or ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            raise InvalidRequestError(
                f"{field} {value!r} must not contain whitespace or control characters"
            )
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise InvalidRequestError(f"{field} {value!r} is not valid Unicode text")
    # quote() keeps only unreserved characters, so `+` becomes %2B and is never read as a space.
    return quote(value, safe="")


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The JSON body as sent: compact, keys sorted, UTF-8. ValueError for NaN or infinity
    (not JSON), TypeError for a value JSON has no form for."""
    text = json.dumps(
        dict(body), separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


class JdcloudSignatureAuth(AuthBase):
    """Signs each prepared request with JDCLOUD3-HMAC-SHA256 (a fresh date and nonce each time:
    LiveClient prepares every attempt anew, so a retry is never a replay)."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body if request.body is not None else b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError("only byte bodies can be signed")
        assert request.method is not None and request.url is not None  # set by prepare()
        signed = sign_request(request.method, request.url, request.headers, body, self._credentials)
        request.headers.clear()
        request.headers.update(signed)
        return request

    def __repr__(self) -> str:
        return f"JdcloudSignatureAuth({self._credentials!r})"


class _NotProcessedRetry(Retry):
    """urllib3's Retry as the policy of DESIGN §1, with three changes:
    - only 429 and 503 may carry a Retry-After worth honouring (urllib3 also retries a 413 that
      has one), and a Retry-After longer than `backoff_max` is shortened to it, so one answer
      cannot stall a run for hours;
    - `Retry-After: 0` means "again, now" (urllib3 takes 0 for no header and backs off);
    - the first retry backs off too: backoff_factor x 2**(n-1) (+ jitter) before retry n
      (urllib3 retries the first time at once, which only hammers a server that said "busy").
    LiveClient drives the attempts (each signed afresh); this object counts and sleeps."""

    RETRY_AFTER_STATUS_CODES = RETRIED_STATUSES

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        if self.get_retry_after(response) == 0:
            return True  # slept for the zero seconds asked
        return super().sleep_for_retry(response)

    def get_backoff_time(self) -> float:
        retries = len(self.history)
        if retries == 0:
            return 0.0
        seconds = self.backoff_factor * 2 ** (retries - 1)
        if self.backoff_jitter:
            seconds += random.random() * self.backoff_jitter
        return float(max(0.0, min(self.backoff_max, seconds)))


def retry_policy(
    *,
    max_retries: int = 4,
    backoff_factor: float = 0.5,
    backoff_max: float = 30.0,
    backoff_jitter: float = 0.5,
) -> Retry:
    """How many retries, how long to wait before each, and which statuses mean "not processed"
    (429, 503). Which transport failures may be retried is decided by LiveClient from what the
    connection recorded (only those where nothing was sent), never by the exception's type: the
    POST is not idempotent, and the server may already have created the task."""
    return _NotProcessedRetry(
        total=max_retries,
        connect=None,
        read=None,
        status=None,
        other=None,
        redirect=0,
        allowed_methods=frozenset({"POST"}),
        status_forcelist=RETRIED_STATUSES,
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        backoff_jitter=backoff_jitter,
        raise_on_status=False,
        raise_on_redirect=False,
        respect_retry_after_header=True,
    )


# --- how far an attempt got ----------------------------------------------------------------------
#
# Whether a failed request may have been processed is a fact about the socket, not about the
# exception's type: the connection classes below record, per thread, whether the connection was
# being made, was made, or had bytes of the request written to it. LiveClient resets the record
# before each attempt and reads it when the attempt fails.


class _Stage(IntEnum):
    NOT_STARTED = 0  # no connection was touched: the request never reached the network
    CONNECTING = 1  # DNS, TCP connect, proxy tunnel, TLS handshake: no byte of the request sent
    CONNECTED = 2  # the connection is ready (new or reused); no byte of the request written yet
    WRITTEN = 3  # at least one byte of the request went to the socket: it may be processed


class _AttemptProgress(threading.local):
    stage: _Stage = _Stage.NOT_STARTED


_PROGRESS = _AttemptProgress()


class _ProgressRecordingConnection(HTTPConnection):
    """Mixed in front of urllib3's connection classes (plain, TLS, SOCKS): records the stage of
    the current thread's attempt. Bytes are written with socket.send, whose count says exactly
    whether any byte left; a send that raises wrote nothing."""

    _connecting = False

    def connect(self) -> None:
        _PROGRESS.stage = _Stage.CONNECTING
        self._connecting = True
        try:
            super().connect()
        finally:
            self._connecting = False
        _PROGRESS.stage = _Stage.CONNECTED

    def send(self, data: Any) -> None:
        if self._connecting:  # a CONNECT to a proxy, while the tunnel is made: not the request
            super().send(data)
            return
        if self.sock is None:
            self.connect()  # what http.client's send does (auto_open), here to record it
        progress = _PROGRESS
        if progress.stage < _Stage.CONNECTED:
            progress.stage = _Stage.CONNECTED  # a reused connection
        if not isinstance(data, bytes | bytearray | memoryview):
            progress.stage = _Stage.WRITTEN  # a file or an iterable: counted before its first byte
            super().send(data)
            return
        view = memoryview(data).cast("B")
        while view:
            count = self.sock.send(view)
            if count:
                progress.stage = _Stage.WRITTEN
            view = view[count:]


@functools.cache
def _recording_pool(pool_class: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    """`pool_class` with its ConnectionCls recording progress (the class itself if it does)."""
    connection_class = pool_class.ConnectionCls
    if issubclass(connection_class, _ProgressRecordingConnection):
        return pool_class
    recording = type(
        f"ProgressRecording{connection_class.__name__}",
        (_ProgressRecordingConnection, connection_class),
        {},
    )
    return type(
        f"ProgressRecording{pool_class.__name__}", (pool_class,), {"ConnectionCls": recording}
    )


def _record_progress(manager: PoolManager) -> None:
    manager.pool_classes_by_scheme = {
        scheme: _recording_pool(pool_class)
        for scheme, pool_class in manager.pool_classes_by_scheme.items()
    }


class _ProgressRecordingAdapter(HTTPAdapter):
    """requests' adapter whose every pool, proxied ones included, records progress."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _record_progress(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _record_progress(manager)
        return manager


class LiveClient:
    """addLiveRecordTask over one pooled, signed requests.Session."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_retries: int = 4,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        backoff_jitter: float = 0.5,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.endpoint = check_endpoint(endpoint)
        self.access_key = credentials.access_key
        self._timeout = (connect_timeout, read_timeout)
        self._max_retries = max_retries
        self._retry = retry_policy(
            max_retries=max_retries,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
        )
        # The adapter never retries: every attempt is prepared, signed and sent by _submit.
        adapter = _ProgressRecordingAdapter(
            pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0
        )
        self._session = requests.Session()
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._session.auth = JdcloudSignatureAuth(credentials)
        token = credentials.session_token
        secrets = (credentials.secret_key, token, _b64(token) if token else None)
        self._secrets = tuple(secret for secret in secrets if secret)

    def __repr__(self) -> str:
        return f"LiveClient(endpoint={self.endpoint!r}, access_key={self.access_key!r})"

    def __enter__(self) -> LiveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def add_live_record_task(
        self, path: Mapping[str, str], body: Mapping[str, Any]
    ) -> SubmitResult:
        """POST one task. `path` has publishDomain/appName/streamName; `body` is the JSON body,
        already normalised by the caller.

        Raises FinalError when nothing was created, among them InvalidRequestError (refused
        before sending), EndpointUnreachableError (nothing sent: no connection or no TLS) and
        AuthenticationError (401); UnknownOutcomeError only when bytes of the request were
        written and no usable answer came back. Any other exception raised on the way is one of
        these two too, depending on whether a byte was written."""
        _PROGRESS.stage = _Stage.NOT_STARTED
        try:
            url, data = self._request_parts(path, body)
            return self._submit(url, data)
        except ApiError:
            raise
        except Exception as error:
            raise self._unexpected(error) from error

    def _request_parts(self, path: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str, bytes]:
        try:
            names = (path["publishDomain"], path["appName"], path["streamName"])
        except KeyError as error:
            raise InvalidRequestError(f"the path parameters lack {error.args[0]}") from None
        for key, value in zip(("publishDomain", "appName", "streamName"), names, strict=True):
            if key in body and body[key] != value:
                raise InvalidRequestError(
                    f"the body's {key} {body[key]!r} differs from the path's {value!r}"
                )
        url = self.endpoint + record_task_path(*names)
        try:
            data = encode_body(body)
        except (TypeError, ValueError) as error:
            raise InvalidRequestError(f"the body cannot be sent as JSON: {error}") from None
        return url, data

    def _prepare(
        self, url: str, data: bytes, *, method: str = "POST", logged_body: str | None = None
    ) -> requests.PreparedRequest:
        """The request of one attempt, signed now: its own x-jdcloud-date and nonce.
        `logged_body` is logged instead of the body (one that may hold a secret)."""
        request = requests.Request(
            method, url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            prepared = self._session.prepare_request(request)
        except ValueError as error:  # requests' InvalidURL, InvalidHeader
            raise InvalidRequestError(f"the request cannot be built: {error}") from None
        _log.debug(
            "%s %s headers=%s body=%s",
            method,
            prepared.url,
            redact_headers(prepared.headers),
            logged_body if logged_body is not None else _clip(prepared.body, _LOGGED_BODY_CHARS),
        )
        return prepared

    def _submit(self, url: str, data: bytes) -> SubmitResult:
        host = urlsplit(url).netloc
        retry = self._retry
        prepared = self._prepare(url, data)
        # Session.request would merge these too; we send prepared requests, to sign each attempt
        # afresh and log it first.
        settings = self._session.merge_environment_settings(prepared.url, {}, None, None, None)
        while True:
            _PROGRESS.stage = _Stage.NOT_STARTED
            try:
                response = self._session.send(
                    prepared, timeout=self._timeout, allow_redirects=False, **settings
                )
            except requests.RequestException as error:
                stage, reason = _PROGRESS.stage, _reason(error)
                if stage is _Stage.WRITTEN:
                    raise self._unknown_outcome(error, reason, host) from error
                if stage is not _Stage.NOT_STARTED and not _is_tls_failure(error, reason):
                    try:
                        retry = retry.increment(method="POST", url=url, error=reason)
                    except MaxRetryError:
                        pass
                    else:
                        _log.debug("nothing was sent (%s); retrying", _say(reason))
                        retry.sleep()
                        prepared = self._prepare(url, data)  # signed afresh: a new date, nonce
                        continue
                raise self._not_sent(stage, error, reason, host, len(retry.history)) from error

            status = response.status_code
            if not retry.is_retry("POST", status, "Retry-After" in response.headers):
                return self._result(response)
            _PROGRESS.stage = _Stage.NOT_STARTED  # "not processed" is an answer: nothing in doubt
            try:
                retry = retry.increment(method="POST", url=url, response=response.raw)
            except MaxRetryError:
                return self._result(response)
            _log.debug("HTTP %s: not processed; retrying", status)
            retry.sleep(response.raw)
            prepared = self._prepare(url, data)  # signed afresh: a new date and nonce

    def _result(self, response: requests.Response) -> SubmitResult:
        status = response.status_code
        answer = _parse_answer(response)
        _log.debug(
            "HTTP %s requestId=%s headers=%s body=%s",
            status,
            answer.request_id,
            redact_headers(response.headers),
            _clip(response.content, _LOGGED_BODY_CHARS),
        )
        fields, what = _error_fields(status, answer)
        if 200 <= status < 300:
            if answer.request_id and not answer.has_error and answer.unreadable is None:
                return SubmitResult(request_id=answer.request_id, http_status=status)
            raise UnknownOutcomeError(
                f'{what}: the answer is not the expected {{"requestId": ...}}, so it is unknown '
                "whether the task was created",
                **fields,
            )
        if status == 401:
            raise AuthenticationError(
                f"{what}: the credentials were refused; check JDCLOUD_ACCESS_KEY, "
                "JDCLOUD_SECRET_KEY (and JDCLOUD_SESSION_TOKEN) and this machine's clock",
                **fields,
            )
        if status in RETRIED_STATUSES:
            raise FinalError(
                f"{what}: still refused after {self._max_retries} retries; nothing was created, "
                "apply again later",
                **fields,
            )
        if 300 <= status < 400:
            location = response.headers.get("Location", "nowhere")
            raise FinalError(
                f"{what}: the endpoint redirects to {location}; nothing was created, check the "
                "endpoint",
                **fields,
            )
        if 400 <= status < 500:
            hint = "the access key may not use this domain" if status == 403 else "fix the cause"
            raise FinalError(f"{what}: nothing was created; {hint}, then apply again", **fields)
        raise UnknownOutcomeError(
            f"{what}: the server failed after receiving the request, so it is unknown whether "
            "the task was created",
            **fields,
        )

    def _unknown_outcome(
        self, error: requests.RequestException, reason: Exception, host: str
    ) -> UnknownOutcomeError:
        what = self._no_answer(error, reason, host)
        return UnknownOutcomeError(
            f"{what} after the request was sent; it is unknown whether the task was created"
        )

    def _no_answer(self, error: requests.RequestException, reason: Exception, host: str) -> str:
        """What became of a request whose bytes were sent and no answer came back."""
        if isinstance(reason, ReadTimeoutError) or isinstance(error, requests.ReadTimeout):
            return f"no answer from {host} within {self._timeout[1]:g} s"
        if isinstance(reason, ProtocolError):
            return f"the connection to {host} was dropped ({_say(reason)})"
        return f"the request to {host} failed ({_say(reason)})"

    def _not_sent(
        self,
        stage: _Stage,
        error: requests.RequestException,
        reason: Exception,
        host: str,
        retries: int,
    ) -> FinalError:
        cause = _say(reason)
        if stage is _Stage.NOT_STARTED:
            return FinalError(
                f"the request to {host} could not be sent ({cause}); nothing was sent"
            )
        if _is_tls_failure(error, reason):
            if _is_certificate_failure(reason):
                what = f"the TLS handshake with {host} failed: its certificate was refused"
                return EndpointUnreachableError(f"{what} ({cause}); nothing was sent", host=host)
            return EndpointUnreachableError(
                f"the TLS handshake with {host} failed ({cause}); nothing was sent (an http:// "
                "server given as https:// fails like this)",
                host=host,
            )
        if stage is _Stage.CONNECTING:
            what = f"could not connect to {host} ({cause})"
        else:
            what = f"the connection to {host} failed before the request was sent ({cause})"
        tried = (
            f", also after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        )
        return EndpointUnreachableError(f"{what}{tried}; nothing was sent", host=host)

    def _unexpected(self, error: Exception) -> ApiError:
        """An error nothing above expected (a bug, here or in a library): classified by whether
        a byte of the request was written."""
        cause = f"{type(error).__name__}: {error}"
        for secret in self._secrets:
            cause = cause.replace(secret, _REDACTED)
        cause = _clip(cause, _SHOWN_BODY_CHARS)
        if _PROGRESS.stage is _Stage.WRITTEN:
            return UnknownOutcomeError(
                f"the request failed after it was sent (unexpected {cause}); it is unknown "
                "whether the task was created"
            )
        return FinalError(f"the request could not be sent (unexpected {cause}); nothing was sent")

    # --- the record notify URL (DESIGN §7a): read, and set ------------------------------------
    #
    # Unlike addLiveRecordTask, both requests may be retried whatever happened to an attempt:
    # the GET only reads, and the POST sets a value (setting it twice is harmless). Neither the
    # body sent nor the one received is logged: a notify URL holds the callback token.

    def get_record_notify_config(self, publish_domain: str) -> NotifyConfigRead:
        """GET /v1/recordNotifys/{publishDomain}: the notify URL set now (None: none is set,
        which JD Cloud answers with a 404 in its error shape).

        Raises AuthenticationError (401), EndpointUnreachableError (no connection or no TLS,
        also after the retries), InvalidRequestError (a domain that is no path segment) and
        FinalError for any other failure, retries included: a read changes nothing."""
        what = f"reading the notify URL of {publish_domain}"
        _PROGRESS.stage = _Stage.NOT_STARTED
        try:
            domain = _segment("publishDomain", publish_domain, None)
            url = f"{self.endpoint}{NOTIFY_CONFIG_PATH}/{domain}"
            response = self._send_idempotent("GET", url, b"", what, logged_body="")
            answer = _parse_answer(response)
            if response.status_code == 404 and answer.unreadable is None:
                _log.debug("HTTP 404 requestId=%s: no notify URL is set", answer.request_id)
                return NotifyConfigRead(None, answer.request_id, 404)
            document = self._config_answer(response, answer, what, sets=False)
        except ApiError:
            raise
        except Exception as error:
            raise self._unexpected(error) from error
        result = document.get("result")
        if result is None:
            return NotifyConfigRead(None, answer.request_id, response.status_code)
        found = result.get("notifyUrl") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(found, str | None):
            raise FinalError(
                f"{what}: {_describe(response.status_code, None, None, answer.request_id)}; the "
                'answer is not the expected {"result": {"notifyUrl": ...}}',
                http_status=response.status_code,
                request_id=answer.request_id,
            )
        return NotifyConfigRead(found or None, answer.request_id, response.status_code)

    def set_record_notify_config(self, publish_domain: str, notify_url: str) -> SubmitResult:
        """POST /v1/recordNotifys:config with {publishDomain, notifyUrl}.

        Raises AuthenticationError (401), EndpointUnreachableError and InvalidRequestError
        (nothing sent), FinalError (a 4xx: nothing was changed) and UnknownOutcomeError (no
        usable answer after the retries: the URL may or may not be set now). No message
        repeats `notify_url`."""
        what = f"setting the notify URL of {publish_domain}"
        _PROGRESS.stage = _Stage.NOT_STARTED
        try:
            _segment("publishDomain", publish_domain, None)  # the same rule as the GET's
            body = {"publishDomain": publish_domain, "notifyUrl": notify_url}
            try:
                data = encode_body(body)
            except (TypeError, ValueError):
                raise InvalidRequestError(f"{what}: the body cannot be sent as JSON") from None
            shown = encode_body({**body, "notifyUrl": _WITHHELD}).decode()
            url = f"{self.endpoint}{NOTIFY_CONFIG_PATH}:config"
            response = self._send_idempotent("POST", url, data, what, logged_body=shown)
            answer = _parse_answer(response)
            self._config_answer(response, answer, what, sets=True)
        except ApiError:
            raise
        except Exception as error:
            raise self._unexpected(error) from error
        if not answer.request_id:
            raise UnknownOutcomeError(
                f"{what}: {_describe(response.status_code, None, None, None)}; the answer has "
                "no requestId, so it is unknown whether the URL was set (plan reads it again)",
                http_status=response.status_code,
            )
        return SubmitResult(request_id=answer.request_id, http_status=response.status_code)

    def _send_idempotent(
        self, method: str, url: str, data: bytes, what: str, *, logged_body: str
    ) -> requests.Response:
        """Send a request that may be repeated: retried (with the same back-off) on any
        connection failure, at any stage, and on 429 and 5xx answers; the last answer is
        returned. A failed TLS handshake is not retried (it fails the same way again)."""
        host = urlsplit(url).netloc
        retry = self._retry.new(
            allowed_methods=frozenset({method}), status_forcelist=IDEMPOTENT_RETRIED_STATUSES
        )
        prepared = self._prepare(url, data, method=method, logged_body=logged_body)
        settings = self._session.merge_environment_settings(prepared.url, {}, None, None, None)
        while True:
            _PROGRESS.stage = _Stage.NOT_STARTED
            try:
                response = self._session.send(
                    prepared, timeout=self._timeout, allow_redirects=False, **settings
                )
            except requests.RequestException as error:
                stage, reason = _PROGRESS.stage, _reason(error)
                if stage is not _Stage.NOT_STARTED and not _is_tls_failure(error, reason):
                    try:
                        retry = retry.increment(method=method, url=url, error=reason)
                    except MaxRetryError:
                        pass
                    else:
                        _log.debug("%s failed (%s); retrying", what, _say(reason))
                        retry.sleep()
                        prepared = self._prepare(url, data, method=method, logged_body=logged_body)
                        continue
                retries = len(retry.history)
                if stage is _Stage.WRITTEN:
                    tried = f", also after {retries} {'retry' if retries == 1 else 'retries'}"
                    sets = method == "POST"
                    outcome = "it is unknown whether it was set" if sets else "nothing was read"
                    lost: type[ApiError] = UnknownOutcomeError if sets else FinalError
                    raise lost(
                        f"{what}: {self._no_answer(error, reason, host)}"
                        f"{tried if retries else ''}; {outcome}"
                    ) from error
                failure = self._not_sent(stage, error, reason, host, retries)
                failure.args = (f"{what}: {failure}",)
                raise failure from error
            status = response.status_code
            if not retry.is_retry(method, status, "Retry-After" in response.headers):
                return response
            _PROGRESS.stage = _Stage.NOT_STARTED
            try:
                retry = retry.increment(method=method, url=url, response=response.raw)
            except MaxRetryError:
                return response
            _log.debug("HTTP %s %s; retrying", status, what)
            retry.sleep(response.raw)
            prepared = self._prepare(url, data, method=method, logged_body=logged_body)

    def _config_answer(
        self, response: requests.Response, answer: _Answer, what: str, *, sets: bool
    ) -> dict[str, Any]:
        """The JSON document of a successful notify-config answer, or the error it means."""
        status = response.status_code
        _log.debug(
            "HTTP %s requestId=%s headers=%s body=(withheld: it may hold a notify URL)",
            status,
            answer.request_id,
            redact_headers(response.headers),
        )
        fields, shown = _error_fields(status, answer)
        if 200 <= status < 300 and not answer.has_error and answer.unreadable is None:
            document: dict[str, Any] = json.loads(response.content)
            return document
        changed = "nothing was changed" if sets else "nothing was read"
        if 200 <= status < 300:
            error: type[ApiError] = UnknownOutcomeError if sets else FinalError
            outcome = "it is unknown whether it was set" if sets else changed
            raise error(f"{what}: {shown}; the answer is not the expected one; {outcome}", **fields)
        if status == 401:
            raise AuthenticationError(
                f"{what}: {shown}; the credentials were refused; check JDCLOUD_ACCESS_KEY, "
                "JDCLOUD_SECRET_KEY (and JDCLOUD_SESSION_TOKEN) and this machine's clock",
                **fields,
            )
        if 300 <= status < 400:
            location = response.headers.get("Location", "nowhere")
            raise FinalError(
                f"{what}: {shown}; the endpoint redirects to {location}; {changed}, check the "
                "endpoint",
                **fields,
            )
        if 400 <= status < 500 and status != 429:
            hint = "the access key may not use this domain" if status == 403 else "fix the cause"
            raise FinalError(f"{what}: {shown}; {changed}; {hint}", **fields)
        retried = f"still failing after {self._max_retries} retries"
        if sets:
            raise UnknownOutcomeError(
                f"{what}: {shown}; {retried}; it is unknown whether it was set (plan reads it "
                "again)",
                **fields,
            )
        raise FinalError(f"{what}: {shown}; {retried}; {changed}", **fields)


NOTIFY_CONFIG_PATH = "/v1/recordNotifys"
#: The answers after which a repeatable request (the notify config's) is sent again.
IDEMPOTENT_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
_WITHHELD = "(withheld)"


@dataclass(frozen=True)
class NotifyConfigRead:
    """What GET /v1/recordNotifys/{publishDomain} answered. `notify_url` may hold the callback
    token: it is left out of the repr, and never logged."""

    notify_url: str | None = field(repr=False)  # None: no notify URL is set
    request_id: str | None
    http_status: int


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` safe to log: Authorization and the security token are REDACTED."""
    return {
        name: _REDACTED if name.lower() in _SECRET_HEADERS else value
        for name, value in headers.items()
    }


def check_endpoint(endpoint: str) -> str:
    """`endpoint` without its trailing `/` when it is an http:// or https:// URL with a host
    (and optionally a port and a path prefix); otherwise ValueError, whose text says what is
    wrong (a password in the URL is never repeated)."""
    if not endpoint:
        raise ValueError("the endpoint is empty; give an http:// or https:// URL")
    masked = without_user_info(endpoint)
    shown = repr(masked)
    if has_space_or_control(endpoint):
        raise ValueError(f"the endpoint {shown} must not contain whitespace or control characters")
    if "://" not in endpoint:
        raise ValueError(
            f"the endpoint {shown} has no scheme; write http://{masked} or https://{masked}"
        )
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as error:
        hint = "has an invalid port" if "port" in str(error).lower() else "is not a valid URL"
        raise ValueError(f"the endpoint {shown} {hint} ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"the endpoint {shown} uses {parts.scheme}://; it must be an http:// or https:// URL"
        )
    if not parts.hostname:
        raise ValueError(f"the endpoint {shown} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"the endpoint {shown} must not contain a user name or password")
    if port == 0:
        raise ValueError(f"the endpoint {shown} has an invalid port (0)")
    if "?" in endpoint:
        raise ValueError(f"the endpoint {shown} must not have a query (?...)")
    if "#" in endpoint:
        raise ValueError(f"the endpoint {shown} must not have a fragment (#...)")
    return endpoint.rstrip("/")


@dataclass(frozen=True)
class _Answer:
    """What a response body says, as far as it can be read."""

    request_id: str | None = None
    has_error: bool = False
    error_status: str | None = None
    error_message: str | None = None
    unreadable: str | None = None  # a snippet of a body that is not JD Cloud's JSON


def _parse_answer(response: requests.Response) -> _Answer:
    header_id = response.headers.get("x-jdcloud-request-id") or None
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        text = " ".join(response.content.decode("utf-8", "replace").split())
        return _Answer(header_id, unreadable=_clip(text, _SHOWN_BODY_CHARS) or "(empty body)")
    request_id = document.get("requestId")
    request_id = request_id if isinstance(request_id, str) and request_id else header_id
    error = document.get("error")
    if error is None:
        return _Answer(request_id)
    if not isinstance(error, dict):
        return _Answer(request_id, True, unreadable=_clip(json.dumps(error), _SHOWN_BODY_CHARS))
    status, message = error.get("status"), error.get("message")
    return _Answer(
        request_id,
        True,
        str(status) if status is not None else None,
        str(message) if message is not None else None,
    )


def _error_fields(status: int, answer: _Answer) -> tuple[dict[str, Any], str]:
    """The fields an ApiError carries for this answer, and the answer in one line."""
    fields: dict[str, Any] = {
        "http_status": status,
        "error_status": answer.error_status,
        "error_message": answer.error_message,
        "request_id": answer.request_id,
    }
    shown = _describe(
        status, answer.error_status, answer.error_message or answer.unreadable, answer.request_id
    )
    return fields, shown


def _describe(
    status: int, error_status: str | None, message: str | None, request_id: str | None
) -> str:
    text = f"HTTP {status}"
    if error_status:
        text += f" {error_status}"
    if message:
        text += f": {message}"
    return text + f" (requestId {request_id or 'unknown'})"


def _reason(error: requests.RequestException) -> Exception:
    """The urllib3 error underneath requests' wrapping (MaxRetryError's reason if any)."""
    inner = error.args[0] if error.args else None
    if isinstance(inner, MaxRetryError) and inner.reason is not None:
        return inner.reason
    if isinstance(inner, Exception):
        return inner
    return error


def _is_tls_failure(error: requests.RequestException, reason: Exception) -> bool:
    return isinstance(error, requests.exceptions.SSLError) or isinstance(
        reason, Urllib3SSLError | ssl.SSLError | ssl.CertificateError
    )


def _is_certificate_failure(reason: Exception) -> bool:
    causes = (reason, *reason.args)
    return any(
        isinstance(cause, ssl.SSLCertVerificationError | ssl.CertificateError) for cause in causes
    )


def _say(reason: Exception) -> str:
    """A short cause, without urllib3's `HTTPConnection(host=..., port=...): ` prefix."""
    if isinstance(reason, ProtocolError) and len(reason.args) > 1:
        inner = reason.args[1]  # ("Connection aborted.", RemoteDisconnected(...))
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
    return _URLLIB3_PREFIX.sub("", str(reason), count=1)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _clip(value: str | bytes | None, limit: int) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
