"""The signed HTTP client for JD Cloud Live's addLiveRecordTask, with DESIGN §1's retry rules."""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from reconciler import __version__
from reconciler.signing import SECURITY_TOKEN_HEADER, Credentials, sign_request

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
    """Nothing was created (a 4xx answer, 429/503 after every retry, or no connection at all);
    the same request may be sent again once the cause is fixed."""


class AuthenticationError(FinalError):
    """401: the credentials were refused; every other request would be refused too."""


class UnknownOutcomeError(ApiError):
    """The request left the machine and no usable answer came back: the task may exist."""


@dataclass(frozen=True)
class SubmitResult:
    request_id: str
    http_status: int


def record_task_path(publish_domain: str, app_name: str, stream_name: str) -> str:
    """`/v1/records/{d}/appNames/{a}/streamNames/{s}/task`, each value one encoded segment.

    Raises ValueError for a value that is not a valid single segment, so it never reaches the
    network: a `/` would change the path, and `?`, `#`, `%` and spaces are what a mangled
    value looks like.
    """
    segments = (
        _segment("publishDomain", publish_domain, None),
        _segment("appName", app_name, MAX_SEGMENT_LENGTH),
        _segment("streamName", stream_name, MAX_SEGMENT_LENGTH),
    )
    return "/v1/records/{}/appNames/{}/streamNames/{}/task".format(*segments)


def _segment(field: str, value: object, max_length: int | None) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field} is {len(value)} characters long; at most {max_length} allowed")
    # HTTP clients and servers resolve dot segments, so "." or ".." would name another path.
    if value in (".", ".."):
        raise ValueError(f"{field} {value!r} is not a valid path segment")
    for char in value:
        if char in "/?#%":
            raise ValueError(f"{field} {value!r} must not contain {char!r}")
        if char.isspace() or ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            raise ValueError(f"{field} {value!r} must not contain whitespace or control characters")
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError(f"{field} {value!r} is not valid Unicode text")
    # quote() keeps only unreserved characters, so `+` becomes %2B and is never read as a space.
    return quote(value, safe="")


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The JSON body as sent: compact, keys sorted, UTF-8."""
    return json.dumps(dict(body), separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode(
        "utf-8"
    )


class JdcloudSignatureAuth(AuthBase):
    """Signs each prepared request with JDCLOUD3-HMAC-SHA256 (fresh date and nonce each time).

    urllib3's retries re-send the same prepared bytes, date and nonce included; that is fine:
    the signature stays valid for them.
    """

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
    """urllib3's Retry, narrowed to DESIGN §1: only 429 and 503 may carry a Retry-After worth
    honouring (urllib3 also retries a 413 that has one), and a Retry-After longer than
    `backoff_max` is shortened to it, so one answer cannot stall a run for hours."""

    RETRY_AFTER_STATUS_CODES = RETRIED_STATUSES

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)


def retry_policy(
    *,
    max_retries: int = 4,
    backoff_factor: float = 0.5,
    backoff_max: float = 30.0,
    backoff_jitter: float = 0.5,
) -> Retry:
    """What may be retried: connections that could not be made (nothing was sent), and 429/503
    answers. Never a read timeout, a dropped connection or any other answer: the POST is not
    idempotent, and the server may already have created the task."""
    return _NotProcessedRetry(
        total=max_retries,
        connect=max_retries,
        read=0,
        status=max_retries,
        other=0,
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
        self.endpoint = _check_endpoint(endpoint)
        self.access_key = credentials.access_key
        self._timeout = (connect_timeout, read_timeout)
        self._max_retries = max_retries
        retries = retry_policy(
            max_retries=max_retries,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
        )
        adapter = HTTPAdapter(
            pool_connections=pool_size, pool_maxsize=pool_size, max_retries=retries
        )
        self._session = requests.Session()
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._session.auth = JdcloudSignatureAuth(credentials)

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
        already normalised by the caller. Raises FinalError (incl. AuthenticationError) or
        UnknownOutcomeError; ValueError for a path that must not be sent."""
        try:
            names = (path["publishDomain"], path["appName"], path["streamName"])
        except KeyError as error:
            raise ValueError(f"the path parameters lack {error.args[0]}") from None
        for key, value in zip(("publishDomain", "appName", "streamName"), names, strict=True):
            if key in body and body[key] != value:
                raise ValueError(
                    f"the body's {key} {body[key]!r} differs from the path's {value!r}"
                )
        url = self.endpoint + record_task_path(*names)
        request = requests.Request(
            "POST", url, data=encode_body(body), headers={"Content-Type": "application/json"}
        )
        prepared = self._session.prepare_request(request)
        _log.debug(
            "POST %s headers=%s body=%s",
            prepared.url,
            redact_headers(prepared.headers),
            _clip(prepared.body, _LOGGED_BODY_CHARS),
        )
        # Session.request would merge these too; we send a prepared request to log it first.
        settings = self._session.merge_environment_settings(prepared.url, {}, None, None, None)
        try:
            response = self._session.send(
                prepared, timeout=self._timeout, allow_redirects=False, **settings
            )
        except requests.RequestException as error:
            raise self._transport_error(error, url) from error
        return self._result(response)

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
        fields: dict[str, Any] = {
            "http_status": status,
            "error_status": answer.error_status,
            "error_message": answer.error_message,
            "request_id": answer.request_id,
        }
        what = _describe(
            status,
            answer.error_status,
            answer.error_message or answer.unreadable,
            answer.request_id,
        )
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

    def _transport_error(self, error: requests.RequestException, url: str) -> ApiError:
        reason = _reason(error)
        host = urlsplit(url).netloc
        if _nothing_sent(error, reason):
            return FinalError(
                f"could not connect to {host} ({_say(reason)}), also after "
                f"{self._max_retries} retries; nothing was sent"
            )
        if isinstance(reason, ReadTimeoutError) or isinstance(error, requests.ReadTimeout):
            what = f"no answer from {host} within {self._timeout[1]:g} s"
        elif isinstance(reason, ProtocolError):
            what = f"the connection to {host} was dropped ({_say(reason)})"
        else:
            what = f"the request to {host} failed ({_say(reason)})"
        return UnknownOutcomeError(
            f"{what} after the request was sent; it is unknown whether the task was created"
        )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` safe to log: Authorization and the security token are REDACTED."""
    return {
        name: _REDACTED if name.lower() in _SECRET_HEADERS else value
        for name, value in headers.items()
    }


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the endpoint {endpoint!r} must be an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"the endpoint {endpoint!r} must not have a query, fragment or user")
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


def _describe(
    status: int, error_status: str | None, message: str | None, request_id: str | None
) -> str:
    text = f"HTTP {status}"
    if error_status:
        text += f" {error_status}"
    if message:
        text += f": {message}"
    return text + f" (requestId {request_id or 'unknown'})"


def _reason(error: requests.RequestException) -> BaseException:
    """The urllib3 error underneath requests' wrapping (MaxRetryError's reason if any)."""
    inner = error.args[0] if error.args else None
    if isinstance(inner, MaxRetryError) and inner.reason is not None:
        return inner.reason
    if isinstance(inner, BaseException):
        return inner
    return error


def _nothing_sent(error: requests.RequestException, reason: BaseException) -> bool:
    """True only when the request certainly never reached the server."""
    if isinstance(error, requests.ConnectTimeout | requests.exceptions.ProxyError):
        return True  # a connect timeout, or no connection to the proxy
    if isinstance(error, requests.exceptions.InvalidURL | requests.exceptions.InvalidHeader):
        return True  # refused while preparing
    if isinstance(reason, ConnectTimeoutError):  # includes refused connections and DNS failures
        return True
    # A certificate is checked in the TLS handshake, before any byte of the request is sent.
    return isinstance(reason, Urllib3SSLError) and any(
        isinstance(arg, ssl.SSLCertVerificationError) for arg in reason.args
    )


def _say(reason: BaseException) -> str:
    """A short cause, without urllib3's `HTTPConnectionPool(host=..., port=...): ` prefix."""
    if isinstance(reason, ProtocolError) and len(reason.args) > 1:
        inner = reason.args[1]  # ("Connection aborted.", RemoteDisconnected(...))
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
    text = str(reason)
    prefix, separator, rest = text.partition("): ")
    if separator and prefix.startswith(("HTTPConnection", "HTTPSConnection")):
        return rest
    return text


def _clip(value: str | bytes | None, limit: int) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
