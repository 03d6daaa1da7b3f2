"""A Ctrl-C or SIGTERM at any instant of a command, start-up included: exit 130, at most one
line on stderr ("Interrupted."), never a traceback.

The real entry points run: the `reconciler` console script pip generated, and
`python -m reconciler`. Every command here waits for something the test holds (a state's lock),
or serves until stopped (the sandbox), so it is still running whenever the signal comes: the
assertions hold at every delay, and no delay decides the outcome.

Two ways to start the child. A signal sent before the interpreter has run any line of
reconciler meets Python's own start-up, which no Python program can handle; so the child is
started with SIGINT and SIGTERM blocked (as a parent that waits for signals in a thread would
pass them on), and a signal sent "right after spawn" waits, pending, for the first instant
reconciler's code can act on it (the entry point unblocks them once its handlers are in
place). And without that, as a user's shell starts it: the signal is sent once the child has
its SIGTERM handler (read from /proc), at a spread of delays through the imports and the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONSOLE_SCRIPT = Path(sys.executable).parent / "reconciler"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# None: right after spawn. The others: seconds after that (blocked start) or after the child
# has its handler (plain start).
BLOCKED_DELAYS = (None, 0.0, 0.005, 0.02, 0.05, 0.1, 0.3)
PLAIN_DELAYS = (0.0, 0.05, 0.3)

COMMANDS = {
    # Waits for the lock of a state the test holds.
    "apply": [
        "apply",
        str(EXAMPLES),
        "--state",
        "held.json",
        "--endpoint",
        "http://127.0.0.1:9",
        "--lock-timeout",
        "600",
    ],
    "state rm": ["state", "rm", "0123456789ab", "--yes", "--state", "held.json"],
    "init": ["init", "--state", "new.json"],
    # Serves until stopped: exit 0 once it serves, 130 before.
    "sandbox": ["sandbox", "--port", "0"],
}


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A folder with a state whose lock the test holds, and the lock of one not created yet."""
    (tmp_path / "held.json").write_text('{"tasks": {}, "version": 1}\n', encoding="utf-8")
    held = filelock.FileLock(str(tmp_path / "held.json.lock"))
    new = filelock.FileLock(str(tmp_path / "new.json.lock"))
    with held, new:
        yield tmp_path


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    env.update(
        JDCLOUD_ACCESS_KEY="ak-for-a-test",
        JDCLOUD_SECRET_KEY="sk-for-a-test",
        NO_COLOR="1",
        HOME=str(home),
    )
    return env


def entry_point(index: int) -> list[str]:
    """The console script and `python -m reconciler`, in turn."""
    return [str(CONSOLE_SCRIPT)] if index % 2 == 0 else [sys.executable, "-m", "reconciler"]


def spawn(argv: list[str], cwd: Path, *, blocked: bool) -> subprocess.Popen[str]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS) if blocked else None
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{process.args} did not end within 20 s of the signal: {out}{err}")
    return process.returncode, out, err


def check(command: str, returncode: int, out: str, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}: {err}"
    assert len(err.splitlines()) <= 1, f"{what}: more than one line on stderr: {err!r}"
    if command == "sandbox" and returncode == 0:
        assert "Sandbox stopped" in out, f"{what}: {out}"
        return
    assert returncode == 130, f"{what}: exit {returncode}; {out}{err}"
    assert err == "Interrupted.\n", f"{what}: {err!r}"


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_signal_right_after_spawn_or_during_start_up(
    workdir: Path, command: str, signum: int
) -> None:
    for index, delay in enumerate(BLOCKED_DELAYS):
        process = spawn([*entry_point(index), *COMMANDS[command]], workdir, blocked=True)
        if delay is not None:
            time.sleep(delay)
        process.send_signal(signum)
        what = f"{process.args[0]} {command}, signal {delay} s after spawn"
        check(command, *finish(process), what)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_signal_once_the_entry_point_runs(workdir: Path, command: str, signum: int) -> None:
    for index, delay in enumerate(PLAIN_DELAYS):
        process = spawn([*entry_point(index), *COMMANDS[command]], workdir, blocked=False)
        deadline = time.monotonic() + 30
        while not handles_sigterm(process.pid):
            assert process.poll() is None, finish(process)
            assert time.monotonic() < deadline, "no SIGTERM handler within 30 s"
            time.sleep(0.001)
        time.sleep(delay)
        process.send_signal(signum)
        what = f"{process.args[0]} {command}, signal {delay} s after its handler"
        check(command, *finish(process), what)


def test_a_third_signal_during_apply_unwinds_as_an_interrupt_not_clicks_abort() -> None:
    """apply's own handling: the first signal stops, the second aborts, the third unwinds the
    command as Interrupted, which main() ends with exit 130 and one line (a KeyboardInterrupt
    would become Click's 'Aborted!' and exit 1)."""
    from reconciler.cli.manifests import _stop_on_signals
    from reconciler.interrupts import Interrupted

    with pytest.raises(Interrupted), _stop_on_signals() as flags:
        signal.raise_signal(signal.SIGINT)
        assert flags.stop.is_set() and not flags.abort.is_set()
        signal.raise_signal(signal.SIGTERM)
        assert flags.abort.is_set()
        signal.raise_signal(signal.SIGINT)
