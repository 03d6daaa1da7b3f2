"""The sandbox writes the files (DESIGN §7a, §7b): each recorded format's object put into the
task's saveBucket on a real S3 server (SeaweedFS, tests/seaweed_server.py) before its callback,
over real loopback sockets; callbacks collected by the recorder tests' receiver."""

from __future__ import annotations

import contextlib
import copy
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from reconciler.client import LiveClient
from reconciler.sandbox import (
    RECORDINGS_PATH,
    Sandbox,
    SandboxConfig,
    StorageUnavailable,
    banner,
    record_key,
    recording_content,
    serve,
)
from reconciler.signing import Credentials
from tests.test_sandbox import ROOT, pump, read_banner
from tests.test_sandbox_recorder import (
    PATH_KEYS,
    RECORDER_THREAD,
    Receiver,
    add_task,
    settle,
)

if TYPE_CHECKING:
    from tests.seaweed_server import SeaweedServer

DEFAULT_KEY = "record/20261120/sandbox01/live/match/20261120190000_20261120190500"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def bucket(seaweed_server: SeaweedServer) -> Iterator[str]:
    """A new, empty bucket of this test's own on the session's S3 server, removed after."""
    with own_bucket(seaweed_server, "clips-" + secrets.token_hex(6), create=True) as name:
        yield name


@contextlib.contextmanager
def own_bucket(server: SeaweedServer, name: str, *, create: bool) -> Iterator[str]:
    """`name` (created first when `create`), then removed with what is in it: SeaweedFS gives
    each bucket volumes of its own, and the test server has few, shared by the session."""
    if create:
        server.bucket(name)
    try:
        yield name
    finally:
        client = server.client()
        if client.bucket_exists(name):
            for item in client.list_objects(name, recursive=True):
                client.remove_object(name, item.object_name)
            client.remove_bucket(name)


@pytest.fixture
def spec(base_spec: dict[str, Any], bucket: str) -> dict[str, Any]:
    # base_spec: push.example.com/live/match, 2026-11-20T19:00:00Z to 19:05:00Z, mp4.
    return {**copy.deepcopy(base_spec), "saveBucket": bucket, "taskExternalId": "goal-1"}


@pytest.fixture
def recorder(seaweed_server: SeaweedServer, receiver: Receiver) -> Iterator[Callable[..., Sandbox]]:
    """recorder(**SandboxConfig options) -> a started sandbox that records at once, writing into
    the S3 server with its admin's keys and posting to `receiver`; stopped at the end."""
    started: list[Sandbox] = []

    def start(**options: Any) -> Sandbox:
        options = {
            "record_after": 0.0,
            "notify_url": receiver.url(),
            "callback_backoff": 0.0,
            "storage_endpoint": seaweed_server.endpoint,
            "storage_access_key": seaweed_server.admin.access_key,
            "storage_secret_key": seaweed_server.admin.secret_key,
            **options,
        }
        sandbox = Sandbox(SandboxConfig(**options)).start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


def objects(server: SeaweedServer, bucket: str) -> dict[str, bytes]:
    """Every object in `bucket`: key -> its bytes."""
    client = server.client()
    found = {}
    for item in client.list_objects(bucket, recursive=True):
        response = client.get_object(bucket, item.object_name)
        try:
            found[item.object_name] = response.read()
        finally:
            response.close()
            response.release_conn()
    return found


def object_of(url: str, endpoint: str) -> tuple[str, str]:
    """(bucket, key) of a path-style object URL at `endpoint`."""
    assert url.startswith(endpoint + "/"), url
    bucket, _, key = urlsplit(url).path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def request_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, **{key: spec[key] for key in PATH_KEYS}}


# --- where the files go -------------------------------------------------------------------------


def test_the_file_is_written_at_the_default_key_before_its_callback(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    sandbox = recorder()
    request_id = add_task(sandbox, spec)
    document = settle(sandbox)

    key = f"{DEFAULT_KEY}.mp4"
    stored = objects(seaweed_server, bucket)
    assert stored == {key: recording_content(request_of(spec), "mp4", key)}
    assert key == record_key(request_of(spec), "mp4")
    # The callback names the object where it is: the storage endpoint, path-style.
    [body] = receiver.bodies()
    assert body["status"] == "success"
    assert body["downloadUrl"] == f"{seaweed_server.endpoint}/{bucket}/{key}"
    assert object_of(body["downloadUrl"], seaweed_server.endpoint) == (bucket, key)
    assert int(body["fileSize"]) == len(stored[key])
    [recording] = document["recordings"]
    assert recording["requestId"] == request_id
    assert (recording["storage"], recording["storageResult"]) == ("written", "written")
    assert recording["downloadUrl"] == body["downloadUrl"]
    counts = sandbox.counts()
    assert (counts.objects_written, counts.objects_failed, counts.buckets_created) == (1, 0, 0)
    served = requests.get(sandbox.url + RECORDINGS_PATH, timeout=10).json()
    assert served["counts"]["objectsWritten"] == 1
    assert served["counts"]["objectsFailed"] == 0


def test_the_object_is_there_when_its_callback_arrives(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    """Written BEFORE the callback: a receiver that looks at once finds it."""
    receiver.hold.set()  # the post waits, so the test can look while it is in flight
    sandbox = recorder()
    add_task(sandbox, spec)
    assert receiver.holding.wait(timeout=30)
    assert list(objects(seaweed_server, bucket)) == [f"{DEFAULT_KEY}.mp4"]
    receiver.hold.clear()
    settle(sandbox)
    assert len(receiver.bodies()) == 1


@pytest.mark.parametrize(
    ("template", "file_types", "expected"),
    [
        (None, "MP4;flv;ts", [f"{DEFAULT_KEY}.{fmt}" for fmt in ("flv", "mp4", "ts")]),
        (
            "clips/{AppName}/{StreamName}-{StartTime}-{EndTime}.{format}",
            "flv;mp4",
            [f"clips/live/match-20261120190000-20261120190500.{fmt}" for fmt in ("flv", "mp4")],
        ),
        ("goals/{Date}/{StreamName}/first", "mp4", ["goals/20261120/match/first"]),
        (
            "goals/{Date}/{StreamName}/first",
            "mp4;flv",
            ["goals/20261120/match/first.flv", "goals/20261120/match/first.mp4"],
        ),
        ("/leading/{StreamName}.{format}", "mp4", ["leading/match.mp4"]),
        ("fixed/name.mp4", "mp4", ["fixed/name.mp4"]),
    ],
    ids=[
        "default-three-formats",
        "custom-with-format",
        "custom-without-format",
        "without-format-two-formats",
        "leading-slash",
        "no-placeholder",
    ],
)
def test_objects_are_at_the_keys_the_template_gives(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
    template: str | None,
    file_types: str,
    expected: list[str],
) -> None:
    spec = {**spec, "recordFileType": file_types}
    if template is not None:
        spec["saveObject"] = template
    sandbox = recorder()
    add_task(sandbox, spec)
    document = settle(sandbox)

    stored = objects(seaweed_server, bucket)
    assert sorted(stored) == expected  # those keys, and nothing else
    for recording in document["recordings"]:
        key, fmt = recording["key"], recording["format"]
        assert stored[key] == recording_content(request_of(spec), fmt, key)
    urls = sorted(body["downloadUrl"] for body in receiver.bodies())
    assert [object_of(url, seaweed_server.endpoint) for url in urls] == [
        (bucket, key) for key in expected
    ]
    assert sandbox.counts().objects_written == len(expected)


def test_a_key_with_spaces_and_unicode_round_trips(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    spec = {**spec, "saveObject": "决赛 final/{StreamName} #1+2.{format}"}
    sandbox = recorder()
    add_task(sandbox, spec)
    settle(sandbox)
    assert list(objects(seaweed_server, bucket)) == ["决赛 final/match #1+2.mp4"]
    [body] = receiver.bodies()
    assert object_of(body["downloadUrl"], seaweed_server.endpoint) == (
        bucket,
        "决赛 final/match #1+2.mp4",
    )
    assert " " not in body["downloadUrl"] and "#" not in body["downloadUrl"]


# --- what is not written ------------------------------------------------------------------------


def test_the_record_fail_rate_writes_nothing(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    sandbox = recorder(record_fail_rate=1.0)
    for stream in ("a", "b", "c"):
        add_task(sandbox, {**spec, "streamName": stream, "recordFileType": "mp4;flv"})
    document = settle(sandbox)

    assert objects(seaweed_server, bucket) == {}
    assert receiver.posts == [] and document["recordings"] == []
    counts = sandbox.counts()
    assert (counts.record_failed, counts.objects_written, counts.objects_failed) == (3, 0, 0)


def test_the_fail_status_fault_writes_nothing(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    sandbox = recorder(callback_fail_status=1.0)
    add_task(sandbox, spec)
    document = settle(sandbox)

    assert objects(seaweed_server, bucket) == {}
    [body] = receiver.bodies()
    assert body["status"] == "failed"
    assert document["recordings"][0]["storage"] == "not written"
    assert (sandbox.counts().objects_written, sandbox.counts().objects_failed) == (0, 0)


def test_some_tasks_fail_and_only_the_others_are_written(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    sandbox = recorder(record_fail_rate=0.5, seed=4)
    streams = [f"match-{n}" for n in range(12)]
    ids = {add_task(sandbox, {**spec, "streamName": stream}): stream for stream in streams}
    document = settle(sandbox)

    never = {ids[entry["requestId"]] for entry in document["notRecorded"]}
    assert 0 < len(never) < len(streams)  # the seed fails some, not all
    written = {key.split("/")[4] for key in objects(seaweed_server, bucket)}
    assert written == set(streams) - never
    assert {body["streamName"] for body in receiver.bodies()} == written


# --- faults of the storage itself ---------------------------------------------------------------


def test_a_bucket_that_does_not_exist_is_a_counted_failure(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    spec: dict[str, Any],
) -> None:
    missing = "nowhere-" + secrets.token_hex(6)
    sandbox = recorder()
    add_task(sandbox, {**spec, "saveBucket": missing})
    document = settle(sandbox)

    assert not seaweed_server.client().bucket_exists(missing)  # never created
    [recording] = document["recordings"]
    assert recording["storage"] == "failed"
    assert "NoSuchBucket" in recording["storageResult"]
    assert recording["status"] == "failed"
    # The service could not write the file: its callback says so.
    [body] = receiver.bodies()
    assert (body["status"], body["fileSize"]) == ("failed", "0")
    counts = sandbox.counts()
    assert (counts.objects_written, counts.objects_failed, counts.buckets_created) == (0, 1, 0)


def test_create_buckets_makes_a_missing_bucket_once(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    spec: dict[str, Any],
) -> None:
    missing = "made-" + secrets.token_hex(6)
    sandbox = recorder(storage_create_buckets=True)
    with own_bucket(seaweed_server, missing, create=False):
        for stream in ("a", "b", "c", "d"):
            add_task(sandbox, {**spec, "saveBucket": missing, "streamName": stream})
        settle(sandbox)
        stored = objects(seaweed_server, missing)
    assert sorted(key.split("/")[4] for key in stored) == ["a", "b", "c", "d"]
    counts = sandbox.counts()
    assert (counts.objects_written, counts.objects_failed, counts.buckets_created) == (4, 0, 1)
    assert {body["status"] for body in receiver.bodies()} == {"success"}


@pytest.mark.parametrize("who", ["unknown-key", "wrong-secret", "read-only"])
def test_refused_credentials_are_a_counted_failure_and_never_shown(
    recorder: Callable[..., Sandbox],
    receiver: Receiver,
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
    who: str,
) -> None:
    keys = {
        "unknown-key": ("nobody-" + secrets.token_hex(4), "a-secret-nobody-has"),
        "wrong-secret": (seaweed_server.admin.access_key, "a-secret-nobody-has"),
        "read-only": (seaweed_server.reader.access_key, seaweed_server.reader.secret_key),
    }[who]
    sandbox = recorder(storage_access_key=keys[0], storage_secret_key=keys[1])
    add_task(sandbox, spec)
    document = settle(sandbox)

    assert objects(seaweed_server, bucket) == {}
    [recording] = document["recordings"]
    assert recording["storage"] == "failed"
    assert re.search(r"answered \w+ \(HTTP 40[0-9]\)", recording["storageResult"])
    assert sandbox.counts().objects_failed == 1
    served = requests.get(sandbox.url + RECORDINGS_PATH, timeout=10).text
    assert keys[1] not in served and keys[1] not in repr(sandbox.config)
    assert [body["status"] for body in receiver.bodies()] == ["failed"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_storage_endpoint_does_not_break_the_sandbox(
    recorder: Callable[..., Sandbox], receiver: Receiver, spec: dict[str, Any]
) -> None:
    before = set(threading.enumerate())
    sandbox = recorder(storage_endpoint=f"http://127.0.0.1:{free_port()}")
    first = add_task(sandbox, spec)
    document = settle(sandbox)

    [recording] = document["recordings"]
    assert recording["requestId"] == first
    assert recording["storage"] == "failed"
    assert recording["storageResult"].startswith("cannot connect to the storage endpoint")
    assert [body["status"] for body in receiver.bodies()] == ["failed"]
    # The API and the recorder go on: another task is accepted and recorded (failed) too.
    add_task(sandbox, {**spec, "streamName": "other"})
    settle(sandbox)
    counts = sandbox.counts()
    assert (counts.accepted, counts.recorded, counts.objects_failed) == (2, 2, 2)
    assert counts.callbacks_sent == 2

    sandbox.stop()
    assert_no_new_threads(before)


def assert_no_new_threads(before: set[threading.Thread]) -> None:
    """No thread is left beyond `before`. The recorder's are joined by stop(); a connection's
    handler may still be returning from its last read, so it gets a moment (a guard against a
    hang, not a measurement)."""
    assert [t for t in threading.enumerate() if t.name.startswith(RECORDER_THREAD)] == []
    deadline = time.monotonic() + 10
    while not set(threading.enumerate()) <= before:
        assert time.monotonic() < deadline, set(threading.enumerate()) - before
        time.sleep(0.01)


def test_stop_leaves_no_threads(
    recorder: Callable[..., Sandbox],
    seaweed_server: SeaweedServer,
    bucket: str,
    spec: dict[str, Any],
) -> None:
    before = set(threading.enumerate())
    sandbox = recorder()
    for stream in ("a", "b"):
        add_task(sandbox, {**spec, "streamName": stream, "recordFileType": "mp4;flv;ts"})
    settle(sandbox)
    add_task(sandbox, {**spec, "streamName": "later"})  # still to record when it stops
    assert len(objects(seaweed_server, bucket)) >= 6

    sandbox.stop()

    assert_no_new_threads(before)
    assert sandbox.counts().recorder_pending == 0


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"storage_endpoint": "ftp://127.0.0.1:9"}, "http(s)://host[:port]"),
        ({"storage_endpoint": "http://127.0.0.1:9/bucket"}, "without a path"),
        ({"storage_endpoint": "http://user:pw@127.0.0.1:9"}, "must not carry credentials"),
        ({"storage_endpoint": "http://127.0.0.1:99999"}, "not a usable URL"),
        ({"storage_endpoint": "http://"}, "http(s)://host[:port]"),
        ({"storage_access_key": "ak"}, "give both or neither"),
        ({"storage_secret_key": "the-storage-secret"}, "give both or neither"),
        (
            {"storage_endpoint": None, "storage_create_buckets": True},
            "(storage create buckets) need storage_endpoint",
        ),
        (
            {"record_after": None, "storage_endpoint": "http://127.0.0.1:9"},
            "(storage endpoint) need record_after",
        ),
    ],
)
def test_bad_storage_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    config = SandboxConfig(record_after=1.0, storage_endpoint="http://127.0.0.1:9")
    config = replace(config, **changes)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        Sandbox(config)
    assert "the-storage-secret" not in str(raised.value)


def test_without_the_s3_client_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "minio", None)  # as if the storage extra were missing
    config = SandboxConfig(record_after=0.0, storage_endpoint="http://127.0.0.1:9")
    with pytest.raises(StorageUnavailable, match=re.escape("pip install 'reconciler[storage]'")):
        Sandbox(config)
    assert serve(config) == 1
    assert "pip install 'reconciler[storage]'" in capsys.readouterr().err
    Sandbox(SandboxConfig(record_after=0.0)).start().stop()  # no storage: no client needed


def test_the_s3_client_is_imported_only_for_a_storage_endpoint() -> None:
    script = (
        "import sys\n"
        "from reconciler.sandbox import Sandbox, SandboxConfig\n"
        "Sandbox(SandboxConfig(record_after=0.0)).start().stop()\n"
        "print('minio' in sys.modules)\n"
        "Sandbox(SandboxConfig(record_after=0.0, storage_endpoint='http://127.0.0.1:9'))\n"
        "print('minio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_the_banner_says_where_files_go_and_never_a_key(seaweed_server: SeaweedServer) -> None:
    config = SandboxConfig(
        record_after=0.0,
        storage_endpoint=seaweed_server.endpoint + "/",
        storage_access_key="storage-ak",
        storage_secret_key="the-storage-secret",
    )
    assert "the-storage-secret" not in repr(config)
    with Sandbox(config) as sandbox:
        text = banner(sandbox)
    assert f"storage     each file into its saveBucket at {seaweed_server.endpoint} " in text
    assert "the storage keys given" in text
    assert "a saveBucket that does not exist is a failed write" in text
    assert "the-storage-secret" not in text and "storage-ak" not in text
    with Sandbox(SandboxConfig(record_after=0.0)) as plain:
        assert "storage     none (files are not written" in banner(plain)


def test_the_banner_exports_the_storage_endpoint_for_verify() -> None:
    """With throwaway keys the banner says how to point reconciler here: verify too reads the
    files the recorder wrote, with the same keys (a SeaweedFS without an S3 config takes any)."""
    config = SandboxConfig(record_after=0.0, storage_endpoint="http://127.0.0.1:8333/")
    with Sandbox(config) as sandbox:
        text = banner(sandbox)
    [export] = [line for line in text.splitlines() if line.startswith("  export ")]
    assert "RECONCILER_STORAGE_ENDPOINT=http://127.0.0.1:8333" in export.split()
    assert f"JDCLOUD_SECRET_KEY={sandbox.credentials.secret_key}" in export
    assert "  reconciler verify --grace 0 PATH..." in text
    with Sandbox(SandboxConfig(record_after=0.0)) as plain:
        assert "RECONCILER_STORAGE_ENDPOINT" not in banner(plain)
        assert "reconciler verify" not in banner(plain)


# --- the command ---------------------------------------------------------------------------------


def test_the_sandbox_command_writes_the_files(
    seaweed_server: SeaweedServer, receiver: Receiver, bucket: str, spec: dict[str, Any]
) -> None:
    admin = seaweed_server.admin
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
        "--storage-endpoint",
        seaweed_server.endpoint,
        "--storage-access-key",
        admin.access_key,
        "--storage-secret-key",
        admin.secret_key,
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
        while not receiver.posts:
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
    assert admin.secret_key not in text + rest + stderr
    assert "storage     each file into its saveBucket at" in text
    assert "Storage: 1 files written, 0 failed." in rest
    assert list(objects(seaweed_server, bucket)) == [f"{DEFAULT_KEY}.mp4"]
    [body] = receiver.bodies()
    assert body["downloadUrl"] == f"{seaweed_server.endpoint}/{bucket}/{DEFAULT_KEY}.mp4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-after", "1", "--storage-endpoint", "ftp://h:9"], "--storage-endpoint"),
        (["--record-after", "1", "--storage-endpoint", "http://h:9/b"], "without a path"),
        (["--storage-endpoint", "http://127.0.0.1:9"], "add --record-after"),
        (
            ["--record-after", "1", "--storage-create-buckets"],
            "add --storage-endpoint URL",
        ),
        (
            [
                "--record-after",
                "1",
                "--storage-endpoint",
                "http://127.0.0.1:9",
                "--storage-secret-key",
                "the-storage-secret",
            ],
            "goes with --storage-access-key",
        ),
    ],
)
def test_bad_storage_options_are_usage_errors(tmp_path: Any, args: list[str], message: str) -> None:
    from tests.test_cli import cli

    result = cli(tmp_path, "sandbox", "--port", "0", *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "the-storage-secret" not in result.stderr
    assert "Traceback" not in result.stderr
