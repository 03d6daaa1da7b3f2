"""reconciler receive (reconciler/receiver.py): the callback receiver, run as the real command.

Every test starts `reconciler receive` as a process on 127.0.0.1 and a free port (read from
its "listening" line), talks to it over real sockets, and reads the outcome back through the
state API: a file state, and a database state on the suite's real PostgreSQL server (or a
server of the test's own where the test stops it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from reconciler.callbacks import parse_callback
from reconciler.receiver import MAX_BODY_BYTES, token_problem
from reconciler.state import StateEntry, StateStore, TaskStatus, open_state
from reconciler.tasks import Task
from tests.test_state_evidence import callback_for, entry_of

TOKEN = "test-token_0123456789abcdef"
START_TIMEOUT = 60.0  # seconds: a loaded 2-core machine imports slowly
ANSWER_TIMEOUT = 60.0


class Receiver:
    """One `reconciler receive` process; its stderr lines collected as they come."""

    def __init__(
        self, state: str, *extra: str, env: dict[str, str] | None = None, token: str = TOKEN
    ) -> None:
        environment = {**os.environ, "RECONCILER_CALLBACK_TOKEN": token, **(env or {})}
        environment.pop("RECONCILER_STATE", None)
        self.token = token
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "receive",
                "--state",
                state,
                "--port",
                "0",
                *list(extra),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_for("listening", START_TIMEOUT)
        url = urlsplit(listening["url"])
        assert url.scheme == "http" and url.hostname == "127.0.0.1"
        self.host, self.port = url.hostname, int(url.port or 0)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for(self, event: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        """The next log line of `event` (every line must be JSON)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no {event!r} line within {timeout} s; stderr so far:\n{''.join(self.stderr)}"
                ) from None
            document = json.loads(line)
            if document["event"] == event:
                return document  # type: ignore[no-any-return]

    def events(self, event: str = "callback") -> list[dict[str, Any]]:
        return [d for d in map(json.loads, list(self.stderr)) if d["event"] == event]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=ANSWER_TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            answer = json.loads(raw) if raw else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()

    def post(self, body: bytes | dict[str, Any], token: str | None = None) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        status, _, answer = self.request("POST", f"/callbacks/{token or self.token}", raw)
        return status, answer

    def raw(self, data: bytes) -> tuple[int, dict[str, str], Any]:
        """Send `data` as it is on a new connection; the answer (read until it is complete)."""
        with socket.create_connection((self.host, self.port), timeout=ANSWER_TIMEOUT) as sock:
            sock.sendall(data)
            response = http.client.HTTPResponse(sock)
            response.begin()
            raw = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, json.loads(raw) if raw else None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()
        self._reader.join(timeout=10)
        return code

    def output(self) -> str:
        return self.stdout.decode("utf-8", "replace") + "".join(self.stderr)


@pytest.fixture(params=["file", "database"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A created, empty state of each kind."""
    if request.param == "file":
        where = str(tmp_path / "state.json")
    else:
        where = request.getfixturevalue("postgres_database")
    with open_state(where) as store:
        store.create()
    return where


def with_task(where: str, task: Task, status: TaskStatus = TaskStatus.SUBMITTED) -> StateEntry:
    entry = entry_of(task, status)
    with open_state(where) as store, store.lock():
        store.claim([entry])
    return entry


def loaded(where: str) -> Any:
    with open_state(where) as store:
        return store.load()


# --- callbacks stored ---------------------------------------------------------------------------


def test_a_matched_callback_is_in_the_state_once_it_is_answered_200(
    location: str, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    task = make_task(1, recordFileType="mp4")
    with_task(location, task, TaskStatus.PENDING)
    receiver = receiver_factory(location)
    body = callback_for(task, "mp4")

    assert receiver.post(body) == (200, {"ok": True, "matched": True, "duplicate": False})
    # Answered: durable, so visible to any reader at once.
    state = loaded(location)
    assert [r.format for r in state.recordings_of(task.hash)] == ["mp4"]
    summary = state.recording(task.hash)
    assert summary is not None and summary.settled  # a pending task settled by its callback

    assert receiver.post(body) == (200, {"ok": True, "matched": True, "duplicate": True})
    assert len(loaded(location).recordings_of(task.hash)) == 1

    assert receiver.stop() == 0
    matched, duplicate = receiver.events()
    assert matched["outcome"] == "matched" and duplicate["outcome"] == "duplicate"
    assert matched["task"] == task.name and matched["hash"] == task.hash[:12]
    assert matched["format"] == "mp4" and matched["status"] == "success"
    assert matched["http"] == 200 and matched["client"].startswith("127.0.0.1:")
    stopped = receiver.events("stopped")[0]
    assert stopped["callbacks"] == {"duplicate": 1, "matched": 1}


def test_an_unmatched_callback_is_kept_with_its_reason(
    location: str, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    task = make_task(1)
    with_task(location, task)
    receiver = receiver_factory(location)
    stranger = callback_for(make_task(2), taskExternalId="rc-" + "0" * 32)

    assert receiver.post(stranger) == (200, {"ok": True, "matched": False, "duplicate": False})
    assert receiver.post(stranger) == (200, {"ok": True, "matched": False, "duplicate": True})
    (kept,) = loaded(location).unmatched
    assert kept.id == parse_callback(stranger).id and kept.body == stranger
    assert "taskExternalId 'rc-0000" in kept.reason
    assert loaded(location).recordings_of(task.hash) == ()
    receiver.stop()
    unmatched = receiver.events()[0]
    assert unmatched["outcome"] == "unmatched" and unmatched["reason"] == kept.reason
    assert "task" not in unmatched


def test_text_from_a_callback_is_escaped_in_the_log(
    tmp_path: Path, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)
    body = callback_for(make_task(1), format='mp4\n{"event": "forged"}\x1b[2J')
    assert receiver.post(body)[0] == 200
    receiver.stop()
    for line in receiver.stderr:
        assert line.endswith("\n") and line.count("\n") == 1 and "\x1b" not in line
        json.loads(line)
    assert not receiver.events("forged")


def test_apply_against_the_sandbox_then_its_callbacks_make_the_task_recorded(
    location: str,
    receiver_factory: Callable[..., Receiver],
    sandbox_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The whole flow: apply submits to the sandbox, which records and posts the callback to
    the receiver (while apply may still hold a file state's lock: a 503 the sandbox retries)."""
    receiver = receiver_factory(location)
    notify = f"http://{receiver.host}:{receiver.port}/callbacks/{TOKEN}"
    box = sandbox_factory(record_after=0.0, notify_url=notify, callback_backoff=0.2)
    manifests = Path(__file__).parent / "fixtures" / "valid" / "minimal.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env.update(
        JDCLOUD_ACCESS_KEY=box.credentials.access_key,
        JDCLOUD_SECRET_KEY=box.credentials.secret_key,
        NO_COLOR="1",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "apply",
            str(manifests),
            "--state",
            location,
            "--endpoint",
            box.url,
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    matched = receiver.wait_for("callback")
    while matched["outcome"] != "matched":
        assert matched["outcome"] == "unavailable", matched  # the lock, while apply held it
        matched = receiver.wait_for("callback")
    assert matched["task"] == "minimal" and matched["format"] == "mp4"
    (entry,) = loaded(location).entries.values()
    summary = loaded(location).recording(entry.hash)
    assert summary is not None and summary.words == "recorded"
    assert receiver.stop() == 0


def test_two_receivers_on_one_database_store_a_callback_once(
    postgres_database: str, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    with open_state(postgres_database) as store:
        store.create()
    task = make_task(1)
    with_task(postgres_database, task)
    first, second = receiver_factory(postgres_database), receiver_factory(postgres_database)
    body = callback_for(task)
    answers: list[tuple[int, Any]] = []
    posters = [
        threading.Thread(target=lambda r=r: answers.append(r.post(body)))
        for r in (first, second, first, second)
    ]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join(timeout=ANSWER_TIMEOUT)
    assert sorted(a[1]["duplicate"] for a in answers) == [False, True, True, True]
    assert {a[0] for a in answers} == {200}
    assert len(loaded(postgres_database).recordings_of(task.hash)) == 1
    assert first.stop() == 0 and second.stop() == 0


# --- refused ------------------------------------------------------------------------------------


def test_a_wrong_token_is_a_404_like_any_unknown_path_and_the_token_is_never_shown(
    location: str, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    task = make_task(1)
    with_task(location, task)
    receiver = receiver_factory(location)
    body = json.dumps(callback_for(task)).encode()
    unknown = receiver.request("POST", "/nothing-here", body)
    assert unknown[0] == 404
    for path in (
        f"/callbacks/{TOKEN[:-1]}",
        f"/callbacks/{TOKEN}x",
        f"/callbacks/{TOKEN.upper()}",
        "/callbacks/",
        "/callbacks",
        f"/callbacks/{TOKEN}/",
        f"/{TOKEN}",
    ):
        status, headers, answer = receiver.request("POST", path, body)
        assert (status, answer) == (404, unknown[2]), path
        assert TOKEN not in json.dumps(answer) and "allow" not in headers
    assert receiver.request("GET", f"/callbacks/{TOKEN[:-1]}")[0] == 404
    assert loaded(location).recordings_of(task.hash) == ()
    assert loaded(location).unmatched == ()
    # The right one, as a proof that the wrong ones were refused for their token alone.
    assert receiver.post(callback_for(task))[0] == 200
    assert receiver.stop() == 0
    output = receiver.output()
    assert TOKEN not in output and TOKEN[:-1] not in output and TOKEN.upper() not in output
    rejected = [e for e in receiver.events() if e["outcome"] == "rejected"]
    assert rejected and {e["http"] for e in rejected} == {404}


def test_other_methods_are_405_with_allow_and_healthz_answers(
    tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        status, headers, _ = receiver.request(method, f"/callbacks/{TOKEN}")
        assert (status, headers["allow"]) == (405, "POST"), method
    status, headers, _ = receiver.request("POST", "/healthz", b"{}")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert receiver.request("GET", "/healthz")[::2] == (200, {"ok": True})
    assert receiver.request("HEAD", "/healthz")[0] == 200
    assert receiver.request("GET", "/")[0] == 404
    assert receiver.request("GET", "/healthz/x")[0] == 404
    assert receiver.stop() == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not JSON"),
        (b'{"event": "record_done", "status": "succ', "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "array"),
        (b"42", "number"),
        (b'"text"', "string"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "deeply"),
        (b'{"event": "record_done", "format": "\xff\xfe"}', "not UTF-8"),
        (b'{"event": "record_done", "format": "\\ud800"}', "surrogate"),
        (b'{"duration": NaN}', "not JSON"),
    ],
    ids=[
        "garbage",
        "truncated",
        "empty",
        "list",
        "number",
        "string",
        "too-deep",
        "invalid-utf8",
        "lone-surrogate",
        "nan",
    ],
)
def test_a_body_that_is_not_a_json_object_is_400_and_nothing_is_stored(
    tmp_path: Path, receiver_factory: Callable[..., Receiver], body: bytes, says: str
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)
    status, answer = receiver.post(body)
    assert status == 400 and answer["ok"] is False and says in answer["error"]
    assert len(json.dumps(answer)) < 300
    state = loaded(where)
    assert state.unmatched == () and state.recordings == {}
    assert receiver.stop() == 0
    (rejected,) = receiver.events()
    assert rejected["outcome"] == "rejected" and rejected["http"] == 400


def test_a_body_over_64_kib_is_413_by_length_before_it_is_sent_and_chunked_past_the_limit(
    tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)
    head = f"POST /callbacks/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
    # Only the headers go: the answer comes without the body ever being read.
    declared = f"{head}Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    status, headers, answer = receiver.raw(declared)
    assert status == 413 and headers["connection"] == "close" and "64 KiB" in answer["error"]
    # Chunked: refused once the chunks pass the limit (the last chunk never comes).
    chunk = b"x" * 4096
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(16)) + b"1\r\nx\r\n"
    status, _, _ = receiver.raw(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks)
    assert status == 413
    # Exactly the limit is read (and, not being JSON, refused as such).
    status, _ = receiver.post(b" " * (MAX_BODY_BYTES - 2) + b"[]")
    assert status == 400
    assert loaded(where).unmatched == ()
    assert receiver.stop() == 0
    assert [e["http"] for e in receiver.events()] == [413, 413, 400]


def test_a_body_that_does_not_arrive_in_time_is_408_and_nothing_is_stored(
    tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)
    head = f"POST /callbacks/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, headers, answer = receiver.raw(head.encode() + b'{"event": "record_done"')
    assert status == 408 and headers["connection"] == "close" and answer["ok"] is False
    assert loaded(where).unmatched == ()
    assert receiver.stop() == 0
    assert [e["http"] for e in receiver.events()] == [408]


# --- start-up -----------------------------------------------------------------------------------


def run_receive(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ}
    for key, value in env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "receive", "--port", "0", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (None, "is not set"),
        ("", "empty"),
        ("short-secret", "is 12 characters long"),
        ("a secret with spaces in it", "URL path segment"),
        ("sixteen-chars/and-a-slash", "URL path segment"),
        ("tokenwith%2Fescape-inside", "URL path segment"),
        ("ünïcödé-tökén-0123456789", "URL path segment"),
    ],
)
def test_a_missing_or_unusable_token_refuses_to_start(
    tmp_path: Path, token: str | None, says: str
) -> None:
    where = tmp_path / "state.json"
    StateStore(where).create()
    result = run_receive("--state", str(where), env={"RECONCILER_CALLBACK_TOKEN": token})
    assert result.returncode == 2, result.stderr
    assert "RECONCILER_CALLBACK_TOKEN" in result.stderr and says in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    if token:
        assert token not in result.stderr
    assert token_problem(TOKEN) is None


def test_a_state_that_does_not_exist_is_refused_as_apply_refuses_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    result = run_receive("--state", str(missing), env={"RECONCILER_CALLBACK_TOKEN": TOKEN})
    assert result.returncode == 1
    assert f"error: there is no state at {missing}" in result.stderr
    assert (
        "Either this is the wrong directory" in result.stderr and "reconciler init" in result.stderr
    )
    assert not missing.exists() and not Path(f"{missing}.lock").exists()
    assert TOKEN not in result.stderr + result.stdout


def test_a_port_in_use_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    where = tmp_path / "state.json"
    StateStore(where).create()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "receive", "--state", str(where), "--port", port],
            capture_output=True,
            text=True,
            env={**os.environ, "RECONCILER_CALLBACK_TOKEN": TOKEN},
            timeout=120,
            check=False,
        )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["event"] == "error" and "cannot listen" in line


# --- the state unavailable, and back --------------------------------------------------------------


def test_a_file_state_locked_past_the_lock_timeout_is_503_then_200_once_released(
    tmp_path: Path, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    where = tmp_path / "state.json"
    task = make_task(1)
    StateStore(where).create()
    with_task(str(where), task)
    receiver = receiver_factory(str(where), "--lock-timeout", "0.2")
    held = StateStore(where, lock_timeout=5)  # this test process is the other applier
    with held.lock():
        status, headers, answer = receiver.request(
            "POST", f"/callbacks/{TOKEN}", json.dumps(callback_for(task)).encode()
        )
        assert status == 503 and int(headers["retry-after"]) > 0 and answer["ok"] is False
        assert loaded(str(where)).recordings_of(task.hash) == ()
    assert receiver.post(callback_for(task)) == (
        200,
        {"ok": True, "matched": True, "duplicate": False},
    )
    assert len(loaded(str(where)).recordings_of(task.hash)) == 1
    assert receiver.stop() == 0
    unavailable, matched = receiver.events()
    assert unavailable["outcome"] == "unavailable" and "locked" in unavailable["reason"]
    assert matched["outcome"] == "matched"


def test_database_sessions_ended_under_the_receiver_are_replaced_without_a_503(
    postgres_server: Any, receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    where = postgres_server.create_database()
    with open_state(where) as store:
        store.create()
    tasks = [make_task(n) for n in range(3)]
    for task in tasks:
        with_task(where, task)
    receiver = receiver_factory(where, "--workers", "1")
    assert receiver.post(callback_for(tasks[0]))[0] == 200
    database = urlsplit(where).path.lstrip("/")
    assert postgres_server.terminate_backends(database) >= 1
    assert receiver.post(callback_for(tasks[1]))[0] == 200
    assert receiver.stop() == 0
    assert all(len(loaded(where).recordings_of(t.hash)) == (t is not tasks[2]) for t in tasks)


@pytest.mark.slow
def test_a_database_stopped_is_503_and_started_again_is_200_without_a_restart(
    receiver_factory: Callable[..., Receiver], make_task: Any
) -> None:
    from tests.postgres_server import start_server

    server = start_server()  # its own: stopping the suite's would fail other tests
    try:
        where = server.create_database()
        with open_state(where) as store:
            store.create()
        tasks = [make_task(n) for n in range(3)]
        for task in tasks:
            with_task(where, task)
        receiver = receiver_factory(where, "--workers", "2")
        assert receiver.post(callback_for(tasks[0]))[0] == 200
        server.stop()
        status, headers, answer = receiver.request(
            "POST", f"/callbacks/{TOKEN}", json.dumps(callback_for(tasks[1])).encode()
        )
        assert status == 503 and "retry-after" in headers and answer["ok"] is False
        assert receiver.request("GET", "/healthz")[0] == 200  # still serving
        server.start()
        assert receiver.post(callback_for(tasks[1])) == (
            200,
            {"ok": True, "matched": True, "duplicate": False},
        )
        assert receiver.post(callback_for(tasks[2]))[0] == 200
        assert receiver.process.poll() is None
        assert receiver.stop() == 0
        state = loaded(where)
        assert all(len(state.recordings_of(t.hash)) == 1 for t in tasks)
        outcomes = [e["outcome"] for e in receiver.events()]
        assert outcomes == ["matched", "unavailable", "matched", "matched"]
        assert server.password not in receiver.output()
    finally:
        server.close()


# --- stopping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_callback_in_progress_then_exits_0(
    postgres_server: Any,
    receiver_factory: Callable[..., Receiver],
    make_task: Any,
    signum: int,
) -> None:
    where = postgres_server.create_database()
    with open_state(where) as store:
        store.create()
    task = make_task(1)
    with_task(where, task)
    receiver = receiver_factory(where)
    database = urlsplit(where).path.lstrip("/")
    answers: list[tuple[int, Any]] = []
    with _table_locked(postgres_server, database) as blocked:
        poster = threading.Thread(target=lambda: answers.append(receiver.post(callback_for(task))))
        poster.start()
        blocked()  # the receiver's transaction waits on our lock: the callback is in progress
        receiver.process.send_signal(signum)
        assert receiver.wait_for("stopping")["inFlight"] == 1
        # Past uvicorn's first pause in its shutdown: a receiver that gave up on callbacks in
        # progress would have by now. New connections are refused already.
        time.sleep(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((receiver.host, receiver.port), timeout=ANSWER_TIMEOUT)
        assert receiver.process.poll() is None and answers == []
    poster.join(timeout=ANSWER_TIMEOUT)
    assert answers == [(200, {"ok": True, "matched": True, "duplicate": False})]
    assert receiver.stop() == 0
    assert len(loaded(where).recordings_of(task.hash)) == 1
    assert receiver.events("stopped")[0]["callbacks"] == {"matched": 1}
    assert "Interrupted" not in receiver.output()


@contextlib.contextmanager
def _table_locked(server: Any, database: str) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on the state's task table; yields a function that returns once
    another session waits for it."""
    import psycopg

    with psycopg.connect(server.uri(database)) as holder:
        holder.execute("LOCK TABLE reconciler.tasks IN ACCESS EXCLUSIVE MODE")

        def blocked() -> None:
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while time.monotonic() < deadline:
                rows = server.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE NOT l.granted AND a.datname = %s AND a.application_name = 'reconciler'",
                    database,
                    [database],
                )
                if rows[0][0]:
                    return
                time.sleep(0.05)
            raise AssertionError("the receiver never waited for the table")

        yield blocked
        holder.rollback()


def test_a_connection_that_sends_no_whole_request_in_time_is_closed(
    tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    where = str(tmp_path / "state.json")
    StateStore(Path(where)).create()
    receiver = receiver_factory(where)

    def connect() -> socket.socket:
        return socket.create_connection((receiver.host, receiver.port), timeout=60)

    with connect() as silent, connect() as trickling, connect() as answered:
        answered.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(answered)
        response.begin()
        assert (response.status, response.read()) == (200, b'{"ok": true}\n')
        trickling.sendall(f"POST /callbacks/{TOKEN} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        for _ in range(600):  # a byte every 0.1 s: each one would restart uvicorn's own timer
            if select.select([trickling], [], [], 0)[0]:
                break  # closed by the receiver
            with contextlib.suppress(OSError):
                trickling.sendall(b"a")
            time.sleep(0.1)
        for sock in (silent, trickling, answered):
            assert _until_closed(sock) == b""  # closed by the receiver, with no answer
    assert receiver.request("GET", "/healthz")[0] == 200
    assert receiver.stop() == 0
    assert receiver.events() == []


def _until_closed(sock: socket.socket) -> bytes:
    """What the peer sends until it closes the connection (a reset counts as closed)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received
