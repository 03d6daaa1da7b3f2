"""End to end for the bucket (issue "Find each clip's file in its bucket", DESIGN §7b): the
sandbox accepts tasks and records them into a real S3 server (SeaweedFS), some recordings
failing on purpose; `reconciler verify` finds exactly the recorded ones and names exactly the
missing ones; a pending task whose file exists is settled and never sent again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from reconciler.state import StateStore
from tests.test_e2e import cli, env_for, init_state

pytestmark = pytest.mark.e2e

BUCKET = "e2e-verify"
WAIT = 120.0
MANIFEST = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: clip-{n}
spec:
  publishDomain: push.example.com
  appName: live
  streamName: stream-{n}
  recordTimes:
    - startTime: "2026-11-01T10:{n:02d}:00Z"
      endTime: "2026-11-01T10:{n:02d}:30Z"
  saveBucket: {bucket}
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: {types}
{extra}"""


def write_clips(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    documents = []
    for n in range(count):
        types = "flv;mp4" if n % 4 == 0 else "mp4"
        extra = f"  saveObject: matches/{{StreamName}}/clip-{n}\n" if n % 3 == 0 else ""
        documents.append(MANIFEST.format(n=n, bucket=BUCKET, types=types, extra=extra))
    (folder / "clips.yaml").write_text("---\n".join(documents), encoding="utf-8")


def recording_sandbox(
    folder: Path, clips: int, sandbox_factory: Any, server: Any, **faults: Any
) -> tuple[Sandbox, dict[str, str]]:
    """`clips` manifests and a state in `folder`, an empty bucket, and a sandbox that records
    into it (with `faults`); the sandbox and the environment apply runs in."""
    server.bucket(BUCKET)
    box: Sandbox = sandbox_factory(
        record_after=0.05,
        storage_endpoint=server.endpoint,
        storage_access_key=server.admin.access_key,
        storage_secret_key=server.admin.secret_key,
        **faults,
    )
    write_clips(folder / "clips", clips)
    init_state(folder)
    return box, env_for(box)


def wait_recorded(box: Sandbox, server: Any) -> dict[str, Any]:
    """The sandbox's recordings once it has made them all, and they show in a listing."""
    deadline = time.monotonic() + WAIT
    while True:
        document = box.recordings()
        if document["pending"] == 0 and box.counts().recorder_pending == 0:
            break
        assert time.monotonic() < deadline, "the sandbox never finished recording"
        time.sleep(0.05)
    server.wait_listed(BUCKET, [r["key"] for r in document["recordings"]])
    return document


def verify(folder: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = cli("verify", "--format", "json", "--grace", "0", *args, cwd=folder, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_result(document: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for task in document["tasks"]:
        found.setdefault(task["result"], set()).add(task["name"])
    return found


def test_verify_finds_exactly_the_recorded_clips_and_names_exactly_the_missing_ones(
    tmp_path: Path, sandbox_factory: Any, seaweed_server: Any
) -> None:
    box, env = recording_sandbox(
        tmp_path, 16, sandbox_factory, seaweed_server, record_fail_rate=0.35, seed=11
    )
    applied = cli("apply", "clips", cwd=tmp_path, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    recordings = wait_recorded(box, seaweed_server)
    by_request = {task["requestId"]: task["path"]["streamName"] for task in box.accepted()}
    recorded = {by_request[r["requestId"]] for r in recordings["recordings"]}
    failed = {by_request[r["requestId"]] for r in recordings["notRecorded"]}
    assert recorded and failed, "the seed gives both recorded and failed recordings"
    assert recorded.isdisjoint(failed) and len(recorded | failed) == 16

    reader = {**env, **seaweed_server.reader.environ()}
    code, document = verify(tmp_path, reader, "--storage-endpoint", seaweed_server.endpoint)
    assert code == 1, "something is missing: the job turns red"
    results = by_result(document)
    names = {f"stream-{n}": f"clip-{n}" for n in range(16)}
    assert results.get("found", set()) == {names[s] for s in recorded}
    assert results.get("missing", set()) == {names[s] for s in failed}
    for task in document["tasks"]:
        if task["result"] == "missing":  # everything a person needs to look
            assert task["bucket"] == BUCKET and task["prefix"] and task["stream"]
            assert task["startTime"] and task["endTime"]
    listed = cli("state", "list", "--format", "json", cwd=tmp_path, env=env)
    states = {t["name"]: t["recording"]["state"] for t in json.loads(listed.stdout)["tasks"]}
    assert {n for n, s in states.items() if s == "recorded"} == {names[s] for s in recorded}
    assert {n for n, s in states.items() if s == "missing"} == {names[s] for s in failed}

    # A second run finds the same and records nothing new (no commit noise in a CI job).
    before = StateStore(tmp_path / "reconciler-state.json").load()
    again, _ = verify(tmp_path, reader, "--storage-endpoint", seaweed_server.endpoint)
    assert again == 1
    assert StateStore(tmp_path / "reconciler-state.json").load() == before


def test_a_pending_task_whose_file_exists_is_settled_and_never_sent_again(
    tmp_path: Path, sandbox_factory: Any, seaweed_server: Any
) -> None:
    # Every answer is dropped: the tasks exist (and are recorded), apply never hears: pending.
    box, env = recording_sandbox(
        tmp_path, 4, sandbox_factory, seaweed_server, drop_rate=1.0, seed=5
    )
    applied = cli("apply", "clips", cwd=tmp_path, env=env)
    assert applied.returncode == 1 and "pending" in applied.stdout + applied.stderr
    wait_recorded(box, seaweed_server)
    reader = {**env, **seaweed_server.reader.environ()}
    code, document = verify(tmp_path, reader, "--storage-endpoint", seaweed_server.endpoint)
    assert code == 0, document
    assert by_result(document) == {"settled": {f"clip-{n}" for n in range(4)}}
    accepted = len(box.accepted())
    retried = cli("apply", "clips", "--retry-pending", cwd=tmp_path, env=env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert len(box.accepted()) == accepted, "a task whose file exists was sent again"
    assert "settled" in retried.stdout
