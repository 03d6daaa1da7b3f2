"""`reconciler receive` under attack and under load (issue 19, DESIGN §7a).

The real receiver in its own process on 127.0.0.1 (port 0, the port read from its
"listening" line), against the file state and the suite's real PostgreSQL. Hostile input (the
corpus of tests/fixtures/callbacks/, bodies too big or too deep, wrong tokens in many shapes,
slow and flooding clients), load (500 callbacks from 20 concurrent clients), kill -9 in the
middle of it, and the database going away and coming back. Every test ends by checking that the
token is nowhere: not in the receiver's output, not in an answer, not in the state.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from reconciler.callbacks import match_callback, parse_body
from reconciler.state import State, StateEntry, TaskStatus, open_state
from reconciler.state.model import generated_external_id
from reconciler.tasks import Task
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.e2e
pytest.importorskip("uvicorn")  # the receiver extra, which the test extra installs

CORPUS = Path(__file__).parent / "fixtures" / "callbacks"
CORPUS_ID = "163594946396839936"  # the id the corpus's matched bodies carry
STAMP = "2026-11-20T20:00:00Z"
LIMIT = 64 * 1024  # DESIGN §7a: more than 64 KiB is 413
START_TIMEOUT = 60.0  # seconds, for a loaded 2-core machine
ANSWER_TIMEOUT = 60.0  # a request that is not answered by then counts as blocked


# --- the receiver process -----------------------------------------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]


class Receiver:
    """`python -m reconciler receive --state LOCATION --port 0` with a token; output collected."""

    def __init__(self, location: str, token: str, cwd: Path, *options: str) -> None:
        self.location = location
        self.token = token
        self.cwd = cwd
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._listening = threading.Event()
        self._readers: list[threading.Thread] = []

    def start(self) -> Receiver:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RECONCILER_", "JDCLOUD_"))
        }
        env.update(NO_COLOR="1", RECONCILER_CALLBACK_TOKEN=self.token)
        argv = [sys.executable, "-m", "reconciler", "receive", "--state", self.location]
        self.process = subprocess.Popen(
            [*argv, "--port", "0", *self.options],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._listening.clear()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self._stdout, False)),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._stderr, True)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the receiver did not start:\n{self.output}")
        return self

    def _drain(self, stream: Any, lines: list[bytes], watch: bool) -> None:
        for line in iter(stream.readline, b""):
            lines.append(line)
            if watch and not self._listening.is_set():
                with contextlib.suppress(ValueError):
                    document = json.loads(line)
                    if isinstance(document, dict) and document.get("event") == "listening":
                        url = str(document["url"]).removeprefix("http://")
                        host, _, port = url.rpartition(":")
                        self.host, self.port = host.strip("[]"), int(port)
                        self._listening.set()
        stream.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, and the exit status (it must exit by itself)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the receiver did not exit on SIGTERM:\n{self.output}")
        self._join()
        return code

    def kill(self) -> None:
        """kill -9: no chance to finish anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()
        self._join()

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    @property
    def output(self) -> str:
        return b"".join(self._stdout + self._stderr).decode("utf-8", "replace")

    def stderr_lines(self) -> list[bytes]:
        return [line for line in self._stderr if line.strip()]

    def logs(self) -> list[dict[str, Any]]:
        """The JSON lines on stderr (callbacks, listening, stopped)."""
        documents = []
        for line in self._stderr:
            with contextlib.suppress(ValueError):
                document = json.loads(line)
                if isinstance(document, dict):
                    documents.append(document)
        return documents


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    receiver: Receiver,
    path: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> Answer:
    """One request (on `connection`, kept open, or a new one), read to the end."""
    own = connection is None
    conn = connection or http.client.HTTPConnection(
        receiver.host, receiver.port, timeout=ANSWER_TIMEOUT
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        if own:
            conn.close()


def post(receiver: Receiver, body: bytes, **options: Any) -> Answer:
    headers = {"Content-Type": "application/json", **options.pop("headers", {})}
    return request(receiver, f"/callbacks/{receiver.token}", body, headers=headers, **options)


def raw_exchange(
    receiver: Receiver, data: bytes, *, send_in_background: bool = False
) -> Answer | None:
    """`data` as sent by a client with no HTTP library; the answer, or None if the receiver
    closed or reset the connection without one (a fine answer to a hostile request)."""
    sock = socket.create_connection((receiver.host, receiver.port), timeout=ANSWER_TIMEOUT)
    sender: threading.Thread | None = None
    try:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(data)

        if send_in_background:  # the receiver may answer before it has read everything
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
        else:
            send()
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        except (OSError, http.client.HTTPException):
            return None
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        sock.close()
        if sender is not None:
            sender.join(timeout=ANSWER_TIMEOUT)


# --- states -------------------------------------------------------------------------------------


def entry_of(task: Task, external_id: str | None = None) -> StateEntry:
    return StateEntry(
        task.hash,
        TaskStatus.SUBMITTED,
        task.name,
        task.source,
        task.request,
        STAMP,
        "r" * 32,
        STAMP,
        external_id if external_id is not None else generated_external_id(task.hash),
    )


def new_state(location: str, entries: Sequence[StateEntry]) -> str:
    """Create the state at `location` (as `reconciler init` would) holding `entries`."""
    with open_state(location, lock_timeout=30) as store:
        store.create()
        if entries:
            with store.lock():
                store.claim(list(entries))
    return location


def load(location: str) -> State:
    with open_state(location, lock_timeout=30) as store:
        return store.load()


def stored_ids(state: State) -> list[str]:
    """The ids of every callback the state holds: evidence and unmatched, repeats included."""
    ids = [r.evidence for recordings in state.recordings.values() for r in recordings]
    return ids + [u.id for u in state.unmatched]


def state_text(location: str) -> str:
    """Everything the state's storage holds, as text (for the token check)."""
    if location.startswith("postgresql"):
        import psycopg
        from psycopg import sql

        uri = location.partition("#")[0]
        texts = []
        with psycopg.connect(uri, autocommit=True) as connection:
            tables = connection.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            for schema, table in tables:
                query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                texts += [row[0] for row in connection.execute(query).fetchall()]
        return "\n".join(texts)
    path = Path(location)
    return "\n".join(
        candidate.read_bytes().decode("utf-8", "replace")
        for candidate in sorted(path.parent.iterdir())
        if candidate.name.startswith(path.name) and candidate.is_file()
    )


@dataclass
class Setup:
    """A state for one test, the receivers started on it (stopped at the end), the answers."""

    kind: str  # "file" or "database"
    location: str
    workdir: Path
    token: str = field(default_factory=new_token)
    receivers: list[Receiver] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)

    def receiver(self, *options: str, location: str | None = None) -> Receiver:
        started = Receiver(location or self.location, self.token, self.workdir, *options).start()
        self.receivers.append(started)
        return started

    def other_location(self, name: str) -> str:
        if self.kind == "file":
            return str(self.workdir / f"{name}.json")
        return f"{self.location.partition('#')[0]}#{name}"

    def check_no_token(self, *locations: str) -> None:
        """The token in no output, answer or state (nor the database's password in output);
        no traceback; every line on stderr a JSON log line."""
        for receiver in self.receivers:
            assert self.token not in receiver.output
            assert "Traceback" not in receiver.output, receiver.output
            assert len(receiver.logs()) == len(receiver.stderr_lines()), receiver.output
        for body in self.answers:
            assert self.token.encode() not in body
        for location in (self.location, *locations):
            assert self.token not in state_text(location)
            password = urlsplit(location).password if location.startswith("postgres") else None
            for receiver in self.receivers:
                assert not password or password not in receiver.output


@pytest.fixture
def make_setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str, Sequence[StateEntry]], Setup]]:
    made: list[Setup] = []

    def make(kind: str, entries: Sequence[StateEntry]) -> Setup:
        if kind == "file":
            location = str(tmp_path / "state.json")
        else:
            location = request.getfixturevalue("postgres_database")
        setup = Setup(kind, new_state(location, entries), tmp_path)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        for receiver in setup.receivers:
            receiver.kill()


@pytest.fixture
def minimal(make_task: Callable[..., Task]) -> Task:
    """The task of tests/fixtures/valid/minimal.yaml, which the corpus's bodies are about."""
    return make_task(0, name="minimal", streamName="match")


BACKENDS = pytest.mark.parametrize("kind", ["file", "database"])


# --- the corpus ---------------------------------------------------------------------------------


@BACKENDS
def test_the_corpus_is_answered_and_stored_as_its_directories_say(
    kind: str, make_setup: Any, minimal: Task, make_task: Callable[..., Task]
) -> None:
    entries = [entry_of(minimal, CORPUS_ID), entry_of(make_task(1))]
    setup = make_setup(kind, entries)
    receiver = setup.receiver()
    for path in sorted((CORPUS / "rejected").iterdir()):
        answer = post(receiver, path.read_bytes())
        setup.answers.append(answer.body)
        assert answer.status == 400, (path.name, answer)
        reason = answer.json()
        assert isinstance(reason, dict) and len(answer.body) < 1024, answer.body
    assert stored_ids(load(setup.location)) == []

    matched, unmatched = (
        sorted((CORPUS / "matched").iterdir()),
        sorted((CORPUS / "unmatched").iterdir()),
    )
    for path in matched + unmatched:
        answer = post(receiver, path.read_bytes())
        setup.answers.append(answer.body)
        assert answer.status == 200, (path.name, answer)
        assert answer.json() == {"ok": True, "matched": path in matched, "duplicate": False}

    state = load(setup.location)
    assert [r.evidence for r in state.recordings_of(minimal.hash)] == [
        parse_body(path.read_bytes()).id for path in matched
    ]
    assert {h for h, recordings in state.recordings.items() if recordings} == {minimal.hash}
    assert [u.id for u in state.unmatched] == [parse_body(p.read_bytes()).id for p in unmatched]
    for path, kept in zip(unmatched, state.unmatched, strict=True):
        callback = parse_body(path.read_bytes())
        assert kept.body == json.loads(path.read_bytes()), path.name  # as received
        assert kept.reason == match_callback(callback, entries).reason, path.name
    reasons = {
        path.name: kept.reason for path, kept in zip(unmatched, state.unmatched, strict=True)
    }
    assert reasons["unknown-event.json"] == (
        "event 'stream_publish', not 'record_done': not a record callback"
    )
    assert reasons["unknown-external-id.json"] == (
        "no task in this state was sent taskExternalId 'no-task-was-sent-this-id'"
    )

    # Each again: duplicates, nothing new.
    for path in matched + unmatched:
        answer = post(receiver, path.read_bytes())
        assert answer.status == 200
        assert answer.json() == {"ok": True, "matched": path in matched, "duplicate": True}
    assert sorted(stored_ids(load(setup.location))) == sorted(stored_ids(state))
    assert receiver.stop() == 0
    setup.check_no_token()


def test_the_callback_log_says_what_happened_and_escapes_what_a_callback_says(
    make_setup: Any, minimal: Task
) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    for name in ("matched/unknown-fields.json", "unmatched/unknown-external-id.json"):
        assert post(receiver, (CORPUS / name).read_bytes()).status == 200
    assert post(receiver, b"[]").status == 400
    assert receiver.stop() == 0
    outcomes = [log.get("outcome") for log in receiver.logs() if log.get("event") == "callback"]
    assert outcomes == ["matched", "unmatched", "rejected"]
    text = receiver.output
    assert "\x1b" not in text and "\u2028" not in text  # a callback's text is never raw output
    setup.check_no_token()


@BACKENDS
def test_numbers_as_strings_and_as_numbers_are_the_same_task(
    kind: str, make_setup: Any, minimal: Task
) -> None:
    setup = make_setup(kind, [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    for name in ("documented.json", "numbers-as-numbers.json"):
        answer = post(receiver, (CORPUS / "matched" / name).read_bytes())
        assert (answer.status, answer.json()["matched"]) == (200, True)
    outputs = load(setup.location).recordings_of(minimal.hash)
    assert [(r.file_size, r.duration) for r in outputs] == [
        ("6007851133", "300000.0"),
        ("6007851133", "300000"),
    ]
    setup.check_no_token()


# --- bodies too big, too deep, cut short --------------------------------------------------------


def padded(body: bytes, size: int) -> bytes:
    """`body` (a JSON object) padded with spaces inside it to exactly `size` bytes."""
    body = body.rstrip()
    assert body.endswith(b"}")
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_size_limit_depth_and_truncation(make_setup: Any, minimal: Task) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    documented = (CORPUS / "matched" / "documented.json").read_bytes()

    assert post(receiver, padded(documented, LIMIT)).status == 200  # 64 KiB is allowed

    # Refused by Content-Length before reading: the answer comes though no body was sent.
    for size in (LIMIT + 1, 1024 * 1024):
        headers = (
            f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        answer = raw_exchange(receiver, headers)
        assert answer is not None and answer.status == 413, size
        # The whole body sent as well: 413, or the connection cut before the client read it.
        answer = raw_exchange(receiver, headers + padded(documented, size), send_in_background=True)
        assert answer is None or answer.status == 413, size
    huge = (
        f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 99999999999999999999999999\r\n\r\n"
    ).encode()
    answer = raw_exchange(receiver, huge)
    assert answer is None or answer.status in (400, 413)

    # A chunked 1 MiB body: refused past the limit (the connection may be cut as it is).
    chunk = b" " * 4096
    chunked = (
        (
            f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + (b"1000\r\n" + chunk + b"\r\n") * 256
        + b"0\r\n\r\n"
    )
    answer = raw_exchange(receiver, chunked, send_in_background=True)
    assert answer is None or answer.status == 413

    for depth in (30_000, LIMIT // 2 - 10):
        deep = b"[" * depth + b"]" * depth
        answer = post(receiver, deep)
        assert answer.status == 400, depth
        nested = b'{"a":' * (depth // 6) + b"1" + b"}" * (depth // 6)
        assert post(receiver, nested).status == 400

    # Declared longer than sent, then the client goes away: nothing stored, nothing stuck.
    cut = (
        f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\nContent-Length: "
        f"{len(documented)}\r\n\r\n"
    ).encode() + documented[:-20]
    with socket.create_connection((receiver.host, receiver.port)) as sock:
        sock.sendall(cut)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(ANSWER_TIMEOUT)
        with contextlib.suppress(OSError):
            sock.recv(1024)  # an answer or the end; either is fine

    state = load(setup.location)
    assert stored_ids(state) == [parse_body(padded(documented, LIMIT)).id]
    assert request(receiver, "/healthz", method="GET").status == 200
    assert receiver.stop() == 0
    setup.check_no_token()


# --- tokens -------------------------------------------------------------------------------------


def percent_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def test_wrong_and_missing_tokens_are_404_like_any_unknown_path(
    make_setup: Any, minimal: Task
) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    token = setup.token
    other_last = "A" if token[-1] != "A" else "B"
    body = (CORPUS / "matched" / "documented.json").read_bytes()
    unknown = request(receiver, "/no/such/path", body)
    assert unknown.status == 404
    wrong_paths = [
        f"/callbacks/{token[:-1]}{other_last}",  # differs in its last character
        f"/callbacks/{other_last}{token[1:]}",  # in its first
        f"/callbacks/{token[:-1]}",  # a prefix
        f"/callbacks/{token[:1]}",
        f"/callbacks/{token}x",  # longer
        f"/callbacks/{token}{token}",
        f"/callbacks/{token.swapcase()}",
        "/callbacks/",
        "/callbacks",
        "/callbacks//",
        f"/callbacks/{percent_encoded(token[:-1] + other_last)}",  # a wrong one, encoded
        f"/callbacks/{token}%2F",  # an encoded slash after it: another segment
        f"/callbacks/{token}%00",
        f"/callbacks/{token}%20",
        "/callbacks/../healthz",
        f"/callbacks/../callbacks/{token}x",
        f"/x/../callbacks/{token[:-1]}",
        f"//callbacks/{token}",
        f"/callbacks//{token}",
        f"/callbacks/{token}/",
        f"/callbacks/{token}/x",
        f"/CALLBACKS/{token}",
        f"/callbacks?token={token}",
        f"/callbacks/?{token}",
        f"/callbacks/{token[:-1]}?{token[-1]}",
        f"/?/callbacks/{token}",
    ]
    if token.swapcase() == token:  # no letters (unlikely): drop that one
        wrong_paths.remove(f"/callbacks/{token.swapcase()}")
    for path in wrong_paths:
        answer = request(receiver, path, body)
        setup.answers.append(answer.body)
        assert (answer.status, answer.body) == (unknown.status, unknown.body), path
        assert token not in json.dumps(answer.headers)
        got = request(receiver, path, method="GET")
        assert got.status == 404 or path == "/callbacks/../healthz", path
    # A missing token is no token, in the environment too.
    assert stored_ids(load(setup.location)) == []

    # The right token: the query is not part of the path.
    answer = request(receiver, f"/callbacks/{token}?from=jdcloud", body)
    assert (answer.status, answer.json()["matched"]) == (200, True)
    # The right token percent-encoded is the same path (RFC 3986 §6.2.2.2) or another one:
    # either is sound, as long as it is one of the two and the token is not echoed.
    encoded = request(receiver, f"/callbacks/{percent_encoded(token)}", body)
    setup.answers.append(encoded.body)
    assert encoded.status in (200, 404)
    assert stored_ids(load(setup.location)) == [parse_body(body).id]
    assert receiver.stop() == 0
    setup.check_no_token()


def test_an_encoded_slash_is_not_the_path_separator(make_setup: Any, minimal: Task) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    body = (CORPUS / "matched" / "documented.json").read_bytes()
    unknown = request(receiver, "/no/such/path", body)
    for path in (f"/callbacks%2F{setup.token}", f"/callbacks%2f{setup.token}"):
        answer = request(receiver, path, body)
        setup.answers.append(answer.body)
        assert (answer.status, answer.body) == (unknown.status, unknown.body), path
    assert stored_ids(load(setup.location)) == []
    setup.check_no_token()


def test_other_methods_are_405_with_allow(make_setup: Any, minimal: Task) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = request(receiver, f"/callbacks/{setup.token}", b"{}", method=method)
        setup.answers.append(answer.body)
        assert answer.status == 405, method
        assert "POST" in answer.headers.get("allow", ""), answer.headers
    assert stored_ids(load(setup.location)) == []
    setup.check_no_token()


# --- callbacks the state cannot place -----------------------------------------------------------


@BACKENDS
def test_a_callback_for_a_task_of_another_state_is_kept_unmatched_with_the_reason(
    kind: str, make_setup: Any, minimal: Task, make_task: Callable[..., Task]
) -> None:
    setup = make_setup(kind, [entry_of(minimal, CORPUS_ID)])
    elsewhere = make_task(7)
    other = new_state(setup.other_location("other"), [entry_of(elsewhere)])
    receiver = setup.receiver()
    body = {
        "publishDomain": "push.example.com",
        "appName": "live",
        "streamName": "clip-7",
        "event": "record_done",
        "status": "success",
        "format": "mp4",
        "group": [{"beginTime": 1795201200000, "endTime": 1795201500000}],
        "taskExternalId": generated_external_id(elsewhere.hash),
    }
    answer = post(receiver, json.dumps(body).encode())
    assert answer.status == 200 and answer.json() == {
        "ok": True,
        "matched": False,
        "duplicate": False,
    }
    (kept,) = load(setup.location).unmatched
    assert kept.reason == (
        f"no task in this state was sent taskExternalId '{generated_external_id(elsewhere.hash)}'"
    )
    assert kept.body == body
    assert stored_ids(load(other)) == []  # the other state is not touched
    # Without the id, the same: its stream and times name no task here.
    del body["taskExternalId"]
    assert post(receiver, json.dumps(body).encode()).json()["matched"] is False
    reasons = [u.reason for u in load(setup.location).unmatched]
    assert reasons[1].startswith("no taskExternalId, and no task in this state records stream")
    assert "push.example.com/live/clip-7" in reasons[1]
    setup.check_no_token(other)


# --- slow and flooding clients ------------------------------------------------------------------


def test_slow_partial_requests_do_not_block_other_clients(make_setup: Any, minimal: Task) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    documented = (CORPUS / "matched" / "documented.json").read_bytes()
    head = f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\n"
    partial = [
        f"POST /callbacks/{setup.token} HT".encode(),  # the request line, cut short
        head.encode(),  # the headers, not ended
        (head + f"Content-Length: {len(documented)}\r\n\r\n").encode() + documented[:10],
        (head + "Transfer-Encoding: chunked\r\n\r\n100\r\n").encode() + documented[:10],
    ]
    slow: list[socket.socket] = []
    try:
        for index in range(40):
            sock = socket.create_connection((receiver.host, receiver.port), timeout=30)
            sock.sendall(partial[index % len(partial)])
            slow.append(sock)
        # One that will finish later: half its body now.
        late = socket.create_connection((receiver.host, receiver.port), timeout=ANSWER_TIMEOUT)
        other = (CORPUS / "matched" / "vod-task-id.json").read_bytes()
        late.sendall((head + f"Content-Length: {len(other)}\r\n\r\n").encode() + other[:50])

        # Meanwhile everyone else is served, each on a new connection.
        for name in ("documented.json", "numbers-as-numbers.json", "unknown-fields.json"):
            answer = post(receiver, (CORPUS / "matched" / name).read_bytes())
            assert answer.status == 200, name
        assert request(receiver, "/healthz", method="GET").status == 200

        late.sendall(other[50:])
        response = http.client.HTTPResponse(late)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["matched"] is True
        late.close()
    finally:
        for sock in slow:
            sock.close()
    expected = ["documented.json", "numbers-as-numbers.json", "unknown-fields.json"]
    ids = [parse_body((CORPUS / "matched" / name).read_bytes()).id for name in expected]
    assert stored_ids(load(setup.location)) == [*ids, parse_body(other).id]
    assert receiver.stop() == 0
    setup.check_no_token()


def test_header_floods_are_refused_and_the_receiver_goes_on(make_setup: Any, minimal: Task) -> None:
    setup = make_setup("file", [entry_of(minimal, CORPUS_ID)])
    receiver = setup.receiver()
    documented = (CORPUS / "matched" / "documented.json").read_bytes()
    start = f"POST /callbacks/{setup.token} HTTP/1.1\r\nHost: x\r\n"
    end = f"Content-Length: {len(documented)}\r\n\r\n".encode() + documented
    floods = {
        "one header of 1 MiB": (start + "X-Big: " + "a" * (1024 * 1024) + "\r\n").encode(),
        "100,000 headers": (start + "".join(f"X-{n}: v\r\n" for n in range(100_000))).encode(),
        "a 1 MiB request line": b"POST /callbacks/" + b"a" * (1024 * 1024) + b" HTTP/1.1\r\n",
    }
    for what, flood in floods.items():
        answer = raw_exchange(receiver, flood + end, send_in_background=True)
        if answer is not None:
            assert 400 <= answer.status < 500, (what, answer.status)
            setup.answers.append(answer.body)
        assert receiver.running, what
    smuggled = {
        "two different Content-Lengths": (
            start + "Content-Length: 5\r\nContent-Length: 600\r\n\r\n"
        ).encode()
        + documented,
        "a negative Content-Length": (start + "Content-Length: -1\r\n\r\n").encode() + documented,
        "a header without a colon": (start + "X-Broken\r\n").encode() + end,
        "a NUL in a header": (start + "X-Nul: a\x00b\r\n").encode() + end,
    }
    for what, attempt in smuggled.items():
        answer = raw_exchange(receiver, attempt, send_in_background=True)
        assert answer is None or 400 <= answer.status < 500, (what, answer)
    # Still serving, and none of those stored anything.
    assert post(receiver, documented).status == 200
    assert stored_ids(load(setup.location)) == [parse_body(documented).id]
    assert receiver.stop() == 0
    setup.check_no_token()


# --- load, and kill -9 in the middle of it ------------------------------------------------------

CLIENTS = 20
CALLBACKS = 500


def flood_bodies(tasks: Sequence[Task]) -> list[bytes]:
    """CALLBACKS distinct bodies: 4 of 5 for the tasks (each its own file), 1 of 5 unmatched
    (every task gets as many of each)."""
    bodies = []
    for index in range(CALLBACKS):
        task = tasks[index % len(tasks)]
        document: dict[str, Any] = {
            "publishDomain": "push.example.com",
            "appName": "live",
            "streamName": task.request["body"]["streamName"],
            "event": "record_done",
            "status": "success",
            "format": "mp4",
            "fileSize": str(1000 + index),
            "downloadUrl": f"http://s3.example.com/highlights/{index}.mp4",
            "taskExternalId": (
                generated_external_id(task.hash) if (index // len(tasks)) % 5 else f"nobody-{index}"
            ),
        }
        bodies.append(json.dumps(document).encode())
    return bodies


@dataclass
class FloodResult:
    acknowledged: list[bytes] = field(default_factory=list)  # bodies answered 200
    duplicates: int = 0
    unavailable: int = 0  # 503s (retried)
    lost: int = 0  # requests whose answer never came (the connection broke)


def flood(
    receiver: Receiver,
    bodies: Sequence[bytes],
    *,
    result: FloodResult | None = None,
    retry_lost: bool = True,
) -> FloodResult:
    """Post `bodies` from CLIENTS keep-alive clients at once; record in `result` what got a 200.

    A 503 is retried (as JD Cloud would); a broken connection is retried on a new one while
    `retry_lost`, else the client gives up (the receiver was killed).
    """
    result = result if result is not None else FloodResult()
    lock = threading.Lock()
    errors: list[BaseException] = []
    path = f"/callbacks/{receiver.token}"
    shares = [bodies[n::CLIENTS] for n in range(CLIENTS)]

    def client(share: Sequence[bytes]) -> None:
        conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=ANSWER_TIMEOUT)
        try:
            for body in share:
                for _attempt in range(200):
                    try:
                        conn.request("POST", path, body, {"Content-Type": "application/json"})
                        response = conn.getresponse()
                        data = response.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        with lock:
                            result.lost += 1
                        if not retry_lost:
                            return
                        time.sleep(0.05)
                        continue
                    if response.status == 503:
                        with lock:
                            result.unavailable += 1
                        time.sleep(0.05)
                        continue
                    assert response.status == 200, (response.status, data)
                    with lock:
                        result.acknowledged.append(body)
                        result.duplicates += bool(json.loads(data)["duplicate"])
                    break
                else:
                    raise AssertionError("a callback was refused 200 times")
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return result


@pytest.fixture
def flood_tasks(make_task: Callable[..., Task]) -> list[Task]:
    return [make_task(n) for n in range(50)]


@pytest.mark.slow
@BACKENDS
def test_500_callbacks_from_20_clients_are_each_stored_once(
    kind: str, make_setup: Any, flood_tasks: list[Task]
) -> None:
    setup = make_setup(kind, [entry_of(task) for task in flood_tasks])
    receiver = setup.receiver()
    bodies = flood_bodies(flood_tasks)
    again = bodies[::10]  # 50 delivered twice, by other clients, while the rest arrive
    result = flood(receiver, bodies + again)
    assert len(result.acknowledged) == len(bodies) + len(again)
    assert result.duplicates >= len(again) or result.lost  # a lost answer's retry is one too

    state = load(setup.location)
    ids = stored_ids(state)
    assert sorted(ids) == sorted(parse_body(body).id for body in bodies)  # each once, none lost
    assert sum(len(r) for r in state.recordings.values()) == CALLBACKS * 4 // 5
    assert len(state.unmatched) == CALLBACKS // 5
    for task in flood_tasks:
        assert len(state.recordings_of(task.hash)) == CALLBACKS * 4 // 5 // len(flood_tasks)
    assert receiver.stop() == 0
    answered = [
        log
        for log in receiver.logs()
        if log.get("event") == "callback"
        and log.get("outcome") in ("matched", "unmatched", "duplicate")
    ]
    assert len(answered) == len(result.acknowledged)  # one log line per callback
    setup.check_no_token()


@pytest.mark.slow
@BACKENDS
def test_kill_9_in_the_middle_loses_nothing_it_acknowledged(
    kind: str, make_setup: Any, flood_tasks: list[Task]
) -> None:
    setup = make_setup(kind, [entry_of(task) for task in flood_tasks])
    receiver = setup.receiver()
    bodies = flood_bodies(flood_tasks)
    result = FloodResult()
    failures: list[BaseException] = []

    def post_all() -> None:
        try:
            flood(receiver, bodies, result=result, retry_lost=False)
        except BaseException as error:
            failures.append(error)

    poster = threading.Thread(target=post_all)
    poster.start()
    # Once a quarter is acknowledged, kill -9 while the clients are still posting.
    while len(result.acknowledged) < CALLBACKS // 4 and poster.is_alive():
        time.sleep(0.002)
    receiver.kill()
    poster.join()
    assert not failures, failures
    acknowledged = {parse_body(body).id for body in result.acknowledged}
    assert CALLBACKS // 4 <= len(acknowledged) < CALLBACKS, "killed too late to test anything"
    assert result.lost > 0  # some clients were cut off mid-request

    # Every callback it answered 200 to is there after the kill, once.
    ids = stored_ids(load(setup.location))
    assert acknowledged <= set(ids)
    assert len(ids) == len(set(ids))

    # Restarted, it takes the rest (JD Cloud retries what got no 200): all there, each once.
    restarted = setup.receiver()
    rest = [body for body in bodies if parse_body(body).id not in acknowledged]
    assert len(flood(restarted, rest).acknowledged) == len(rest)
    final = stored_ids(load(setup.location))
    assert sorted(final) == sorted(parse_body(body).id for body in bodies)
    assert restarted.stop() == 0
    setup.check_no_token()


# --- the database away, and back ----------------------------------------------------------------


@pytest.mark.slow
def test_the_database_unreachable_is_503_and_recovers_without_a_restart(
    tmp_path: Path, minimal: Task
) -> None:
    server = PostgresServer().start()  # its own: this test stops it
    try:
        location = new_state(server.create_database(), [entry_of(minimal, CORPUS_ID)])
        setup = Setup("database", location, tmp_path)
        receiver = setup.receiver()
        try:
            first = (CORPUS / "matched" / "documented.json").read_bytes()
            second = (CORPUS / "matched" / "vod-task-id.json").read_bytes()
            assert post(receiver, first).status == 200

            server.stop()
            for _ in range(3):  # every attempt while it is away, not only the first
                answer = post(receiver, second)
                setup.answers.append(answer.body)
                assert answer.status == 503, answer
                assert answer.headers.get("retry-after", "").strip().isdigit(), answer.headers
            assert receiver.running

            server.start()
            for _ in range(200):  # the first call after it is back may find a dead session
                answer = post(receiver, second)
                if answer.status != 503:
                    break
                time.sleep(0.05)
            assert answer.status == 200 and answer.json()["matched"] is True, answer
            assert receiver.running  # the same process: recovered by itself
            ids = stored_ids(load(location))
            assert ids == [parse_body(first).id, parse_body(second).id]
            outcomes = [log.get("outcome") for log in receiver.logs() if "outcome" in log]
            assert "unavailable" in outcomes
            assert receiver.stop() == 0
            setup.check_no_token()
        finally:
            receiver.kill()
    finally:
        server.close()
