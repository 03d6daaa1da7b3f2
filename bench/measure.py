"""Whole-process measurements: wall time and the child's own peak memory, from the OS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"


class BenchError(Exception):
    """A case could not run, or a correctness guard failed: the bench exits non-zero."""


@dataclass(frozen=True)
class Run:
    """One finished process: how long it took, its peak resident memory, how it ended."""

    seconds: float
    max_rss_mb: float
    returncode: int
    output: str  # stdout and stderr, interleaved


def run_measured(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    expect: tuple[int, ...] = (0,),
) -> Run:
    """Run `argv` to completion in `cwd`; its wall time and its own peak RSS, from the OS.

    getrusage(RUSAGE_CHILDREN) is the maximum over every child ever reaped, so it cannot tell
    one child from the next; os.wait4 on the child's pid can. The child is started by a small
    launcher (see launcher.py): started by the bench itself, it would inherit the bench's own
    peak RSS as a floor.
    """
    log = cwd / ".bench-output.txt"
    report = cwd / ".bench-launch.json"
    report.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(report)]
    with log.open("w+b") as sink:
        subprocess.run(
            [*launcher, *argv],
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
        sink.seek(0)
        output = sink.read().decode("utf-8", "replace")
    try:
        measured = json.loads(report.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"could not start {argv[0]}:\n{_tail(output)}") from None
    run = Run(
        measured["seconds"],
        measured["maxRssKiB"] / (1024 * 1024 if sys.platform == "darwin" else 1024),
        measured["returncode"],
        output,
    )
    if run.returncode not in expect:
        raise BenchError(
            f"{' '.join(argv[:4])} ... exited {run.returncode} (expected {expect}):\n"
            + _tail(run.output)
        )
    return run


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class Samples:
    """Repeated measurements of one side of a comparison."""

    runs: tuple[Run, ...]

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def best(self) -> float:
        return min(run.seconds for run in self.runs)

    @property
    def max_rss_mb(self) -> float:
        return max(run.max_rss_mb for run in self.runs)

    @property
    def spread(self) -> str:
        """`min..max` seconds, to show how noisy the median is."""
        times = [run.seconds for run in self.runs]
        return f"{min(times):.3f}..{max(times):.3f} s"


def alternate(
    sides: Sequence[Callable[[], Run]], repeats: int, *, warmup: bool = True
) -> list[Samples]:
    """Run each side `repeats` times, interleaved (A, B, A, B, ...), after one untimed warm-up
    each (page cache, .pyc files), so drift in the machine's load hits every side alike."""
    if warmup:
        for side in sides:
            side()
    collected: list[list[Run]] = [[] for _ in sides]
    for _ in range(repeats):
        for runs, side in zip(collected, sides, strict=True):
            runs.append(side())
    return [Samples(tuple(runs)) for runs in collected]


def chunked(items: Sequence[str], budget: int) -> list[list[str]]:
    """`items` split so that each chunk's arguments stay under `budget` bytes (ARG_MAX)."""
    chunks: list[list[str]] = [[]]
    used = 0
    for item in items:
        size = len(os.fsencode(item)) + 1 + 8  # the string, its NUL, its argv pointer
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(item)
        used += size
    return chunks
