"""The peers a user would pick instead, each in its own virtual environment under bench/.venvs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from measure import BenchError

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"

# Pinned, so RESULTS.md compares against a known release (the test extras' versions).
CHECK_JSONSCHEMA = "check-jsonschema==0.39.0"
# The SDK loop reads the YAML manifests as a hand-written script would: with PyYAML.
JDCLOUD_SDK = ("jdcloud-sdk==1.6.354", "PyYAML==6.0.4")


@dataclass(frozen=True)
class Peers:
    """How to start each peer."""

    check_jsonschema: tuple[str, ...]  # argv prefix of the check-jsonschema CLI
    sdk_python: str  # an interpreter that can import jdcloud_sdk and yaml
    origin: str  # where they came from, for RESULTS.md


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _ensure_venv(name: str, requirements: tuple[str, ...], log: list[str]) -> Path:
    """bench/.venvs/NAME with `requirements` installed; reused when already there."""
    venv = VENVS / name
    python = _venv_python(venv)
    marker = venv / "bench-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return venv
    log.append(f"installing {' '.join(requirements)} into {venv.relative_to(BENCH.parent)}")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *requirements],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise BenchError(f"could not set up {venv}: {error.stderr or error}") from error
    marker.write_text(wanted)
    return venv


def install_peers(log: list[str]) -> Peers:
    """Create (or reuse) the peers' virtual environments."""
    checker = _ensure_venv("check-jsonschema", (CHECK_JSONSCHEMA,), log)
    sdk = _ensure_venv("jdcloud-sdk", JDCLOUD_SDK, log)
    return Peers(
        check_jsonschema=(str(checker / "bin" / "check-jsonschema"),),
        sdk_python=str(_venv_python(sdk)),
        origin="own virtual environments in bench/.venvs",
    )


def peers_from_current_env() -> Peers:
    """The peers installed beside this interpreter (the project's test extras)."""
    script = Path(sys.executable).parent / "check-jsonschema"
    command = (str(script),) if script.exists() else (sys.executable, "-m", "check_jsonschema")
    return Peers(
        check_jsonschema=command,
        sdk_python=sys.executable,
        origin=f"the current environment ({sys.prefix})",
    )


def package_version(python: str, distribution: str) -> str:
    """The installed version of `distribution` as `python` sees it, or `not installed`."""
    code = (
        "import importlib.metadata as m, sys\n"
        "try: print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError: print('not installed')\n"
    )
    result = subprocess.run(
        [python, "-c", code, distribution], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"
