"""The sandbox: a local stand-in (not JD Cloud) of the Live addLiveRecordTask API, with faults."""

# Fault model, which the exactly-once tests rely on. After a request passes the signature and
# body checks, one random draw decides its fate (drop first, then the failure statuses in
# ascending order, then success; each with exactly its configured probability):
#   - an injected 503/429 (or any other injected status, 500 included) creates NOTHING: it is
#     answered before the task is accepted, like a JD Cloud that did not process the request.
#     A 500 is "unknown outcome" to the client; the sandbox simply never created the task.
#   - a drop ACCEPTS and journals the task, then closes the connection without answering: the
#     nasty real-world case where the task exists but the client never hears about it.
# Latency is added before that decision, to every checked task request.
# Replays: a correctly signed request whose x-jdcloud-nonce was already used (within twice the
# allowed clock skew) is refused 401 before any of this, as the real API may: a client must sign
# every request, every retry included, afresh.
# The record notify endpoints (/v1/recordNotifys...) are checked the same way (signature, nonce,
# body) and take only their own faults (notify_read_failures, notify_set_failures): an injected
# answer changes nothing, and its draws come from a generator of their own, so the task POST's
# fault sequence for a seed is what it was without them.
# The recorder (record_after set) "records" every accepted task, dropped ones included, after
# that delay and posts JD Cloud's record_done callback per format to the domain's notify URL. Its
# own fault draws come from a generator of their own, made when the task is accepted, so a seed
# gives the same recorder fates in arrival order whatever the timing of the posts.
# With a storage endpoint (an S3-compatible server, path-style) the recorder also writes each
# format's file into the task's saveBucket at its key, before that format's callback is queued;
# a write that fails (no such bucket, refused, unreachable) is counted, writes nothing and makes
# that format's callback say status "failed", as a service that cannot write the bucket would.

from __future__ import annotations

import contextlib
import copy
import heapq
import hmac
import io
import ipaddress
import json
import math
import random
import re
import secrets
import shlex
import signal
import socket
import socketserver
import string
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TextIO
from urllib.parse import quote, unquote, urlsplit

import requests

from reconciler import __version__
from reconciler.record_times import parse_record_time
from reconciler.schema import check_spec, ecma_match, load_schema
from reconciler.signing import NONCE_HEADER, Credentials, SignatureError, verify_request

TASK_PATH = "/v1/records/{publishDomain}/appNames/{appName}/streamNames/{streamName}/task"
TASKS_PATH = "/_sandbox/tasks"
RECORDINGS_PATH = "/_sandbox/recordings"
HEALTH_PATH = "/_sandbox/health"
# The record notify URL API, as the official SDK sends it (Set/Describe/Delete
# LiveStreamRecordNotifyConfigRequest in jdcloud_sdk.services.live.apis).
NOTIFY_CONFIG_PATH = "/v1/recordNotifys:config"
NOTIFY_PATH = "/v1/recordNotifys/{publishDomain}"
PATH_PARAMETERS = ("publishDomain", "appName", "streamName")
REQUEST_ID_HEADER = "x-jdcloud-request-id"

#: Bodies above this are refused unread (413): a task body is a few hundred bytes.
MAX_BODY_BYTES = 1 << 20
#: A signed x-jdcloud-date further than this from the sandbox's clock is refused, as a real
#: server would: it catches clients that sign with local time instead of UTC.
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=15)
#: Idle keep-alive connections are closed after this long, so dead clients free their thread.
#: Long, because urllib3 only notices a server-closed idle connection when it reuses it.
IDLE_TIMEOUT_SECONDS = 300.0
#: At most this many used nonces are remembered (the oldest is forgotten first), so a long run
#: cannot grow the sandbox without bound.
MAX_REMEMBERED_NONCES = 100_000

#: What the service writes when a task sets no saveObject (the API documentation's default).
DEFAULT_SAVE_OBJECT = (
    "record/{Date}/{ServerId}/{AppName}/{StreamName}/{StartTime}_{EndTime}.{format}"
)
#: The sandbox's {ServerId}: one fixed token, so keys are predictable.
SERVER_ID = "sandbox01"
#: The callback body's version, as in JD Cloud's documented example.
CALLBACK_VERSION = "v1.1"
#: How long one callback post may take (connect and read) before it counts as failed.
CALLBACK_TIMEOUT_SECONDS = 5.0
#: Threads that record and post; a slow notify URL holds one of them, never an API answer.
RECORDER_WORKERS = 4
#: How long writing one file into the storage endpoint may wait to connect, and for an answer.
STORAGE_CONNECT_TIMEOUT_SECONDS = 2.0
STORAGE_READ_TIMEOUT_SECONDS = 5.0
#: A write answered 5xx, or whose connection broke, is tried again this many times.
STORAGE_RETRIES = 1

# The clock that expires remembered nonces (a name of its own, so tests can move it).
_clock = time.monotonic
# The clock the recorder schedules by (also its own name: the nonce tests move the other one).
_recorder_clock = time.monotonic

_REQUEST_ID_ALPHABET = string.ascii_lowercase + string.digits
# JD Cloud's error.status names (Google API style) for the statuses the sandbox answers.
_ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "BAD_GATEWAY",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Statuses that mean "not processed, come back": they carry Retry-After: 0 so retries are quick.
_RETRY_LATER = frozenset({429, 503})


class JournalError(OSError):
    """The journal (`--journal FILE`) cannot be opened for appending; nothing was started."""

    def __init__(self, path: Path | None, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.path = path
        self.reason = error.strerror or str(error)

    def __str__(self) -> str:
        return f"cannot open the journal {self.path}: {self.reason}"


@dataclass(frozen=True)
class SandboxConfig:
    """How to run the sandbox. Credentials left None are throwaway random ones."""

    host: str = "127.0.0.1"
    port: int = 0
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    latency_ms: int = 0
    #: Injected failure statuses and their probabilities, e.g. {503: 0.2, 500: 0.05}.
    failures: Mapping[int, float] = field(default_factory=dict)
    #: Probability of accepting a task and then closing the connection without answering.
    drop_rate: float = 0.0
    #: Seeds the fault draws: the same seed gives the same fates to requests in arrival order.
    seed: int | None = None
    #: Injected failures of the record notify endpoints, like `failures` (statuses and their
    #: probabilities): of a read (GET /v1/recordNotifys/{publishDomain}) and of a set (POST
    #: /v1/recordNotifys:config). An injected answer changes nothing: a set sets nothing. A
    #: DELETE takes none.
    notify_read_failures: Mapping[int, float] = field(default_factory=dict)
    notify_set_failures: Mapping[int, float] = field(default_factory=dict)
    #: Append every accepted task here as a JSON line.
    journal: Path | None = None
    max_clock_skew: timedelta | None = DEFAULT_MAX_CLOCK_SKEW
    #: Write one line per request to stderr (the request line only: never headers).
    log_requests: bool = False
    #: Record every accepted task this many seconds after accepting it and post the record
    #: callbacks; None: never record (the recorder options below then must stay unset).
    record_after: float | None = None
    #: Where callbacks go for a domain without a notify URL set through the API (None: nowhere).
    notify_url: str | None = field(default=None, repr=False)
    #: Probability that an accepted task is never recorded (no file, no callback).
    record_fail_rate: float = 0.0
    #: Probability that a callback is posted twice.
    callback_duplicates: float = 0.0
    #: Extra delay before a callback is posted: (low, high) seconds, drawn uniformly.
    callback_delay: tuple[float, float] = (0.0, 0.0)
    #: Probability that a callback leaves taskExternalId out (the receiver must match by stream).
    callback_without_id: float = 0.0
    #: Probability that a callback says status "failed" instead of "success".
    callback_fail_status: float = 0.0
    #: A failed post (no connection, a timeout, a non-2xx answer) is tried again this many times.
    callback_retries: int = 3
    #: The first retry waits this long; each next one twice as long.
    callback_backoff: float = 1.0
    #: An S3-compatible endpoint (`http(s)://host[:port]`) the recorder writes each file into:
    #: the task's saveBucket there, path-style. None: no file is written anywhere.
    storage_endpoint: str | None = None
    #: The keys it signs those writes with; None: the sandbox's own access key and secret (the
    #: ones reconciler signs with, as JD Cloud OSS takes the JD Cloud keys).
    storage_access_key: str | None = None
    storage_secret_key: str | None = field(default=None, repr=False)
    #: Create a saveBucket that does not exist; else (as the service would) a write into it
    #: fails, is counted, and the callback says "failed".
    storage_create_buckets: bool = False


@dataclass(frozen=True)
class SandboxCounts:
    """What the sandbox has seen so far, by outcome (a snapshot)."""

    requests: int = 0
    connections: int = 0
    accepted: int = 0  # tasks created, dropped ones included
    dropped: int = 0  # accepted, then the connection closed without an answer
    injected: Mapping[int, int] = field(default_factory=dict)  # status -> count
    rejected: Mapping[int, int] = field(default_factory=dict)  # 4xx from the checks
    # The recorder (all 0 when it is off):
    recorded: int = 0  # tasks recorded (a file per format)
    recorded_files: int = 0  # files, one per format of each recorded task
    record_failed: int = 0  # tasks the record fail rate left unrecorded
    callbacks_sent: int = 0  # posts answered 2xx, duplicates included
    callbacks_failed: int = 0  # callbacks given up on (every attempt failed)
    callback_attempts_failed: int = 0  # failed attempts, retried ones included
    callbacks_unaddressed: int = 0  # not posted: the domain had no notify URL
    recorder_pending: int = 0  # tasks still to record and callbacks still to post
    objects_written: int = 0  # files written into the storage endpoint
    objects_failed: int = 0  # files whose write failed (their callback says "failed")
    buckets_created: int = 0  # saveBuckets the sandbox created (storage_create_buckets)

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def parse_failures(text: str) -> dict[int, float]:
    """`"503:0.2,500:0.05"` -> `{503: 0.2, 500: 0.05}`; `""` -> `{}`. ValueError when an item is
    not STATUS:RATE, a status is not 4xx/5xx, a rate is outside 0..1, or the rates add up past 1."""
    failures: dict[int, float] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item and not text.strip():
            continue
        if not item:
            raise ValueError(f"{text!r} has an empty item (a stray comma?)")
        status_text, colon, rate_text = item.partition(":")
        if not colon:
            raise ValueError(f"{item!r} is not STATUS:RATE (like 503:0.2)")
        try:
            status = int(status_text.strip())
        except ValueError:
            raise ValueError(
                f"{item!r}: the status {status_text.strip()!r} is not a number"
            ) from None
        try:
            rate = float(rate_text.strip())
        except ValueError:
            raise ValueError(
                f"{item!r}: the rate {rate_text.strip()!r} is not a number from 0 to 1"
            ) from None
        if status in failures:
            raise ValueError(f"status {status} is given twice")
        failures[status] = rate
    _check_failures(failures, drop_rate=0.0)
    return failures


def _check_failures(failures: Mapping[int, float], *, drop_rate: float) -> None:
    for status, rate in failures.items():
        if not 400 <= status <= 599:
            raise ValueError(f"the status {status} is not an error status (400 to 599)")
        if not 0.0 <= rate <= 1.0:  # also refuses NaN
            raise ValueError(f"the rate {rate} for {status} is not between 0 and 1")
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"the drop rate {drop_rate} is not between 0 and 1")
    total = sum(failures.values()) + drop_rate
    if total > 1.0 + 1e-9:
        raise ValueError(
            f"the failure rates{' and the drop rate' if drop_rate else ''} add up to "
            f"{total:g}, more than 1"
        )


def parse_delay(text: str) -> tuple[float, float]:
    """`"2"` -> `(2.0, 2.0)`, `"1-5"` -> `(1.0, 5.0)` (seconds); ValueError for anything else,
    a negative or endless number, or a range whose low end is above its high end."""
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if dash else low
    except ValueError:
        raise ValueError(f"{text!r} is not SECONDS or LOW-HIGH seconds (like 2 or 1-5)") from None
    _check_delay((low, high))
    return low, high


def _check_delay(delay: tuple[float, float]) -> None:
    low, high = delay
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0:
        raise ValueError(f"the callback delay {low:g}-{high:g} is not a number of seconds >= 0")
    if low > high:
        raise ValueError(f"the callback delay {low:g}-{high:g} has its low end above its high end")


@cache
def _host_name_rule() -> dict[str, Any]:
    rule: dict[str, Any] = load_schema()["$defs"]["hostName"]
    return rule


def publish_domain_problem(domain: object) -> str | None:
    """Why `domain` is no publish domain (a lower-case DNS host name, the manifests' rule), or
    None when it is one."""
    rule = _host_name_rule()
    if not isinstance(domain, str) or not domain:
        return "publishDomain must be a host name like push.example.com"
    if len(domain) > rule["maxLength"] or not ecma_match(rule["pattern"], domain):
        return f"publishDomain {domain!r} {rule['patternErrorMessage']}"
    return None


def notify_url_problem(url: object) -> str | None:
    """Why `url` is no record notify URL, or None when it is one. JD Cloud's rule: it starts
    with http:// (not https://); it must also name a host, and hold no spaces or controls.
    The message never repeats the URL: it may carry a receiver's token."""
    if not isinstance(url, str) or not url:
        return "notifyUrl must be a URL starting with http://"
    if not url.startswith("http://"):
        return "notifyUrl must start with http:// (JD Cloud's rule; https:// is not taken)"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "notifyUrl must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or too big
    except ValueError:
        return "notifyUrl is not a usable URL (check the host and port)"
    if not parts.hostname:
        return "notifyUrl must name a host, like http://hooks.example.com:8080/callbacks"
    return None


def storage_endpoint_problem(url: object) -> str | None:
    """Why `url` is no storage endpoint (`http(s)://host[:port]`: no path, query or
    credentials, which come from the keys), or None when it is one."""
    if not isinstance(url, str) or not url:
        return "the storage endpoint must be a URL like http://127.0.0.1:8333"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "the storage endpoint must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or too big
    except ValueError:
        return "the storage endpoint is not a usable URL (check the host and port)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the storage endpoint must be http(s)://host[:port]"
    if parts.username is not None or parts.password is not None:
        return "the storage endpoint must not carry credentials (give the storage keys instead)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "the storage endpoint must be http(s)://host[:port], without a path or query"
    return None


def _check_config(config: SandboxConfig) -> None:
    _check_failures(config.failures, drop_rate=config.drop_rate)
    for name, failures in (
        ("notify read failures", config.notify_read_failures),
        ("notify set failures", config.notify_set_failures),
    ):
        try:
            _check_failures(failures, drop_rate=0.0)
        except ValueError as error:
            raise ValueError(f"the {name}: {error}") from None
    if config.latency_ms < 0:
        raise ValueError("the latency must not be negative")
    if not 0 <= config.port <= 65535:
        raise ValueError(f"the port {config.port} is not between 0 and 65535")
    rates = {
        "record fail rate": config.record_fail_rate,
        "callback duplicates rate": config.callback_duplicates,
        "callback without id rate": config.callback_without_id,
        "callback fail status rate": config.callback_fail_status,
    }
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:  # also refuses NaN
            raise ValueError(f"the {name} {rate} is not between 0 and 1")
    _check_delay(config.callback_delay)
    if config.callback_retries < 0:
        raise ValueError("the callback retries must not be negative")
    if not (math.isfinite(config.callback_backoff) and config.callback_backoff >= 0):
        raise ValueError("the callback backoff must be a number of seconds >= 0")
    if config.notify_url is not None and (problem := notify_url_problem(config.notify_url)):
        raise ValueError(f"the notify URL is refused: {problem}")
    if config.storage_endpoint is not None and (
        problem := storage_endpoint_problem(config.storage_endpoint)
    ):
        raise ValueError(f"the storage endpoint is refused: {problem}")
    if (config.storage_access_key is None) != (config.storage_secret_key is None):
        raise ValueError("the storage access key and secret key go together: give both or neither")
    if config.storage_endpoint is None:
        storage = {
            "storage access key": config.storage_access_key is not None,
            "storage secret key": config.storage_secret_key is not None,
            "storage create buckets": config.storage_create_buckets,
        }
        if given_storage := [name for name, given in storage.items() if given]:
            raise ValueError(
                f"the storage settings ({', '.join(given_storage)}) need storage_endpoint "
                "(--storage-endpoint URL): without it no file is written"
            )
    if config.record_after is None:
        given = [name for name, rate in rates.items() if rate]
        given += ["notify URL"] if config.notify_url is not None else []
        given += ["callback delay"] if config.callback_delay != (0.0, 0.0) else []
        given += ["storage endpoint"] if config.storage_endpoint is not None else []
        if given:
            raise ValueError(
                f"the recorder settings ({', '.join(given)}) need record_after (--record-after "
                "SECONDS): without it nothing is recorded"
            )
    elif not (math.isfinite(config.record_after) and config.record_after >= 0):
        raise ValueError(f"record after {config.record_after} is not a number of seconds >= 0")


# --- what the recorder writes and posts (pure) -------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z]+)\}")


def record_formats(request_body: Mapping[str, Any]) -> list[str]:
    """The file formats a task asks for, lower-case, in the order its recordFileType names them."""
    return [part.strip().lower() for part in str(request_body["recordFileType"]).split(";")]


def _segment_times(request_body: Mapping[str, Any]) -> list[tuple[datetime, datetime]]:
    times = []
    for segment in request_body["recordTimes"]:
        start = parse_record_time(segment["startTime"])
        end = parse_record_time(segment["endTime"])
        assert start is not None and end is not None, "the sandbox records checked tasks only"
        times.append((start, end))
    return times


def _digits(moment: datetime, *, time_of_day: bool) -> str:
    # Not strftime: its %Y writes the year 999 as "999" on some platforms.
    moment = moment.astimezone(UTC)
    text = f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
    return (
        text + f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}" if time_of_day else text
    )


def record_key(request_body: Mapping[str, Any], fmt: str, server_id: str = SERVER_ID) -> str:
    """The object key the service writes for one format of a task: its saveObject template
    (DEFAULT_SAVE_OBJECT when unset) with {Date} (yyyyMMdd), {StartTime} and {EndTime}
    (yyyyMMddHHmmss of the first start and the last end, UTC), {ServerId}, {AppName},
    {StreamName} and {format} filled in. A template without {format} gets `.FORMAT` appended
    when the task asks for more than one format (else the files would overwrite each other).
    A leading `/` (the documented example writes `/xxx/yourobject`) is left out: an S3 key has
    none, and verify reads the template so too."""
    template = str(request_body.get("saveObject") or DEFAULT_SAVE_OBJECT).lstrip("/")
    times = _segment_times(request_body)
    values = {
        "Date": _digits(times[0][0], time_of_day=False),
        "ServerId": server_id,
        "AppName": str(request_body["appName"]),
        "StreamName": str(request_body["streamName"]),
        "StartTime": _digits(times[0][0], time_of_day=True),
        "EndTime": _digits(times[-1][1], time_of_day=True),
        "format": fmt,
    }
    key = _PLACEHOLDER.sub(lambda match: values.get(match[1], match[0]), template)
    if "{format}" not in template and len(record_formats(request_body)) > 1:
        key += f".{fmt}"
    return key


def download_url(
    request_body: Mapping[str, Any], key: str, storage_endpoint: str | None = None
) -> str:
    """`http://{saveEndpoint}/{saveBucket}/{key}`, the key percent-encoded (its `/` kept); with
    a storage endpoint, the object's path-style URL there: `{storage_endpoint}/{bucket}/{key}`."""
    base = f"http://{request_body['saveEndpoint']}"
    if storage_endpoint is not None:
        base = storage_endpoint.rstrip("/")
    return f"{base}/{quote(str(request_body['saveBucket']))}/{quote(key)}"


def recording_content(request_body: Mapping[str, Any], fmt: str, key: str) -> bytes:
    """The bytes of the sandbox's stand-in file: says what it is, never a playable video."""
    about = {
        "what": f"reconciler sandbox stand-in recording, not a real {fmt} file",
        "key": key,
        "stream": [request_body[name] for name in PATH_PARAMETERS],
        "recordTimes": request_body["recordTimes"],
    }
    return (json.dumps(about, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def callback_body(
    request_body: Mapping[str, Any],
    fmt: str,
    *,
    url: str,
    file_size: int,
    status: str = "success",
    with_id: bool = True,
) -> dict[str, Any]:
    """JD Cloud's record_done callback for one file, numbers as strings as it sends them:
    duration in milliseconds, group times in epoch milliseconds (one per recordTimes segment).
    taskExternalId is the request's, when it had one and `with_id`."""
    times = _segment_times(request_body)
    duration_ms = sum(round((end - start).total_seconds() * 1000) for start, end in times)
    body: dict[str, Any] = {
        "version": CALLBACK_VERSION,
        "publishDomain": request_body["publishDomain"],
        "appName": request_body["appName"],
        "streamName": request_body["streamName"],
        "event": "record_done",
        "status": status,
        "format": fmt,
        "duration": f"{duration_ms:.1f}",  # "18439.0", as the documented example writes it
        "fileSize": str(file_size),
        "group": [
            {
                "beginTime": str(round(start.timestamp() * 1000)),
                "endTime": str(round(end.timestamp() * 1000)),
            }
            for start, end in times
        ],
        "downloadUrl": url,
    }
    if with_id and request_body.get("taskExternalId") is not None:
        body["taskExternalId"] = request_body["taskExternalId"]
    return body


def new_request_id() -> str:
    """A fresh 32-character [a-z0-9] requestId, like JD Cloud's."""
    return "".join(secrets.choice(_REQUEST_ID_ALPHABET) for _ in range(32))


def error_document(request_id: str, status: int, message: str) -> dict[str, Any]:
    """JD Cloud's error shape: `{"requestId", "error": {"code", "status", "message"}}`."""
    name = _ERROR_STATUS.get(status)
    if name is None:
        try:
            name = HTTPStatus(status).name
        except ValueError:
            name = "UNKNOWN"
    return {"requestId": request_id, "error": {"code": status, "status": name, "message": message}}


class _Refusal(Exception):
    """An error answer, raised anywhere in a request's handling and written in one place."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = dict(headers or {})


class Sandbox:
    """The running stand-in server; a context manager (start on enter, stop on exit)."""

    def __init__(self, config: SandboxConfig) -> None:
        _check_config(config)
        self.config = config
        self.credentials = Credentials(
            config.access_key or "sandbox-" + secrets.token_hex(8),
            config.secret_key or secrets.token_urlsafe(24),
        )
        #: True when the secret was generated here, so it may be shown to the user.
        self.throwaway_secret = config.secret_key is None
        self._lock = threading.Lock()
        self._random = random.Random(config.seed)
        self._accepted: list[dict[str, Any]] = []
        self._received: list[dict[str, Any]] = []
        # nonce -> when it may be forgotten: a replay's signed date is refused after that anyway.
        self._nonces: OrderedDict[str, float] = OrderedDict()
        skew = config.max_clock_skew or DEFAULT_MAX_CLOCK_SKEW
        self._nonce_seconds = 2 * skew.total_seconds()
        self._requests = 0
        self._connections = 0
        self._dropped = 0
        self._injected: dict[int, int] = {}
        self._rejected: dict[int, int] = {}
        self._open: set[socket.socket] = set()
        # publishDomain -> the record notify URL set through the API.
        self._notify_urls: dict[str, str] = {}
        self._notify_received: list[dict[str, Any]] = []
        # The notify faults' own generator: the task POST's draws stay the seed's sequence.
        self._notify_random = random.Random(
            None if config.seed is None else f"notify-{config.seed}"
        )
        self._recorder = (
            None
            if config.record_after is None
            else _Recorder(config, self._notify_url_for, self.credentials)
        )
        self._journal: IO[str] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._port: int | None = None

    def __repr__(self) -> str:
        where = "not started" if self._port is None else self.url
        where += " (stopped)" if self._stopped else ""
        return f"Sandbox({where}, access_key={self.credentials.access_key!r})"

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind (port 0: a free port) and serve in a daemon thread."""
        if self._server is not None or self._stopped:
            raise RuntimeError("a sandbox starts once; make a new Sandbox to run again")
        server_class = _Server6 if ":" in self.config.host else _Server
        server = server_class((self.config.host, self.config.port), _Handler)
        server.sandbox = self
        try:
            if self.config.journal is not None:
                self._journal = self.config.journal.open("a", encoding="utf-8")
        except OSError as error:
            server.server_close()
            raise JournalError(self.config.journal, error) from error
        self._server = server
        self._port = int(server.server_address[1])
        # A short poll interval, so stop() returns promptly.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"reconciler-sandbox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        if self._recorder is not None:
            self._recorder.start(f"reconciler-sandbox-recorder:{self.port}")
        return self

    def stop(self) -> None:
        """Stop accepting, close every open connection and the journal, stop the recorder (what
        it has not recorded or posted yet is dropped). Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._stopped = True
        server.shutdown()
        server.server_close()
        # Keep-alive connections would otherwise go on being served after stop().
        with self._lock:
            still_open = list(self._open)
        for connection in still_open:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._recorder is not None:
            self._recorder.stop()
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def __enter__(self) -> Sandbox:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (still known after stop())."""
        if self._port is None:
            raise RuntimeError("the sandbox has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The endpoint to give a client, e.g. `http://127.0.0.1:54321`."""
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    # --- what it has seen ---------------------------------------------------------------------

    def accepted(self) -> list[dict[str, Any]]:
        """Every accepted task, oldest first: {"requestId", "receivedAt", "path", "body"}."""
        with self._lock:
            return copy.deepcopy(self._accepted)

    def received(self) -> list[dict[str, Any]]:
        """Every task request that passed the checks (signature, unused nonce, body), in the
        order their fates were decided, with what became of it:
        {"requestId", "receivedAt", "path", "body", "outcome"}; `path` and `body` are the
        canonical request, exactly as in accepted(). `outcome` is
        - "accepted": created and answered 200;
        - "dropped": created, then the connection closed unanswered;
        - "injected-STATUS" (e.g. "injected-503", "injected-500"): answered STATUS, NOT created;
        - "stopped": the sandbox stopped during its latency: NOT created, no answer.
        Requests the checks refused (401, 400, ...) are not listed: nothing was created."""
        with self._lock:
            return copy.deepcopy(self._received)

    def counts(self) -> SandboxCounts:
        recorder = {} if self._recorder is None else self._recorder.counts()
        with self._lock:
            return SandboxCounts(
                requests=self._requests,
                connections=self._connections,
                accepted=len(self._accepted),
                dropped=self._dropped,
                injected=dict(self._injected),
                rejected=dict(self._rejected),
                **recorder,
            )

    def recordings(self) -> dict[str, Any]:
        """What the recorder did (the GET /_sandbox/recordings document):
        - "recordings": one per file: {"requestId" (the task's), "format", "key",
          "downloadUrl", "fileSize", "status" ("success", or "failed" by the fail status
          fault or a failed write), "recordedAt", "storage", "storageResult"}; "storage" is
          "off" (no storage endpoint), "written" (the object is in the task's saveBucket at
          the storage endpoint, at "key", and "downloadUrl" is its URL there), "failed" (the
          write failed: "storageResult" says why, and the callback says "failed") or
          "not written" (the fail status fault: nothing is written);
        - "notRecorded": the tasks the record fail rate left unrecorded: {"requestId", "reason"};
        - "callbacks": one per post (a duplicate is a second entry, "duplicate": true):
          {"requestId", "format", "duplicate", "body", "delivery", "attempts", "lastResult"},
          delivery "pending", "delivered" (a 2xx answer), "failed" (every attempt failed),
          "unaddressed" (the domain had no notify URL) or "dropped" (the sandbox stopped first);
        - "pending": tasks still to record plus posts still to make (0: all settled);
        - "counts": the recorder's counts (camelCase names of SandboxCounts' fields).
        Empty lists when the recorder is off."""
        if self._recorder is None:
            return {
                "recordings": [],
                "notRecorded": [],
                "callbacks": [],
                "pending": 0,
                "counts": {},
            }
        return self._recorder.document()

    def notify_url(self, publish_domain: str) -> str | None:
        """The record notify URL set through the API for `publish_domain` (None when unset)."""
        with self._lock:
            return self._notify_urls.get(publish_domain)

    def notify_received(self) -> list[dict[str, Any]]:
        """Every record notify request that passed the checks (signature, unused nonce, body),
        oldest first: {"requestId", "method", "publishDomain", "outcome"}, `outcome` one of
        "set", "read" (answered with the URL), "none" (answered 404: none set), "deleted", or
        "injected-STATUS" (answered STATUS by a notify fault; nothing changed). The URL itself is
        not listed: it may carry a receiver's token (notify_url() tells it)."""
        with self._lock:
            return copy.deepcopy(self._notify_received)

    # --- used by the handler ------------------------------------------------------------------

    def _notify_url_for(self, publish_domain: str) -> str | None:
        """Where the recorder posts a domain's callbacks: the URL set through the API, else
        the configured one, else nowhere."""
        return self.notify_url(publish_domain) or self.config.notify_url

    def _notify_fate(self, method: str, publish_domain: str, request_id: str) -> int | None:
        """Draw the fate of one checked notify request (a status to inject, or None) and list
        it in notify_received() as injected when it is one."""
        config = self.config
        failures = config.notify_set_failures if method == "POST" else config.notify_read_failures
        if method == "DELETE" or not failures:
            return None
        with self._lock:
            point = self._notify_random.random()
        edge = 0.0
        for status in sorted(failures):
            edge += failures[status]
            if point < edge:
                self._note_notify(request_id, method, publish_domain, f"injected-{status}")
                return status
        return None

    def _note_notify(self, request_id: str, method: str, publish_domain: str, outcome: str) -> None:
        entry = {"requestId": request_id, "method": method, "publishDomain": publish_domain}
        with self._lock:
            self._notify_received.append({**entry, "outcome": outcome})

    def _set_notify_url(self, publish_domain: str, url: str | None) -> None:
        with self._lock:
            if url is None:
                self._notify_urls.pop(publish_domain, None)
            else:
                self._notify_urls[publish_domain] = url

    def _secret_for(self, access_key: str) -> str | None:
        known = self.credentials.access_key
        same = hmac.compare_digest(access_key.encode("utf-8"), known.encode("utf-8"))
        return self.credentials.secret_key if same else None

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def _count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def _count_rejection(self, status: int) -> None:
        with self._lock:
            self._rejected[status] = self._rejected.get(status, 0) + 1

    def _use_nonce(self, nonce: str) -> bool:
        """Remember `nonce` as used; False when it already was (and is still remembered)."""
        now = _clock()
        with self._lock:
            nonces = self._nonces
            while nonces and next(iter(nonces.values())) <= now:
                nonces.popitem(last=False)
            if nonce in nonces:
                return False
            while len(nonces) >= MAX_REMEMBERED_NONCES:
                nonces.popitem(last=False)
            nonces[nonce] = now + self._nonce_seconds
            return True

    def _draw(self) -> int | None:
        """The fate of one checked task request: 0 = drop, a status = that failure, None = ok."""
        with self._lock:
            point = self._random.random()
        edge = self.config.drop_rate
        if point < edge:
            return 0
        for status in sorted(self.config.failures):
            edge += self.config.failures[status]
            if point < edge:
                return status
        return None

    def _accept(
        self,
        request_id: str,
        received_at: str,
        path: dict[str, str],
        body: dict[str, Any],
        *,
        dropped: bool,
    ) -> None:
        record = {"requestId": request_id, "receivedAt": received_at, "path": path, "body": body}
        with self._lock:
            if self._stopped:
                # A request still in its latency when stop() came: it creates nothing, and its
                # connection is already shut, so the client sees a drop.
                self._received.append({**record, "outcome": "stopped"})
                raise ConnectionAbortedError("the sandbox stopped before the task was accepted")
            if self._journal is not None:
                self._journal.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                self._journal.flush()
            self._accepted.append(record)
            self._received.append({**record, "outcome": "dropped" if dropped else "accepted"})
            if dropped:
                self._dropped += 1
            if self._recorder is not None:
                # Under the lock: the recorder's fates follow the order tasks were accepted in.
                self._recorder.schedule(copy.deepcopy(record))

    def _inject(
        self,
        status: int,
        request_id: str,
        received_at: str,
        path: dict[str, str],
        body: dict[str, Any],
    ) -> None:
        record = {"requestId": request_id, "receivedAt": received_at, "path": path, "body": body}
        with self._lock:
            self._injected[status] = self._injected.get(status, 0) + 1
            self._received.append({**record, "outcome": f"injected-{status}"})

    def _tasks_document(self) -> dict[str, Any]:
        tasks = self.accepted()
        return {"tasks": tasks, "count": len(tasks)}


# --- the recorder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CallbackFate:
    """What the faults decided for one format's callback."""

    without_id: bool
    failed_status: bool
    duplicate: bool
    delay: float


@dataclass(frozen=True)
class _RecordFate:
    """What the faults decided for one task: never recorded, or a fate per format."""

    never: bool
    callbacks: tuple[_CallbackFate, ...]


_Job = Callable[[requests.Session], None]


class StorageUnavailable(Exception):
    """A storage endpoint was given, but the S3 client (the `storage` extra) is not installed."""


@dataclass(frozen=True)
class _Written:
    """What became of one file's write: written, or why not (words that carry no secret)."""

    written: bool
    result: str
    bucket_created: bool = False


class _BucketWriter:
    """Writes the recorder's files into buckets at one S3-compatible endpoint, path-style, with
    the `minio` client (the `storage` extra, the one verify reads buckets with), imported only
    here: only a sandbox given a storage endpoint needs it. Shared by the recorder's workers."""

    def __init__(self, endpoint: str, credentials: Credentials, *, create_buckets: bool) -> None:
        try:
            import urllib3
            from minio import Minio
        except ImportError:
            raise StorageUnavailable(
                "writing recordings into a storage endpoint needs the S3 client: "
                "pip install 'reconciler[storage]'"
            ) from None
        parts = urlsplit(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self._create_buckets = create_buckets
        self._lock = threading.Lock()
        self._known_buckets: set[str] = set()
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(
                connect=STORAGE_CONNECT_TIMEOUT_SECONDS, read=STORAGE_READ_TIMEOUT_SECONDS
            ),
            maxsize=RECORDER_WORKERS,
            retries=urllib3.Retry(
                total=STORAGE_RETRIES, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            parts.netloc,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            secure=parts.scheme == "https",
            # Named, so the client never asks GetBucketLocation first: a stand-in has one region.
            region="us-east-1",
            http_client=self._http,
        )

    def put(self, bucket: str, key: str, content: bytes) -> _Written:
        """Write `content` at `key` in `bucket`; never raises (a failure is a result).

        The bucket is looked up first (once it is found, never again): some S3 servers
        (SeaweedFS) make a missing bucket on the first write into it, the service does not."""
        try:
            created = self._find_bucket(bucket)
            if created is None:
                return _Written(False, "no such bucket (NoSuchBucket): it was not written")
            self._client.put_object(
                bucket,
                key,
                io.BytesIO(content),
                len(content),
                content_type="application/json; charset=utf-8",
                num_parallel_uploads=1,
            )
        except Exception as error:
            return _Written(False, _storage_failure(error, self.endpoint))
        return _Written(True, "written", created)

    def _find_bucket(self, bucket: str) -> bool | None:
        """False: `bucket` exists; True: it did not and was made here; None: it does not."""
        with self._lock:
            if bucket in self._known_buckets:
                return False
        if self._client.bucket_exists(bucket):
            created = False
        elif not self._create_buckets:
            return None
        else:
            with self._lock:  # two workers that find it missing together make it once
                if bucket in self._known_buckets:
                    return False
                created = self._make_bucket(bucket)
        with self._lock:
            self._known_buckets.add(bucket)
        return created

    def _make_bucket(self, bucket: str) -> bool:
        from minio.error import S3Error

        try:
            self._client.make_bucket(bucket)
        except S3Error as error:
            if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            return False
        return True

    def close(self) -> None:
        self._http.clear()


def _storage_failure(error: BaseException, endpoint: str) -> str:
    """Why a write failed, in words with no credential: an S3 error code (a word from a fixed
    list), an HTTP status, or what the connection did."""
    import urllib3.exceptions as http_errors
    from minio.error import InvalidResponseError, S3Error, ServerError

    host = urlsplit(endpoint).hostname
    if isinstance(error, S3Error):
        code = error.code if re.fullmatch(r"[A-Za-z0-9.]{1,64}", error.code or "") else "an error"
        status = error.response.status if error.response is not None else "?"
        return f"the storage endpoint answered {code} (HTTP {status})"
    if isinstance(error, ServerError):
        return f"the storage endpoint answered HTTP {error.status_code}"
    if isinstance(error, InvalidResponseError):
        return "the storage endpoint's answer is not an S3 answer"
    reason: object = error
    if isinstance(error, http_errors.MaxRetryError):
        reason = error.reason
    if isinstance(reason, http_errors.NewConnectionError | http_errors.ConnectTimeoutError):
        return f"cannot connect to the storage endpoint {host}"
    if isinstance(reason, http_errors.ReadTimeoutError):
        return (
            f"no answer from the storage endpoint {host} within {STORAGE_READ_TIMEOUT_SECONDS:g} s"
        )
    if isinstance(reason, http_errors.ResponseError):
        return "the storage endpoint kept answering with errors (HTTP 5xx)"
    if isinstance(reason, http_errors.HTTPError | OSError):
        return f"the connection to the storage endpoint {host} failed ({type(reason).__name__})"
    if isinstance(error, ValueError):  # the client's own checks, e.g. of a bucket name
        return "the S3 client refused the request (an invalid bucket name or key)"
    return f"unexpected {type(error).__name__}"


class _Recorder:
    """Records accepted tasks after `record_after` and posts their callbacks: a queue of jobs
    by due time, run by a few worker threads (never the threads that answer the API)."""

    def __init__(
        self,
        config: SandboxConfig,
        notify_url_for: Callable[[str], str | None],
        credentials: Credentials,
    ) -> None:
        assert config.record_after is not None
        self._config = config
        self._writer: _BucketWriter | None = None
        if config.storage_endpoint is not None:
            if config.storage_access_key is not None and config.storage_secret_key is not None:
                credentials = Credentials(config.storage_access_key, config.storage_secret_key)
            self._writer = _BucketWriter(
                config.storage_endpoint,
                credentials,
                create_buckets=config.storage_create_buckets,
            )
        self._record_after = config.record_after
        self._notify_url_for = notify_url_for
        # A generator of its own: the task POST's fault sequence stays what it was.
        seed = None if config.seed is None else f"recorder:{config.seed}"
        self._random = random.Random(seed)
        self._condition = threading.Condition()
        self._jobs: list[tuple[float, int, _Job]] = []
        self._sequence = 0
        self._busy = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._recordings: list[dict[str, Any]] = []
        self._not_recorded: list[dict[str, Any]] = []
        self._callbacks: list[dict[str, Any]] = []
        self._recorded = 0
        self._attempts_failed = 0
        self._buckets_created = 0

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, name: str) -> None:
        for number in range(RECORDER_WORKERS):
            thread = threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Drop what is still to do and end the workers; a post in flight may take up to
        CALLBACK_TIMEOUT_SECONDS to end."""
        with self._condition:
            self._stopping = True
            self._jobs.clear()
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=2 * CALLBACK_TIMEOUT_SECONDS)
        if self._writer is not None:
            self._writer.close()
        with self._condition:
            for entry in self._callbacks:
                if entry["delivery"] == "pending":
                    entry["delivery"] = "dropped"

    def _work(self) -> None:
        with requests.Session() as session:
            session.trust_env = False  # JD Cloud posts straight to the URL: no proxy, no .netrc
            while (job := self._next_job()) is not None:
                try:
                    job(session)
                except Exception:
                    traceback.print_exc(file=sys.stderr)  # a sandbox bug; the worker goes on
                finally:
                    with self._condition:
                        self._busy -= 1
                        self._condition.notify_all()

    def _next_job(self) -> _Job | None:
        with self._condition:
            while not self._stopping:
                wait = None
                if self._jobs:
                    wait = self._jobs[0][0] - _recorder_clock()
                    if wait <= 0:
                        self._busy += 1
                        return heapq.heappop(self._jobs)[2]
                self._condition.wait(wait)
            return None

    def _push(self, delay: float, job: _Job) -> None:
        """Queue `job` to run `delay` seconds from now (the caller holds the condition)."""
        if self._stopping:
            return
        self._sequence += 1
        heapq.heappush(self._jobs, (_recorder_clock() + delay, self._sequence, job))
        self._condition.notify()

    # --- what it does -------------------------------------------------------------------------

    def schedule(self, record: Mapping[str, Any]) -> None:
        """Record the accepted task `record` ({"requestId", "path", "body", ...}) later. Its
        fates are drawn now, so they follow the order tasks were accepted in."""
        request = {**record["path"], **record["body"]}
        request_id = str(record["requestId"])
        formats = record_formats(request)
        with self._condition:
            fate = self._draw(len(formats))
            self._push(
                self._record_after,
                lambda session: self._record_task(request_id, request, formats, fate),
            )

    def _draw(self, formats: int) -> _RecordFate:
        config, draw = self._config, self._random.random
        never = draw() < config.record_fail_rate
        callbacks = []
        for _ in range(formats):
            low, high = config.callback_delay
            callbacks.append(
                _CallbackFate(
                    without_id=draw() < config.callback_without_id,
                    failed_status=draw() < config.callback_fail_status,
                    duplicate=draw() < config.callback_duplicates,
                    delay=low + (high - low) * draw(),
                )
            )
        return _RecordFate(never, tuple(callbacks))

    def _record_task(
        self, request_id: str, request: dict[str, Any], formats: list[str], fate: _RecordFate
    ) -> None:
        if fate.never:
            with self._condition:
                self._not_recorded.append(
                    {"requestId": request_id, "reason": "record fail rate (never recorded)"}
                )
            return
        notify_url = self._notify_url_for(str(request["publishDomain"]))
        for fmt, callback_fate in zip(formats, fate.callbacks, strict=True):
            self.record_format(request_id, request, fmt, callback_fate, notify_url)
        with self._condition:
            self._recorded += 1

    def record_format(
        self,
        request_id: str,
        request: Mapping[str, Any],
        fmt: str,
        fate: _CallbackFate,
        notify_url: str | None,
    ) -> None:
        """Record one format of a task: its file (written into the storage endpoint, when there
        is one), then its callback(s) queued for posting."""
        key = record_key(request, fmt, SERVER_ID)
        content = recording_content(request, fmt, key)
        writer = self._writer
        url = download_url(request, key, None if writer is None else writer.endpoint)
        status = "failed" if fate.failed_status else "success"
        storage, storage_result = "off", None
        if writer is not None and status == "success":  # a "failed" recording writes nothing
            written = writer.put(str(request["saveBucket"]), key, content)
            storage = "written" if written.written else "failed"
            storage_result = written.result
            if not written.written:
                status = "failed"  # the service could not write the file: so says its callback
            if written.bucket_created:
                with self._condition:
                    self._buckets_created += 1
        elif writer is not None:
            storage = "not written"
        body = callback_body(
            request,
            fmt,
            url=url,
            file_size=len(content) if storage != "failed" else 0,
            status=status,
            with_id=not fate.without_id,
        )
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        recorded_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._condition:
            self._recordings.append(
                {
                    "requestId": request_id,
                    "format": fmt,
                    "key": key,
                    "downloadUrl": url,
                    "fileSize": len(content),
                    "status": status,
                    "recordedAt": recorded_at,
                    "storage": storage,
                    "storageResult": storage_result,
                }
            )
            for duplicate in (False, True) if fate.duplicate else (False,):
                entry = {
                    "requestId": request_id,
                    "format": fmt,
                    "duplicate": duplicate,
                    "body": body,
                    "delivery": "pending" if notify_url else "unaddressed",
                    "attempts": 0,
                    "lastResult": None,
                }
                self._callbacks.append(entry)
                if notify_url:
                    self._push(fate.delay, self._poster(entry, notify_url, payload))

    def _poster(self, entry: dict[str, Any], url: str, payload: bytes) -> _Job:
        def post(session: requests.Session) -> None:
            delivered, result = _post_callback(session, url, payload)
            with self._condition:
                entry["attempts"] += 1
                entry["lastResult"] = result
                if delivered:
                    entry["delivery"] = "delivered"
                    return
                self._attempts_failed += 1
                if self._stopping:
                    entry["delivery"] = "dropped"
                elif entry["attempts"] <= self._config.callback_retries:
                    backoff = self._config.callback_backoff * 2 ** (entry["attempts"] - 1)
                    self._push(backoff, post)
                else:
                    entry["delivery"] = "failed"

        return post

    # --- what it has done ---------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._condition:
            deliveries = [entry["delivery"] for entry in self._callbacks]
            storages = [entry["storage"] for entry in self._recordings]
            return {
                "recorded": self._recorded,
                "recorded_files": len(self._recordings),
                "record_failed": len(self._not_recorded),
                "callbacks_sent": deliveries.count("delivered"),
                "callbacks_failed": deliveries.count("failed"),
                "callback_attempts_failed": self._attempts_failed,
                "callbacks_unaddressed": deliveries.count("unaddressed"),
                "recorder_pending": len(self._jobs) + self._busy,
                "objects_written": storages.count("written"),
                "objects_failed": storages.count("failed"),
                "buckets_created": self._buckets_created,
            }

    def document(self) -> dict[str, Any]:
        counts = self.counts()
        with self._condition:
            return {
                "recordings": copy.deepcopy(self._recordings),
                "notRecorded": copy.deepcopy(self._not_recorded),
                "callbacks": copy.deepcopy(self._callbacks),
                "pending": counts["recorder_pending"],
                "counts": {_camel(name): value for name, value in counts.items()},
            }


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _post_callback(session: requests.Session, url: str, payload: bytes) -> tuple[bool, str]:
    """Post one callback: (delivered, what happened). What happened never holds the URL, which
    may carry the receiver's token."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": _Handler.server_version,
    }
    try:
        with session.post(
            url,
            data=payload,
            headers=headers,
            timeout=CALLBACK_TIMEOUT_SECONDS,
            allow_redirects=False,
        ) as response:
            return 200 <= response.status_code < 300, f"HTTP {response.status_code}"
    except requests.Timeout:
        return False, "timed out"
    except requests.ConnectionError:
        return False, "could not connect (or the connection broke)"
    except requests.RequestException as error:
        return False, type(error).__name__


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connection attempts when a client opens 8 at
    # once; the client then waits a full second to retry.
    request_queue_size = 128
    sandbox: Sandbox

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal (the drop tests do it); anything else is
        # a sandbox bug and is printed.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for pooled clients
    disable_nagle_algorithm = True  # TCP_NODELAY: else a keep-alive client waits ~40 ms a call
    timeout = IDLE_TIMEOUT_SECONDS
    server_version = f"reconciler-sandbox/{__version__} (local stand-in, not JD Cloud)"
    sys_version = ""

    server: _Server
    _request_id = ""

    @property
    def _sandbox(self) -> Sandbox:
        return self.server.sandbox

    def setup(self) -> None:
        super().setup()
        self._sandbox._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._sandbox._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self._sandbox.config.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, headers too long, ...) in JD Cloud's
        # JSON shape too: clients such as the official SDK parse every error body as JSON.
        self.close_connection = True
        # A garbled request line leaves the HTTP/0.9 default, which would drop the status line.
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        try:
            phrase = message or HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._send_json(code, error_document(new_request_id(), code, phrase))

    # --- one request --------------------------------------------------------------------------

    def _handle(self) -> None:
        box = self._sandbox
        box._count_request()
        self._request_id = new_request_id()
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            body = self._read_body()
            raw_path, query = _split_target(self.path)
            if raw_path in (TASKS_PATH, RECORDINGS_PATH, HEALTH_PATH):
                self._allow("GET", "HEAD")
                if raw_path == TASKS_PATH:
                    self._send_json(200, box._tasks_document())
                elif raw_path == RECORDINGS_PATH:
                    self._send_json(200, box.recordings())
                else:
                    self._send_json(200, {"status": "ok", "server": self.server_version})
                return
            if raw_path == NOTIFY_CONFIG_PATH:
                self._allow("POST")
                self._set_notify_config(raw_path, query, body)
                return
            domain = _notify_domain(raw_path)
            if domain is not None:
                self._allow("GET", "DELETE")
                self._notify_config(raw_path, query, body, domain)
                return
            segments = _task_segments(raw_path)
            if segments is None:
                apis = ", ".join((TASK_PATH, NOTIFY_CONFIG_PATH, NOTIFY_PATH))
                raise _Refusal(404, f"no such API: {raw_path} (this sandbox has {apis})")
            self._allow("POST")
            self._add_record_task(raw_path, query, segments, body, received_at)
        except _Refusal as refusal:
            box._count_rejection(refusal.status)
            if refusal.close:
                self.close_connection = True
            self._send_json(
                refusal.status,
                error_document(self._request_id, refusal.status, refusal.message),
                refusal.headers,
            )
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            # A bug in the sandbox: say so loudly, and still answer in JD Cloud's shape.
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            message = "the sandbox itself failed (a bug in reconciler's sandbox; see its stderr)"
            self._send_json(500, error_document(self._request_id, 500, message))

    def _allow(self, *methods: str) -> None:
        if self.command not in methods:
            raise _Refusal(
                405,
                f"{self.command} is not allowed here; use {' or '.join(methods)}",
                headers={"Allow": ", ".join(methods)},
            )

    def _read_body(self) -> bytes:
        """The whole body, read before anything else so the connection stays usable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Refusal(
                411, "chunked bodies are not supported: send a Content-Length", close=True
            )
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            raise _Refusal(400, f"bad Content-Length {length_text!r}", close=True)
        if length > MAX_BODY_BYTES:
            raise _Refusal(
                413, f"the body is {length} bytes; at most {MAX_BODY_BYTES} accepted", close=True
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionResetError("the client closed the connection mid-body")
        return body

    def _check_signed(self, raw_path: str, query: str, raw_body: bytes) -> None:
        """Refuse (401) a request whose JDCLOUD3 signature does not verify, or whose nonce was
        already used."""
        box = self._sandbox
        headers = _joined_headers(self.headers.items())
        try:
            verify_request(
                self.command,
                raw_path,
                query,
                headers,
                raw_body,
                box._secret_for,
                max_skew=box.config.max_clock_skew,
            )
        except SignatureError as error:
            raise _Refusal(401, f"JDCLOUD3 signature check failed: {error}") from None
        # Only after the signature: an unsigned request must not use up someone's nonce.
        nonce = headers.get(NONCE_HEADER)
        if nonce is not None and not box._use_nonce(nonce):
            raise _Refusal(
                401,
                f"{NONCE_HEADER} {nonce!r} was already used: a replayed request is refused; "
                "sign every request, every retry included, afresh (new date and nonce)",
            )

    def _add_record_task(
        self,
        raw_path: str,
        query: str,
        segments: dict[str, str],
        raw_body: bytes,
        received_at: str,
    ) -> None:
        box = self._sandbox
        self._check_signed(raw_path, query, raw_body)
        document = _json_object(raw_body)
        # The official SDK sends "saveObject": null for unset optional fields: null is absent.
        body = {key: value for key, value in document.items() if value is not None}
        for name in PATH_PARAMETERS:
            if name in body and body[name] != segments[name]:
                raise _Refusal(
                    400,
                    f"{name}: the body says {body[name]!r} but the URL path says "
                    f"{segments[name]!r}",
                )
        problems = check_spec({**segments, **body})
        if problems:
            listed = "; ".join(
                f"{where}: {message}" if where else message for where, message in problems
            )
            raise _Refusal(400, f"invalid request: {listed}")

        if box.config.latency_ms:
            time.sleep(box.config.latency_ms / 1000)
        fate = box._draw()
        if fate == 0:
            # Created, but the answer is lost: read everything, then hang up without a byte.
            box._accept(self._request_id, received_at, segments, body, dropped=True)
            self.close_connection = True
            return
        if fate is not None:
            box._inject(fate, self._request_id, received_at, segments, body)
            headers = {"Retry-After": "0"} if fate in _RETRY_LATER else {}
            message = f"injected failure (sandbox --fail {fate}): the task was not created"
            self._send_json(fate, error_document(self._request_id, fate, message), headers)
            return
        box._accept(self._request_id, received_at, segments, body, dropped=False)
        self._send_json(200, {"requestId": self._request_id})

    # --- the record notify URL: set, read, delete ------------------------------------------------

    def _set_notify_config(self, raw_path: str, query: str, raw_body: bytes) -> None:
        self._check_signed(raw_path, query, raw_body)
        document = _json_object(raw_body)
        body = {key: value for key, value in document.items() if value is not None}
        unknown = sorted(set(body) - {"publishDomain", "notifyUrl"})
        if unknown:
            raise _Refusal(
                400,
                f"unknown field(s) {', '.join(map(repr, unknown))}: the body takes "
                "publishDomain and notifyUrl",
            )
        problem = publish_domain_problem(body.get("publishDomain")) or notify_url_problem(
            body.get("notifyUrl")
        )
        if problem:
            raise _Refusal(400, f"invalid request: {problem}")
        box, domain = self._sandbox, body["publishDomain"]
        if self._notify_injected(domain, "the notify URL was not set"):
            return
        box._set_notify_url(domain, body["notifyUrl"])
        box._note_notify(self._request_id, "POST", domain, "set")
        self._send_json(200, {"requestId": self._request_id})

    def _notify_config(self, raw_path: str, query: str, raw_body: bytes, domain: str) -> None:
        self._check_signed(raw_path, query, raw_body)
        problem = publish_domain_problem(domain)
        if problem:
            raise _Refusal(400, f"invalid request: {problem}")
        box = self._sandbox
        if self.command == "DELETE":
            box._set_notify_url(domain, None)  # deleting what is not set is no error
            box._note_notify(self._request_id, "DELETE", domain, "deleted")
            self._send_json(200, {"requestId": self._request_id})
            return
        if self._notify_injected(domain, "the notify URL was not read"):
            return
        url = box.notify_url(domain)
        box._note_notify(self._request_id, "GET", domain, "none" if url is None else "read")
        if url is None:
            # JD Cloud's answer for "none set": not a refused request, so not counted as one.
            message = f"no record notify URL is set for the publish domain {domain!r}"
            self._send_json(404, error_document(self._request_id, 404, message))
            return
        result = {"publishDomain": domain, "notifyUrl": url}
        self._send_json(200, {"requestId": self._request_id, "result": result})

    def _notify_injected(self, domain: str, what: str) -> bool:
        """Answer an injected notify fault, if this request draws one; True when it did."""
        status = self._sandbox._notify_fate(self.command, domain, self._request_id)
        if status is None:
            return False
        headers = {"Retry-After": "0"} if status in _RETRY_LATER else {}
        message = f"injected failure (sandbox notify faults) for {domain!r}: {what}"
        self._send_json(status, error_document(self._request_id, status, message), headers)
        return True

    def _send_json(
        self, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        payload = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        request_id = document.get("requestId")
        if isinstance(request_id, str):
            self.send_header(REQUEST_ID_HEADER, request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target, both still percent-encoded."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]
    parts = urlsplit(target)  # absolute form, as sent to a proxy
    return parts.path or "/", parts.query


def _task_segments(raw_path: str) -> dict[str, str] | None:
    """The decoded path parameters when `raw_path` is the task URL, else None."""
    parts = raw_path.split("/")
    shape = TASK_PATH.split("/")
    if len(parts) != len(shape):
        return None
    found: dict[str, str] = {}
    for part, expected in zip(parts, shape, strict=True):
        if expected.startswith("{"):
            if not part:
                return None
            try:
                # unquote, not unquote_plus: in a path `+` is itself (clients send %2B anyway).
                found[expected[1:-1]] = unquote(part, errors="strict")
            except UnicodeDecodeError:
                raise _Refusal(400, f"the path segment {part!r} is not UTF-8 text") from None
        elif part != expected:
            return None
    return found


def _notify_domain(raw_path: str) -> str | None:
    """The decoded publishDomain when `raw_path` is NOTIFY_PATH, else None."""
    prefix = NOTIFY_PATH.partition("{")[0]
    if not raw_path.startswith(prefix) or "/" in raw_path[len(prefix) :]:
        return None
    segment = raw_path[len(prefix) :]
    if not segment:
        return None
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise _Refusal(400, f"the path segment {segment!r} is not UTF-8 text") from None


def _joined_headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """Headers by lower-case name; a repeated header becomes one comma-joined value (as HTTP
    defines), so a smuggled second Host or date never verifies."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def _json_object(raw_body: bytes) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"the key {key!r} appears twice")
            result[key] = value
        return result

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        document = json.loads(
            raw_body.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except UnicodeDecodeError:
        raise _Refusal(400, "the body is not UTF-8 text") from None
    except ValueError as error:
        raise _Refusal(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise _Refusal(400, f"the body must be a JSON object, not {type(document).__name__}")
    return document


# --- running it ------------------------------------------------------------------------------


@contextmanager
def running_sandbox(config: SandboxConfig | None = None) -> Iterator[Sandbox]:
    """A started sandbox (default: a free loopback port, throwaway credentials), stopped after."""
    with Sandbox(config or SandboxConfig()) as sandbox:
        yield sandbox


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe_faults(config: SandboxConfig) -> str:
    """`latency 20 ms, drop 10%, 503 20%, never recorded 5%, ...` or `none`."""
    parts = []
    if config.latency_ms:
        parts.append(f"latency {config.latency_ms} ms")
    if config.drop_rate:
        parts.append(f"drop {_percent(config.drop_rate)} (task created, no answer)")
    for status in sorted(config.failures):
        parts.append(f"{status} {_percent(config.failures[status])}")
    for what, failures in (
        ("read", config.notify_read_failures),
        ("set", config.notify_set_failures),
    ):
        for status in sorted(failures):
            parts.append(f"notify {what} {status} {_percent(failures[status])}")
    if config.record_fail_rate:
        parts.append(f"never recorded {_percent(config.record_fail_rate)} (no callback)")
    if config.callback_duplicates:
        parts.append(f"callback posted twice {_percent(config.callback_duplicates)}")
    low, high = config.callback_delay
    if high:
        parts.append(f"callback delay {low:g}{f'-{high:g}' if high != low else ''} s")
    if config.callback_without_id:
        parts.append(f"callback without taskExternalId {_percent(config.callback_without_id)}")
    if config.callback_fail_status:
        parts.append(f'callback status "failed" {_percent(config.callback_fail_status)}')
    if config.seed is not None:
        parts.append(f"seed {config.seed}")
    return ", ".join(parts) or "none"


def _percent(rate: float) -> str:
    return f"{rate * 100:.4g}%"


def masked_url(url: str) -> str:
    """`url` with everything after its host and port hidden (`http://hooks:8080/***`): a notify
    URL's path usually carries the receiver's token."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # never user:password either
    return f"{parts.scheme}://{host}/***"


def describe_recorder(config: SandboxConfig) -> str:
    """What the recorder does, for the banner (a notify URL shown masked)."""
    if config.record_after is None:
        return "off (no callbacks; --record-after SECONDS turns it on)"
    fallback = masked_url(config.notify_url) if config.notify_url else "nobody"
    retries = f"{config.callback_retries} retries" if config.callback_retries != 1 else "1 retry"
    return (
        f"records each accepted task after {config.record_after:g} s; callbacks go to the "
        f"domain's notify URL (set through /v1/recordNotifys:config), else {fallback}; "
        f"a failed post gets {retries}"
    )


def describe_storage(config: SandboxConfig) -> str:
    """Where the recorder writes its files, for the banner (never a key)."""
    if config.storage_endpoint is None:
        return "none (files are not written; --storage-endpoint URL writes them)"
    keys = "its own keys" if config.storage_access_key is None else "the storage keys given"
    buckets = (
        "creates a saveBucket that does not exist"
        if config.storage_create_buckets
        else "a saveBucket that does not exist is a failed write"
    )
    return (
        f"each file into its saveBucket at {config.storage_endpoint.rstrip('/')} (path-style, "
        f"signed with {keys}); {buckets}"
    )


# The state the banner's commands use: apart from real states, and from apply --sandbox's own.
SANDBOX_RUN_STATE = "reconciler-state.sandbox-run.json"


def banner(sandbox: Sandbox) -> str:
    """What `reconciler sandbox` prints on start. A secret the user passed in is never shown."""
    credentials = sandbox.credentials
    secret = credentials.secret_key if sandbox.throwaway_secret else "(as given)"
    lines = [
        "reconciler sandbox: a LOCAL STAND-IN for the JD Cloud Live API. This is NOT JD Cloud:",
        "nothing sent here reaches JD Cloud and no clip is recorded.",
        "",
        f"  endpoint    {sandbox.url}",
        f"  access key  {credentials.access_key}",
        f"  secret key  {secret}",
        f"  faults      {describe_faults(sandbox.config)}",
        f"  journal     {sandbox.config.journal or '(none)'}",
        f"  recorder    {describe_recorder(sandbox.config)}",
        *(
            [f"  storage     {describe_storage(sandbox.config)}"]
            if sandbox.config.record_after is not None
            else []
        ),
        f"  accepted    GET {sandbox.url}{TASKS_PATH}",
    ]
    if sandbox.config.record_after is not None:
        lines.append(f"  recordings  GET {sandbox.url}{RECORDINGS_PATH}")
    if sandbox.throwaway_secret:
        # A state of its own, so a run against this sandbox never marks real tasks submitted;
        # not apply --sandbox's file either, which only a sandbox apply may create.
        exports = {
            "JDCLOUD_ACCESS_KEY": credentials.access_key,
            "JDCLOUD_SECRET_KEY": credentials.secret_key,
            "RECONCILER_ENDPOINT": sandbox.url,
            "RECONCILER_STATE": SANDBOX_RUN_STATE,
        }
        storage = sandbox.config.storage_endpoint
        if storage is not None:
            # verify then reads the files the recorder wrote, with the same keys.
            exports["RECONCILER_STORAGE_ENDPOINT"] = storage.rstrip("/")
        lines += [
            "",
            "Throwaway test credentials. To point reconciler at this sandbox, in another shell:",
            "  export "
            + " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items()),
            "  reconciler init",
            "  reconciler apply PATH...",
            # --grace 0: the sandbox records each clip --record-after seconds after accepting it.
            *(["  reconciler verify --grace 0 PATH..."] if storage else []),
            "",
            f"(PATH...: your manifests. The state {SANDBOX_RUN_STATE} is for this sandbox only;",
            "apply --sandbox keeps its own, reconciler-state.sandbox.json.)",
        ]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def serve(config: SandboxConfig, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`reconciler sandbox`: start, print the banner, serve until SIGINT/SIGTERM, stop; 0 on a
    clean stop, 1 when it cannot start."""
    out = out or sys.stdout
    err = err or sys.stderr
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread receives signals, and signals are how serve() is stopped.
        print("reconciler sandbox: error: serve() must run in the main thread", file=err)
        return 1
    try:
        sandbox = Sandbox(config)
    except (ValueError, StorageUnavailable) as error:
        print(f"reconciler sandbox: error: {error}", file=err)
        return 1
    if not is_loopback(config.host):
        print(
            f"WARNING: binding {config.host}, not loopback: anyone who can reach this machine "
            "can use this sandbox (it checks signatures, but serves no real data).",
            file=err,
        )
    try:
        sandbox.start()
    except JournalError as error:
        print(f"reconciler sandbox: error: {error}", file=err)
        return 1
    except OSError as error:
        print(
            f"reconciler sandbox: error: cannot listen on {config.host}:{config.port}: "
            f"{error.strerror or error}",
            file=err,
        )
        return 1

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        print(banner(sandbox), file=out, flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        sandbox.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    counts = sandbox.counts()
    print(
        f"Sandbox stopped: {counts.requests} requests, {counts.accepted} tasks accepted "
        f"({counts.dropped} of them dropped), {counts.injected_total} injected failures, "
        f"{counts.rejected_total} refused.",
        file=out,
        flush=True,
    )
    if config.record_after is not None:
        print(
            f"Recorder: {counts.recorded} tasks recorded ({counts.recorded_files} files), "
            f"{counts.record_failed} never recorded; {counts.callbacks_sent} callbacks sent, "
            f"{counts.callbacks_failed} failed, {counts.callbacks_unaddressed} with no notify "
            "URL to go to.",
            file=out,
            flush=True,
        )
    if config.storage_endpoint is not None:
        print(
            f"Storage: {counts.objects_written} files written, {counts.objects_failed} failed"
            + (f", {counts.buckets_created} buckets created." if counts.buckets_created else "."),
            file=out,
            flush=True,
        )
    return 0
