"""End to end: the real CLI in a subprocess, real sockets, the sandbox started here on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from reconciler.state import StateStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

MANIFEST = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: clip-{n}
  labels: {{batch: e2e}}
spec:
  publishDomain: push.example.com
  appName: live
  streamName: stream-{n}
  recordTimes:
    - startTime: "2026-11-01T10:00:00Z"
      endTime: "2026-11-01T10:01:00Z"
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


def write_manifests(folder: Path, count: int, per_file: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, count, per_file):
        docs = [MANIFEST.format(n=n) for n in range(first, min(first + per_file, count))]
        (folder / f"clips-{first:04d}.yaml").write_text("---\n".join(docs))
    return folder


def env_for(box: Sandbox, *, secret: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env.update(
        JDCLOUD_ACCESS_KEY=box.credentials.access_key,
        JDCLOUD_SECRET_KEY=secret or box.credentials.secret_key,
        RECONCILER_ENDPOINT=box.url,
        NO_COLOR="1",
    )
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def init_state(folder: Path, state: str | Path = "reconciler-state.json") -> Path:
    """`reconciler init`: the empty state a real apply needs (it refuses a missing one)."""
    done = cli("init", "--state", str(state), cwd=folder, env=dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / state


def accepted_streams(box: Sandbox) -> Counter[str]:
    return Counter(task["path"]["streamName"] for task in box.accepted())


def state_by_stream(state: Path) -> dict[str, str]:
    entries = StateStore(state).load().entries.values()
    return {e.request["path"]["streamName"]: e.status.value for e in entries}


def test_apply_examples_twice_sends_once(tmp_path: Path, sandbox_factory: Any) -> None:
    box = sandbox_factory()
    env = env_for(box)
    init_state(tmp_path)
    first = cli("apply", str(EXAMPLES), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Apply complete: 7 submitted." in first.stdout
    second = cli("apply", str(EXAMPLES), cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to submit." in second.stdout
    assert "0 submitted, 7 unchanged" in second.stdout
    assert len(box.accepted()) == 7
    assert set(state_by_stream(tmp_path / "reconciler-state.json").values()) == {"submitted"}


def test_sandbox_flag_runs_the_whole_flow_without_an_account(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env["RECONCILER_STATE"] = str(tmp_path / "real-state.json")
    result = cli("apply", str(EXAMPLES), "--sandbox", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SANDBOX" in result.stdout and "not JD Cloud" in result.stdout
    assert "SANDBOX apply complete: 7 submitted." in result.stdout
    assert (tmp_path / "reconciler-state.sandbox.json").exists()
    assert not (tmp_path / "real-state.json").exists(), "a sandbox run never touches real state"


def test_kill_9_at_random_moments_never_duplicates_or_forgets(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 200)
    rng = random.Random(20261124)
    concurrency = 4
    trials = 20
    mid_send = 0
    for trial in range(trials):
        box = sandbox_factory(latency_ms=20, seed=trial)
        env = env_for(box)
        state = init_state(tmp_path, f"state-{trial}.json")
        args = (
            "apply",
            str(manifests),
            "--state",
            str(state),
            "--concurrency",
            str(concurrency),
            "-q",
        )
        victim = start_cli(*args, cwd=tmp_path, env=env)
        # Python start-up and loading take a few hundred ms; the sending phase about a second.
        time.sleep(rng.uniform(0.3, 1.6))
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        after_kill = accepted_streams(box)
        mid_send += 0 < len(after_kill) < 200
        recorded = state_by_stream(state)
        missing = set(after_kill) - set(recorded)
        assert not missing, f"trial {trial}: accepted but not in state: {sorted(missing)}"
        unanswered = [s for s, status in recorded.items() if status == "pending"]
        assert len(unanswered) <= 2 * concurrency, f"trial {trial}: write-ahead window exceeded"
        again = cli(*args, cwd=tmp_path, env=env)
        assert again.returncode in (0, 1), again.stdout + again.stderr
        accepted = accepted_streams(box)
        twice = [stream for stream, count in accepted.items() if count > 1]
        assert not twice, f"trial {trial}: accepted twice: {twice}"
        final = state_by_stream(state)
        assert set(accepted) <= set(final), f"trial {trial}: accepted tasks missing from state"
        assert len(final) == 200, f"trial {trial}: every task is submitted or pending"
        box.stop()
    # The kills must land while requests are flowing, or this test proves little.
    assert mid_send >= trials // 2, f"only {mid_send} of {trials} kills landed mid-apply"


def test_two_applies_at_once_send_each_task_once(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 60)
    box = sandbox_factory(latency_ms=20)
    env = env_for(box)
    args = ("apply", str(manifests), "--state", str(init_state(tmp_path, "state.json")), "-q")
    runs = [start_cli(*args, cwd=tmp_path, env=env) for _ in range(2)]
    results = [(run.wait(timeout=60), *run.communicate()) for run in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert sorted(accepted_streams(box).values()) == [1] * 60
    assert any("Nothing to submit." in out for _, out, _ in results)


def test_lock_timeout_names_the_holder(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 40)
    box = sandbox_factory(latency_ms=100)
    env = env_for(box)
    state = str(init_state(tmp_path, "state.json"))
    holder = start_cli("apply", str(manifests), "--state", state, "-q", cwd=tmp_path, env=env)
    lock_info = Path(state + ".lock.info")
    deadline = time.monotonic() + 20
    while not lock_info.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = cli(
        "apply", str(manifests), "--state", state, "--lock-timeout", "0.2", cwd=tmp_path, env=env
    )
    holder.communicate(timeout=60)
    assert refused.returncode == 1
    assert f"pid {holder.pid}" in refused.stderr or str(holder.pid) in refused.stderr, (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_503s_are_retried_to_success(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 30)
    box = sandbox_factory(failures={503: 0.3}, seed=7)
    state = init_state(tmp_path)
    result = cli("apply", str(manifests), "-q", cwd=tmp_path, env=env_for(box))
    assert box.counts().injected.get(503, 0) > 0
    accepted = accepted_streams(box)
    # A task can draw five 503s in a row (0.3**5 each; which ones depends on the threads):
    # then it failed finally, nothing was created or left pending, and the next apply sends it.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert state_by_stream(state) == dict.fromkeys(accepted, "submitted")
    if result.returncode == 1:
        assert "still refused after 4 retries; nothing was created" in result.stdout
        healthy = sandbox_factory()
        again = cli("apply", str(manifests), "-q", cwd=tmp_path, env=env_for(healthy))
        assert again.returncode == 0, again.stdout + again.stderr
        accepted += accepted_streams(healthy)
    assert sorted(accepted.values()) == [1] * 30
    assert set(state_by_stream(state).values()) == {"submitted"}


def test_500_stays_pending_until_retry_pending(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 5)
    failing = sandbox_factory(failures={500: 1.0})
    init_state(tmp_path)
    first = cli("apply", str(manifests), cwd=tmp_path, env=env_for(failing))
    assert first.returncode == 1
    assert "outcome unknown" in first.stdout and "mark-submitted" in first.stdout
    assert set(state_by_stream(tmp_path / "reconciler-state.json").values()) == {"pending"}
    healthy = sandbox_factory()
    second = cli("apply", str(manifests), cwd=tmp_path, env=env_for(healthy))
    assert second.returncode == 1, "pending tasks still need attention"
    assert healthy.accepted() == [], "pending tasks are not re-sent without --retry-pending"
    third = cli("apply", str(manifests), "--retry-pending", cwd=tmp_path, env=env_for(healthy))
    assert third.returncode == 0, third.stdout + third.stderr
    assert "may duplicate" in third.stdout or "made twice" in third.stdout
    assert sorted(accepted_streams(healthy).values()) == [1] * 5
    assert set(state_by_stream(tmp_path / "reconciler-state.json").values()) == {"submitted"}


def test_dropped_connection_stays_pending(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 3)
    dropping = sandbox_factory(drop_rate=1.0)
    init_state(tmp_path)
    first = cli("apply", str(manifests), cwd=tmp_path, env=env_for(dropping))
    assert first.returncode == 1
    assert len(dropping.accepted()) == 3, "the sandbox created them; the client never heard"
    assert set(state_by_stream(tmp_path / "reconciler-state.json").values()) == {"pending"}
    second = cli("apply", str(manifests), cwd=tmp_path, env=env_for(dropping))
    assert len(dropping.accepted()) == 3, "no duplicate without --retry-pending"
    assert second.returncode == 1


def test_wrong_secret_stops_with_401_and_leaks_nothing(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    manifests = write_manifests(tmp_path / "clips", 30)
    box = sandbox_factory()
    wrong = "wrong-secret-" + "x" * 20
    init_state(tmp_path)
    result = cli("apply", str(manifests), "-v", cwd=tmp_path, env=env_for(box, secret=wrong))
    assert result.returncode == 1
    assert "401" in result.stdout
    assert box.accepted() == []
    assert box.counts().rejected.get(401, 0) <= 4 + 4, "stopped after the first 401s"
    assert state_by_stream(tmp_path / "reconciler-state.json") == {}
    for text in (result.stdout, result.stderr):
        assert wrong not in text
        assert box.credentials.secret_key not in text
    state_text = "".join(
        p.read_text() for p in tmp_path.glob("reconciler-state.json*") if p.is_file()
    )
    assert wrong not in state_text


def test_sigint_records_in_flight_and_loses_nothing(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 200)
    box = sandbox_factory(latency_ms=50)
    env = env_for(box)
    state = init_state(tmp_path, "state.json")
    args = ("apply", str(manifests), "--state", str(state), "-q")
    run = start_cli(*args, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 30
    while not box.accepted() and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    accepted = accepted_streams(box)
    recorded = state_by_stream(state)
    assert 0 < len(accepted) < 200
    assert {s: "submitted" for s in accepted} == recorded, (
        "in-flight tasks were recorded; no mark left"
    )
    rest = cli(*args, cwd=tmp_path, env=env)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert sorted(accepted_streams(box).values()) == [1] * 200


def test_saved_plan_is_applied_exactly_or_refused(tmp_path: Path, sandbox_factory: Any) -> None:
    manifests = write_manifests(tmp_path / "clips", 4)
    box = sandbox_factory()
    env = env_for(box)
    init_state(tmp_path)
    plan = cli(
        "plan", str(manifests), "--out", "plan.json", "--detailed-exitcode", cwd=tmp_path, env=env
    )
    assert plan.returncode == 2, plan.stdout + plan.stderr
    document = json.loads((tmp_path / "plan.json").read_text())
    assert document["summary"]["create"] == 4
    # A new manifest after the plan is not part of it.
    (manifests / "late.yaml").write_text(MANIFEST.format(n=99))
    applied = cli("apply", "plan.json", cwd=tmp_path, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(accepted_streams(box)) == [f"stream-{n}" for n in range(4)]
    stale = cli("apply", "plan.json", cwd=tmp_path, env=env)
    assert stale.returncode == 1
    assert "changed since this plan was made" in stale.stderr
    assert len(box.accepted()) == 4
