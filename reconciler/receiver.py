"""The callback receiver: the HTTP edge that takes JD Cloud's record callbacks (DESIGN §7a).

`POST /callbacks/{TOKEN}` reads the body (64 KiB at most), hands it to the pure part
(reconciler.callbacks.parse_body) and the state (`record_callback`, which matches and makes
the outcome durable), and answers 200 only once that returned: a callback acknowledged is a
callback stored. A state that cannot take it (the database unreachable, the file locked by an
apply past --lock-timeout, a disk error) is a 503 with Retry-After, so the sender tries again;
the receiver keeps running and recovers by itself.

`GET /healthz` says the process is up and serving; it does not touch the state (a probe every
few seconds must not cost a database round trip, and a receiver whose state is down still
answers every callback, with a 503 that makes the sender retry): the callbacks' log lines and
503s show the state's health.

The server is uvicorn (the `receiver` extra, imported by `serve` only) running the plain ASGI
application below; the state calls, which block, run in a bounded thread pool. A database
state gets one store per worker thread (a PostgresStore is one connection behind a mutex, so
commits could not overlap otherwise); a file state one store, whose lock serialises the
callbacks, one short hold each.

What it logs is one JSON line per event on stderr (callback, listening, stopped, server);
never the request path, which holds the token, and never the server's access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from reconciler.callbacks import Callback, CallbackError, StoredCallback, parse_body
from reconciler.state import (
    StateBackend,
    StateError,
    StateLockedError,
    is_database_location,
    open_state,
    utc_timestamp,
)

if TYPE_CHECKING:
    import uvicorn

TOKEN_VARIABLE = "RECONCILER_CALLBACK_TOKEN"
MIN_TOKEN_LENGTH = 16
CALLBACK_PREFIX = "/callbacks/"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 64 * 1024
#: How long a client may take to send a whole body: a slow one must not hold a slot forever.
BODY_DEADLINE_SECONDS = 10.0
#: How long a connection may stay without a request, from its start or its last answer, before
#: it is closed: a client that sends nothing, or its headers a byte at a time, is cut off.
REQUEST_DEADLINE_SECONDS = 5.0
#: What a 503 asks the sender to wait before it tries again.
RETRY_AFTER_SECONDS = 5
#: How long SIGTERM waits for the callbacks in progress before it gives up on them.
SHUTDOWN_GRACE_SECONDS = 10
DEFAULT_WORKERS = 8
DEFAULT_LOCK_TIMEOUT = 5.0
#: Callbacks waiting for a worker beyond which a new one is answered 503 (overload).
MAX_WAITING = 1024
#: Connections and requests beyond which uvicorn itself answers 503 (a backstop).
MAX_CONNECTIONS = 2048
#: Text from a callback (format, status, reasons) is cut to this many characters in a log line.
LOGGED_TEXT = 200

# RFC 3986 pchar without percent-encoding: what a URL path segment may hold as it is.
_SEGMENT_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ReceiverUnavailableError(RuntimeError):
    """The receiver cannot run here (its server is not installed)."""


def token_problem(token: str | None) -> str | None:
    """What is wrong with a callback token (None: nothing); the message never shows it."""
    if token is None:
        return (
            "is not set: the receiver takes callbacks at /callbacks/TOKEN only, with a secret "
            f"token of {MIN_TOKEN_LENGTH}+ characters in this variable (the same as in the "
            "RecordNotifyConfig's notifyUrl); e.g. python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    if not token:
        return "is set but empty: a callback token needs a secret of 16+ characters"
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"is {len(token)} characters long; a callback token needs at least "
            f"{MIN_TOKEN_LENGTH} (it is all that keeps others from posting callbacks)"
        )
    if any(ch not in _SEGMENT_CHARACTERS for ch in token):
        return (
            "holds a character that cannot be in a URL path segment as it is (a space, /, ?, "
            "#, %, a non-ASCII letter...); use letters, digits and - . _ ~"
        )
    return None


@dataclass(frozen=True)
class ReceiverConfig:
    """What `reconciler receive` was started with."""

    location: str  # the state: a file path or a postgresql:// URI
    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    workers: int = DEFAULT_WORKERS


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= LOGGED_TEXT:
        return text
    return text[: LOGGED_TEXT - 3] + "..."


class EventLog:
    """One JSON line per event on a stream (stderr); json.dumps escapes what a callback says."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._mutex = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        document = {"time": _now(), "event": event}
        document.update({key: value for key, value in fields.items() if value is not None})
        self.line(document)

    def line(self, document: dict[str, Any]) -> None:
        text = json.dumps(document, ensure_ascii=True) + "\n"
        with self._mutex, contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


class _ServerLogHandler(logging.Handler):
    """uvicorn's and asyncio's own messages (overload, a malformed request) as JSON lines:
    the message only, never a traceback (which could show local values)."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        self.log.write("server", level=record.levelname.lower(), message=_clip(message.strip()))


class Stores:
    """The state each worker thread stores callbacks through.

    A database state: one store per thread, opened on its first callback (one connection
    each, so commits overlap), all closed at the end. A file state: one store for every
    thread (its lock serialises them anyway).
    """

    def __init__(self, location: str, lock_timeout: float) -> None:
        self.location = location
        self.lock_timeout = lock_timeout
        self.per_thread = is_database_location(location)
        self._local = threading.local()
        self._mutex = threading.Lock()
        self._opened: list[StateBackend] = []
        self._shared: StateBackend | None = None
        self._serial = threading.Lock()
        self._closed = False

    def _open(self) -> StateBackend:
        store = open_state(self.location, lock_timeout=self.lock_timeout)
        with self._mutex:
            if self._closed:
                store.close()
                raise StateError("the receiver is stopping")
            self._opened.append(store)
        return store

    def _store(self) -> StateBackend:
        if not self.per_thread:
            with self._mutex:
                shared = self._shared
            if shared is None:
                shared = self._open()
                with self._mutex:
                    self._shared = self._shared or shared
                    shared = self._shared
            return shared
        store: StateBackend | None = getattr(self._local, "store", None)
        if store is None:
            store = self._open()
            self._local.store = store
            self._local.healthy = False
        return store

    def record(self, callback: Callback, received_at: str) -> StoredCallback:
        """Store one callback (in a worker thread); StateError when the state cannot take it.

        A database connection that worked before may have died with the server since (it was
        restarted): the first call on it fails, the store drops it, and one more try on a new
        connection tells whether the database is really down. Storing a callback twice is
        harmless (the state keeps it once), so the retry cannot make a duplicate.
        """
        store = self._store()
        if not self.per_thread:
            # One thread at a time asks for the file lock: the others wait here, woken at
            # once when it is free (a file lock's waiters poll it), within the lock timeout.
            if not self._serial.acquire(timeout=self.lock_timeout):
                raise StateLockedError(
                    f"{store.shown}: the callbacks before this one held the state for more "
                    f"than the lock timeout ({self.lock_timeout:g} s)",
                    None,
                )
            try:
                return store.record_callback(callback, received_at)
            finally:
                self._serial.release()
        from reconciler.state.postgres import StateConnectionError

        try:
            stored = store.record_callback(callback, received_at)
        except StateConnectionError:
            if not self._local.healthy:
                raise
            self._local.healthy = False
            stored = store.record_callback(callback, received_at)
        self._local.healthy = True
        return stored

    def interrupt(self) -> None:
        """Stopping: a call still waiting on the database ends within a second."""
        with self._mutex:
            opened = list(self._opened)
        for store in opened:
            store.interrupt()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            opened, self._opened = self._opened, []
        for store in opened:
            with contextlib.suppress(Exception):
                store.close()


@dataclass
class _Answer:
    status: int
    document: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


_NOT_FOUND = {"ok": False, "error": "not found"}


class ReceiverApp:
    """The ASGI application: routes, reads bodies within the limits, stores, answers, logs."""

    def __init__(
        self,
        token: str,
        stores: Stores,
        executor: ThreadPoolExecutor,
        log: EventLog,
        *,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._token = token.encode("utf-8")
        self.stores = stores
        self.executor = executor
        self.log = log
        self.max_waiting = max_waiting
        self.waiting = 0
        self.outcomes: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":  # lifespan is off; nothing else is served
            return
        try:
            answer = await self._route(scope, receive)
        except Exception as error:  # a bug must still never show a traceback, nor stop us
            self.log.write(
                "error", message=_clip(f"{type(error).__name__}: {error}"), client=_client(scope)
            )
            answer = _Answer(500, {"ok": False, "error": "internal error"}, [_CLOSE])
        await _respond(send, answer)

    async def _route(self, scope: Scope, receive: Receive) -> _Answer:
        # Routed on the path as sent, not as decoded: `/callbacks%2FTOKEN` or a percent-encoded
        # token is not our path (RFC 3986 §2.2: an encoded reserved character is data, not a
        # delimiter), and a token is made of characters that are never encoded.
        raw = scope.get("raw_path")
        path: str = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("path", "")
        method: str = scope.get("method", "")
        if path == HEALTH_PATH:
            if method in ("GET", "HEAD"):
                return _Answer(200, {"ok": True})
            return _Answer(405, {"ok": False, "error": "method not allowed"}, _allow(b"GET, HEAD"))
        if path.startswith(CALLBACK_PREFIX) and self._is_token(path[len(CALLBACK_PREFIX) :]):
            if method != "POST":
                return _Answer(405, {"ok": False, "error": "method not allowed"}, _allow(b"POST"))
            return await self._callback(scope, receive)
        if method == "POST" and path.startswith(CALLBACK_PREFIX):
            self._logged("rejected", 404, scope, reason="wrong token")
        return _Answer(404, dict(_NOT_FOUND))

    def _is_token(self, given: str) -> bool:
        # Constant time over the bytes: how long a comparison takes says nothing of how much
        # of a guess was right.
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    async def _callback(self, scope: Scope, receive: Receive) -> _Answer:
        body = await self._read_body(scope, receive)
        if isinstance(body, _Answer):
            return body
        try:
            callback = parse_body(body)
        except CallbackError as error:
            reason = str(error)
            self._logged("rejected", 400, scope, reason=reason)
            return _Answer(400, {"ok": False, "error": reason})
        if self.waiting >= self.max_waiting:
            self._logged("unavailable", 503, scope, callback, reason="overloaded")
            return _unavailable("the receiver is overloaded")
        received_at = utc_timestamp(datetime.now(UTC))
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            stored = await loop.run_in_executor(
                self.executor, self.stores.record, callback, received_at
            )
        except StateError as error:
            self._logged("unavailable", 503, scope, callback, reason=str(error))
            return _unavailable("the state cannot take callbacks right now")
        finally:
            self.waiting -= 1
        if stored.duplicate:
            outcome = "duplicate"
        elif stored.entry is not None:
            outcome = "matched"
        else:
            outcome = "unmatched"
        self._logged(outcome, 200, scope, callback, stored=stored)
        return _Answer(
            200, {"ok": True, "matched": stored.entry is not None, "duplicate": stored.duplicate}
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | _Answer:
        """The whole body, or the answer refusing it: too large (by Content-Length before
        reading, or once a chunked body passes the limit), or too slow."""
        declared = _content_length(scope)
        if declared is not None and declared > MAX_BODY_BYTES:
            return self._too_large(scope)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_DEADLINE_SECONDS):
                while True:
                    message = await receive()
                    if message.get("type") != "http.request":
                        # The client went away: nobody to answer, nothing stored.
                        self._logged("rejected", 400, scope, reason="the client disconnected")
                        return _Answer(400, {"ok": False, "error": "disconnected"}, [_CLOSE])
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        return self._too_large(scope)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            reason = f"the body took longer than {BODY_DEADLINE_SECONDS:g} s to arrive"
            self._logged("rejected", 408, scope, reason=reason)
            return _Answer(408, {"ok": False, "error": reason}, [_CLOSE])
        return b"".join(chunks)

    def _too_large(self, scope: Scope) -> _Answer:
        reason = f"the body is larger than {MAX_BODY_BYTES // 1024} KiB"
        self._logged("rejected", 413, scope, reason=reason)
        # Closing the connection: the rest of the body is never read.
        return _Answer(413, {"ok": False, "error": reason}, [_CLOSE])

    def _logged(
        self,
        outcome: str,
        http_status: int,
        scope: Scope,
        callback: Callback | None = None,
        *,
        reason: str | None = None,
        stored: StoredCallback | None = None,
    ) -> None:
        self.outcomes[outcome] += 1
        entry = stored.entry if stored is not None else None
        if stored is not None and reason is None:
            reason = stored.reason
        self.log.write(
            "callback",
            outcome=outcome,
            task=entry.name if entry is not None else None,
            hash=entry.hash[:12] if entry is not None else None,
            reason=_clip(reason),
            format=_clip(callback.format) if callback is not None else None,
            status=_clip(callback.status) if callback is not None else None,
            http=http_status,
            client=_client(scope),
        )


_CLOSE = (b"connection", b"close")


def _allow(methods: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"allow", methods)]


def _unavailable(message: str) -> _Answer:
    return _Answer(
        503,
        {"ok": False, "error": f"{message}; try again later"},
        [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)  # h11 has checked it is a number already
    return None


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _respond(send: Send, answer: _Answer) -> None:
    body = json.dumps(answer.document).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *answer.headers,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --- the server -----------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here, so a port in use is our message, not the server's)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def _server_logs(log: EventLog) -> Iterator[None]:
    """uvicorn's and asyncio's loggers write JSON lines through `log`, and only warnings."""
    handler = _ServerLogHandler(log)
    saved = []
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers = [handler] if name != "uvicorn.access" else []
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def check_installed() -> None:
    """ReceiverUnavailableError unless the server (the `receiver` extra) is installed."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise ReceiverUnavailableError(
            "reconciler receive needs its HTTP server, uvicorn: install the receiver extra "
            "(pip install 'reconciler[receiver]')"
        ) from None


def serve(config: ReceiverConfig, *, err: TextIO | None = None) -> int:
    """`reconciler receive`: listen, store callbacks until SIGINT/SIGTERM, finish those in
    progress (for up to SHUTDOWN_GRACE_SECONDS), stop; 0 on a clean stop, 1 when it cannot
    start. Runs in the main thread (signals are how it is stopped)."""
    log = EventLog(err or sys.stderr)
    try:
        check_installed()
    except ReceiverUnavailableError as error:
        log.write("error", message=str(error))
        return 1
    if threading.current_thread() is not threading.main_thread():
        log.write("error", message="serve() must run in the main thread")
        return 1
    try:
        sock = _bind(config.host, config.port)
    except OSError as error:
        log.write(
            "error",
            message=f"cannot listen on {config.host}:{config.port}: {error.strerror or error}",
        )
        return 1
    url = _url(config.host, sock)
    stores = Stores(config.location, config.lock_timeout)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="receiver")
    app = ReceiverApp(config.token, stores, executor, log)
    server = _make_server(
        app,
        config,
        on_started=lambda: log.line({"event": "listening", "url": url}),
        # Signalled: no new connections from now on; the callbacks in progress finish.
        on_stopping=lambda: log.write("stopping", inFlight=len(server.server_state.tasks)),
    )
    previous: dict[int, Any] = {}
    try:
        with _server_logs(log):
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, server.handle_exit)
            server.run(sockets=[sock])
    finally:
        # Callbacks the grace period gave up on may still be in a worker: cut their waits on
        # the database short (each ends within a second), and wait for them.
        stores.interrupt()
        executor.shutdown(wait=True, cancel_futures=True)
        stores.close()
        sock.close()
        log.write("stopped", url=url, callbacks=dict(sorted(app.outcomes.items())))
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def _protocol_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        """uvicorn's h11 protocol, with a deadline for each request's headers to arrive.

        uvicorn's keep-alive timeout starts only after an answer, and any byte received
        cancels it: a connection that trickles its headers would be held for ever, and enough
        of them fill the connection limit. Here a connection that has had no new request for
        REQUEST_DEADLINE_SECONDS since it opened, or since its last answer, is closed.
        """

        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(
                REQUEST_DEADLINE_SECONDS, self._expire, self.cycle
            )

        def _expire(self, waiting_after: object) -> None:
            # Still the request before (or none yet), answered: no new one came in time.
            cycle = self.cycle
            answered = cycle is None or cycle.response_complete
            if cycle is waiting_after and answered and not self.transport.is_closing():
                self.transport.close()

    return DeadlineProtocol


def _make_server(
    app: ReceiverApp,
    config: ReceiverConfig,
    *,
    on_started: Callable[[], None],
    on_stopping: Callable[[], None],
) -> uvicorn.Server:
    import uvicorn

    class ReceiverServer(uvicorn.Server):
        """uvicorn's server, with the listening line once it serves, and signals handled by
        serve(): uvicorn's own handling re-raises the signal once it stopped, which would end
        the command as interrupted (130) after a clean, graceful stop."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_started()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            on_stopping()
            await super().shutdown(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # The first signal stops gracefully; a second one stops without waiting.
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    settings = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="asyncio",
        http=_protocol_class(),
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,  # its lines hold the path, and the path holds the token
        proxy_headers=False,
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return ReceiverServer(settings)
