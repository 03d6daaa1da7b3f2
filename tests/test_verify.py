"""`reconciler verify` against a real S3 server (SeaweedFS, started by the tests): files found,
missing, a pending task settled, pagination, and buckets that cannot be read.

verify is given the server's read-only identity (Read and List): anything it wrote would be
refused. Every run's output is checked for the secret keys.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.plan import PlanAction, make_plan
from reconciler.state import (
    Recording,
    RecordingState,
    StateEntry,
    StateStore,
    TaskStatus,
)
from reconciler.state.model import EvidenceSource, generated_external_id
from reconciler.tasks import Task
from tests.seaweed_server import SeaweedServer
from tests.test_cli import cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
STAMP = "2026-11-20T20:00:00Z"
# The fixture clip (tests/fixtures/valid/minimal.yaml) is 2026-11-20T19:00:00Z..19:05:00Z.
CST = "20261121030000_20261121030500"  # its times in UTC+8
UTC_TIMES = "20261120190000_20261120190500"


@pytest.fixture(scope="module")
def schema() -> Draft202012Validator:
    return Draft202012Validator(
        json.loads((ROOT / "schemas" / "output.schema.json").read_text(encoding="utf-8"))
    )


def entry_of(task: Task, status: TaskStatus = TaskStatus.SUBMITTED) -> StateEntry:
    submitted = status is TaskStatus.SUBMITTED
    return StateEntry(
        task.hash,
        status,
        task.name,
        task.source,
        task.request,
        STAMP,
        "r" * 32 if submitted else None,
        STAMP if submitted else None,
        generated_external_id(task.hash),
    )


class World:
    """A state file with tasks, and verify run against the server with the reader's keys."""

    def __init__(self, folder: Path, server: SeaweedServer, make_task: Callable[..., Task]):
        self.folder = folder
        self.server = server
        self.make_task = make_task
        self.store = StateStore(folder / "state.json", lock_timeout=5)
        self.store.create()

    def task(
        self, name: str, bucket: str, status: TaskStatus = TaskStatus.SUBMITTED, **spec: Any
    ) -> Task:
        task: Task = self.make_task(0, name=name, saveBucket=bucket, **spec)
        self.store.append([entry_of(task, status)])
        return task

    def verify(
        self, *args: str, endpoint: str | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], str]:
        result = cli(
            self.folder,
            "verify",
            "--state",
            "state.json",
            "--storage-endpoint",
            endpoint or self.server.endpoint,
            "--format",
            "json",
            *args,
            env={**self.server.reader.environ(), **(env or {})},
        )
        shown = result.stdout + result.stderr
        for identity in (self.server.reader, self.server.admin):
            assert identity.secret_key not in shown
        return result.returncode, json.loads(result.stdout), result.stderr

    def recordings(self, task: Task) -> tuple[Recording, ...]:
        return self.store.load().recordings_of(task.hash)


@pytest.fixture
def world(
    tmp_path: Path, seaweed_server: SeaweedServer, make_task: Callable[..., Task]
) -> Iterator[World]:
    yield World(tmp_path, seaweed_server, make_task)


def bucket_name(request: pytest.FixtureRequest) -> str:
    digest = abs(hash(request.node.name)) % 10**8
    return f"t{digest:08d}"


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["name"]: task for task in document["tasks"]}


def test_found_missing_and_a_pending_task_settled(
    world: World, schema: Draft202012Validator, request: pytest.FixtureRequest
) -> None:
    bucket = world.server.bucket(bucket_name(request))
    found = world.task("found", bucket, streamName="one", recordFileType="flv;mp4")
    missing = world.task("missing", bucket, streamName="two")
    pending = world.task("pending", bucket, TaskStatus.PENDING, streamName="three")
    world.server.put(
        bucket,
        [
            f"record/20261121/node-1/live/one/{CST}.flv",
            f"record/20261121/node-1/live/one/{CST}.mp4",
            f"record/20261120/node-9/live/three/{UTC_TIMES}.mp4",  # written in UTC
            # Almost the missing one's: another format, and one second off.
            f"record/20261121/node-1/live/two/{CST}.flv",
            "record/20261121/node-1/live/two/20261121030001_20261121030500.mp4",
        ],
    )
    before = sorted(
        o.object_name for o in world.server.client().list_objects(bucket, recursive=True)
    )

    code, document, _ = world.verify()

    assert code == 1
    schema.validate(document)
    tasks = by_name(document)
    assert {name: task["result"] for name, task in tasks.items()} == {
        "found": "found",
        "missing": "missing",
        "pending": "settled",
    }
    assert tasks["missing"]["prefix"] == "record/"
    assert tasks["missing"]["bucket"] == bucket
    assert [f["found"] for f in tasks["found"]["files"]] == [True, True]
    assert document["summary"]["recorded"] == 4  # flv, mp4, the settled mp4, one missing

    state = world.store.load()
    summary = state.recording(found.hash)
    assert summary is not None and summary.state is RecordingState.RECORDED
    assert {r.source for r in summary.recordings} == {EvidenceSource.STORAGE}
    assert state.recording(missing.hash).state is RecordingState.MISSING  # type: ignore[union-attr]
    assert state.settled(pending.hash)
    # The settled task is never sent again, also not with --retry-pending.
    now = datetime(2026, 11, 24, tzinfo=UTC)
    plan = make_plan([found, missing, pending], state, now=now, settle_seconds=300)
    assert {item.name: item.action for item in plan.items}["pending"] is PlanAction.UNCHANGED

    # Read-only: the bucket holds what it held.
    after = sorted(
        o.object_name for o in world.server.client().list_objects(bucket, recursive=True)
    )
    assert after == before

    # Again: nothing new to record; what was found is not looked for again.
    code, document, _ = world.verify()
    assert code == 1
    assert document["summary"]["recorded"] == 0
    assert document["summary"]["foundEarlier"] == 2
    assert [task["name"] for task in document["tasks"]] == ["missing"]

    # The missing file arrives: found, and recorded beside the earlier `missing`.
    world.server.put(bucket, [f"record/20261121/node-1/live/two/{CST}.mp4"])
    code, document, _ = world.verify()
    assert code == 0
    assert world.store.load().recording(missing.hash).state is RecordingState.RECORDED  # type: ignore[union-attr]


def test_text_github_and_markdown_name_what_is_missing(
    world: World, request: pytest.FixtureRequest
) -> None:
    bucket = world.server.bucket(bucket_name(request))
    world.task("gone-clip", bucket, streamName="gone")
    env = world.server.reader.environ()
    base = ["verify", "--state", "state.json", "--storage-endpoint", world.server.endpoint]
    text = cli(world.folder, *base, env=env)
    assert text.returncode == 1
    assert "Missing (1):" in text.stdout
    assert "gone-clip" in text.stdout and f"bucket {bucket}" in text.stdout
    assert "prefix 'record/'" in text.stdout
    assert "push.example.com/live/gone" in text.stdout
    github = cli(world.folder, *base, "--format", "github", env=env)
    assert github.stdout.startswith("::error file=")
    assert "missing: gone-clip" in github.stdout
    markdown = cli(world.folder, *base, "--format", "markdown", env=env)
    assert "#### Missing" in markdown.stdout and "gone-clip" in markdown.stdout


def test_a_task_not_due_yet_is_not_looked_for(world: World, request: pytest.FixtureRequest) -> None:
    bucket = world.server.bucket(bucket_name(request))
    soon = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    world.task(
        "recent",
        bucket,
        recordTimes=[
            {
                "startTime": (soon - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endTime": soon.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ],
    )
    code, document, _ = world.verify()
    assert (code, document["summary"]["notDue"], document["tasks"]) == (0, 1, [])
    code, document, _ = world.verify("--grace", "60")
    assert code == 1 and by_name(document)["recent"]["result"] == "missing"


def test_the_downloadurl_of_a_callback_is_asked_with_head(
    world: World, request: pytest.FixtureRequest
) -> None:
    bucket = world.server.bucket(bucket_name(request))
    task = world.task("called-back", bucket, saveObject="elsewhere/{StreamName}.{format}")
    key = "callback/said/here.mp4"  # not where the template says: only the HEAD finds it
    world.server.put(bucket, [key])
    world.store.record_evidence(
        [
            (
                task.hash,
                Recording(
                    "c" * 64,
                    EvidenceSource.CALLBACK,
                    "mp4",
                    "success",
                    STAMP,
                    download_url=f"http://s3.cn-north-1.jcloudcs.com/{bucket}/{key}",
                ),
            )
        ]
    )
    code, document, _ = world.verify()
    assert code == 0
    assert document["tasks"][0]["files"][0]["via"] == "head"
    assert document["buckets"][0]["prefixes"] == []  # nothing listed


def test_a_downloadurl_with_no_object_there_and_the_other_format_are_listed(
    world: World, request: pytest.FixtureRequest
) -> None:
    # flv: the callback named a key that holds nothing (404), so its prefix is listed too and
    # the file is found where the template says; mp4: no callback named it, found listed.
    bucket = world.server.bucket(bucket_name(request))
    task = world.task(
        "moved",
        bucket,
        streamName="cam",
        recordFileType="flv;mp4",
        saveObject="clips/{StreamName}.{format}",
    )
    # Only flv, and the callback's key holds nothing: listed only because of the 404.
    alone = world.task(
        "moved-alone",
        bucket,
        streamName="solo",
        recordFileType="flv",
        saveObject="solo/{StreamName}.{format}",
    )
    world.server.put(bucket, ["clips/cam.flv", "clips/cam.mp4", "solo/solo.flv"])
    for number, (moved, stream) in enumerate(((task, "cam"), (alone, "solo"))):
        url = f"http://s3.cn-north-1.jcloudcs.com/{bucket}/gone/{stream}.flv"
        callback = Recording(
            f"{number}" * 64, EvidenceSource.CALLBACK, "flv", "success", STAMP, url
        )
        world.store.record_evidence([(moved.hash, callback)])
    code, document, _ = world.verify()
    assert code == 0, document
    tasks = by_name(document)
    files = {file["format"]: file for file in tasks["moved"]["files"]}
    assert (files["flv"]["key"], files["flv"]["via"]) == ("clips/cam.flv", "listing")
    assert (files["mp4"]["key"], files["mp4"]["via"]) == ("clips/cam.mp4", "listing")
    assert tasks["moved-alone"]["files"][0]["key"] == "solo/solo.flv"
    assert document["buckets"][0]["prefixes"] == ["clips/", "solo/"]  # one listing each
    assert document["summary"]["found"] == 2


def test_templates_with_and_without_placeholders_and_format(
    world: World, request: pytest.FixtureRequest
) -> None:
    bucket = world.server.bucket(bucket_name(request))
    world.task("fixed", bucket, saveObject="/fixed/goal.mp4", streamName="a")
    world.task("no-format", bucket, saveObject="clips/{StreamName}_{StartTime}", streamName="b")
    world.task(
        "with-format", bucket, saveObject="clips/{Date}/{StreamName}.{format}", streamName="c"
    )
    world.server.put(
        bucket,
        ["fixed/goal.mp4", "clips/b_20261120190000.mp4", "clips/20261121/c.mp4", "clips/c.mp4"],
    )
    code, document, _ = world.verify()
    assert code == 0, document
    assert document["buckets"][0]["prefixes"] == ["clips/", "fixed/goal.mp4"]


def test_a_bucket_that_does_not_exist(world: World, request: pytest.FixtureRequest) -> None:
    good = world.server.bucket(bucket_name(request))
    world.task("good", good, streamName="good")
    world.server.put(good, [f"record/20261121/n/live/good/{CST}.mp4"])
    world.task("lost", "no-such-bucket-here", streamName="lost")
    code, document, _stderr = world.verify()
    assert code == 1
    tasks = by_name(document)
    assert (tasks["good"]["result"], tasks["lost"]["result"]) == ("found", "unreadable")
    failed = [b for b in document["buckets"] if not b["readable"]]
    assert [b["bucket"] for b in failed] == ["no-such-bucket-here"]
    assert "no such bucket" in failed[0]["error"]
    assert world.store.load().recordings_of(tasks["lost"]["hash"]) == ()


def test_wrong_credentials(world: World, request: pytest.FixtureRequest) -> None:
    bucket = world.server.bucket(bucket_name(request))
    task = world.task("clip", bucket)
    wrong = "wrong-" + world.server.reader.secret_key[:8]
    code, document, _ = world.verify(env={"JDCLOUD_SECRET_KEY": wrong})
    assert code == 1
    assert document["buckets"][0]["readable"] is False
    assert "credentials were refused" in document["buckets"][0]["error"]
    assert wrong not in json.dumps(document)
    assert world.recordings(task) == ()
    # No credentials at all: an error before anything is read.
    result = cli(
        world.folder, "verify", "--state", "state.json", "--storage-endpoint", world.server.endpoint
    )
    assert result.returncode == 1 and "JDCLOUD_ACCESS_KEY" in result.stderr


def test_5000_keys_under_one_prefix_are_read_page_by_page(
    world: World, request: pytest.FixtureRequest
) -> None:
    bucket = world.server.bucket(bucket_name(request))
    world.task("last", bucket, saveObject="many/{StreamName}.{format}", streamName="zz")
    world.task("first", bucket, saveObject="many/{StreamName}.{format}", streamName="aa")
    world.server.put(bucket, [f"many/noise-{n:04d}.mp4" for n in range(5000)])
    world.server.put(bucket, ["many/aa.mp4", "many/zz.mp4"])  # first and last in key order
    code, document, _ = world.verify()
    assert code == 0, document
    assert {t["name"]: t["result"] for t in document["tasks"]} == {
        "first": "found",
        "last": "found",
    }


# --- a server that breaks mid-listing ---------------------------------------------------------


class BreakingProxy:
    """A TCP proxy in front of the S3 server that breaks requests for one bucket after the
    first page of a listing: it answers 500, or closes the connection halfway through."""

    def __init__(self, upstream_port: int, bucket: str, mode: str) -> None:
        self.upstream_port, self.bucket, self.mode = upstream_port, bucket, mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.broken = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode()
            target = request_line.split(" ")[1]
            breaks = target.startswith(f"/{self.bucket}") and "continuation-token" in target
            if breaks and self.mode == "500":
                self.broken += 1
                client.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n"
                    b"Connection: close\r\n\r\noops!"
                )
                return
            # One request per connection: the proxy closes when the upstream has answered.
            lines = [
                line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
            ]
            head = b"\r\n".join([*lines[:1], b"Connection: close", *lines[1:]])
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(head)
                sent = 0
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        return
                    if breaks and sent + len(chunk) > 600:
                        self.broken += 1
                        client.sendall(chunk[: max(0, 600 - sent)])
                        return  # closed halfway through the answer
                    client.sendall(chunk)
                    sent += len(chunk)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("mode", ["500", "close"])
def test_a_server_that_breaks_mid_listing(
    world: World, request: pytest.FixtureRequest, mode: str
) -> None:
    good = world.server.bucket(bucket_name(request) + "g")
    bad = world.server.bucket(bucket_name(request) + "b")
    world.task("good", good, streamName="good")
    world.server.put(good, [f"record/20261121/n/live/good/{CST}.mp4"])
    task = world.task("behind-the-break", bad, streamName="bad")
    # More than one page, the task's own file on the first.
    world.server.put(bad, [f"record/20261121/n/live/bad/{CST}.mp4"])
    world.server.put(bad, [f"record/2027{n:04d}/n/x.mp4" for n in range(1100)])
    # Another prefix of the same bucket, one page, read before the break: its file is found,
    # and still nothing is concluded or recorded for it (the bucket was not read whole).
    early = world.task("listed-first", bad, streamName="early", saveObject="q/{StreamName}.mp4")
    world.server.put(bad, ["q/early.mp4"])
    proxy = BreakingProxy(world.server.port, bad, mode)
    try:
        code, document, _ = world.verify(endpoint=f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert proxy.broken >= 1
    assert code == 1
    tasks = by_name(document)
    assert (
        tasks["good"]["result"],
        tasks["behind-the-break"]["result"],
        tasks["listed-first"]["result"],
    ) == ("found", "unreadable", "unreadable")
    failed = [b for b in document["buckets"] if not b["readable"]]
    assert [b["bucket"] for b in failed] == [bad]
    assert bad in failed[0]["error"]
    assert world.recordings(task) == ()  # nothing recorded for the bucket it could not read
    assert world.recordings(early) == ()
