"""A database password never shows, whatever it holds (DESIGN §3 "Secrets in every shape").

Through the real CLI, for passwords holding `#`, `/`, `?`, `@`, `%` and spaces, written
percent-encoded (they work) and as they are (a value libpq would misread is refused whole,
never shown): neither the password nor any 3-character piece of it is in any output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from psycopg import sql

from reconciler.sandbox import Sandbox
from tests.postgres_server import PostgresServer, free_port
from tests.test_e2e import cli, write_manifests
from tests.test_state_postgres_e2e import clean_env, database_of, no_traceback

pytestmark = pytest.mark.e2e

# Every 3-character window holds a capital or a special character: no such piece can be part
# of the outputs' own words, hashes or request ids by chance.
PASSWORDS = [
    "Xq#Zp/Wv?Kt@Jm",
    "Jm@Rt@Yb",
    "Qz/Wx/Lp",
    "Hv?Np?Gs",
    "Tk#Bd#Fm",
    "Tk#",
    "Zr%Pq%G",
    "%4A%4BVw",
    "Cx Vb Nm",
    "Wq%20Rz",
]


def pieces(secret: str) -> set[str]:
    """The secret, and every piece of 3 characters or more, as written and percent-decoded."""
    found = set()
    for form, shortest in ((secret, 3), (unquote(secret), 3), (quote(secret, safe=""), 4)):
        # Encoded, 4 or more: a lone escape (`%23`) is no piece of this password.
        found |= {form[i:j] for i in range(len(form)) for j in range(i + shortest, len(form) + 1)}
    return found


def assert_hidden(secret: str, *outputs: str) -> None:
    text = "".join(outputs)
    shown = sorted(piece for piece in pieces(secret) if piece in text)
    assert shown == [], f"pieces of the password in the output: {shown}\n{text}"
    no_traceback(*outputs)


@pytest.fixture
def role(postgres_server: PostgresServer, request: Any) -> Iterator[tuple[str, str]]:
    """(user, database): a login role with the test's password, allowed to create the schema."""
    password: str = request.param
    user = f"nasty_{PASSWORDS.index(password)}"
    database = database_of(postgres_server.create_database())
    postgres_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))
    postgres_server.create_user(user, password)
    postgres_server.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(database), sql.Identifier(user)
        )
    )
    yield user, database
    postgres_server.execute(
        sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database))
    )
    postgres_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


def uri(server: PostgresServer, user: str, password: str, database: str, port: int = 0) -> str:
    return f"postgresql://{user}:{password}@{server.host}:{port or server.port}/{database}"


@pytest.mark.parametrize("role", PASSWORDS, indirect=True, ids=range(len(PASSWORDS)))
def test_a_percent_encoded_password_works_and_never_shows(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, role: tuple[str, str]
) -> None:
    user, database = role
    password = PASSWORDS[[f"nasty_{i}" for i in range(len(PASSWORDS))].index(user)]
    state = uri(postgres_server, user, quote(password, safe=""), database)
    write_manifests(tmp_path / "clips", 2)
    box: Sandbox = sandbox_factory()
    env = clean_env(box)
    outputs = []

    def run(*args: str, code: int = 0, **extra: str) -> None:
        done = cli(*args, cwd=tmp_path, env=env | extra)
        assert done.returncode == code, done.stdout + done.stderr
        outputs.extend([done.stdout, done.stderr])
        assert_hidden(password, done.stdout, done.stderr)

    run("init", "--state", state)
    run("plan", "clips", "--state", state)
    run("apply", "clips", "--state", state)
    run("apply", "clips", "--format", "json", RECONCILER_STATE=state)
    run("state", "list", "--state", state, "--format", "json")
    run("state", "list", RECONCILER_STATE=state)
    run("init", "--state", "empty.json")
    run("state", "migrate", "empty.json", f"{state}#migrated")
    closed = uri(postgres_server, user, quote(password, safe=""), database, port=free_port())
    run("state", "list", "--state", closed, code=1)
    run("apply", "clips", "--state", closed, code=1)
    assert "postgresql://" + user + ":***@" in "".join(outputs)
    listed = json.loads(
        cli("state", "list", "--state", state, "--format", "json", cwd=tmp_path, env=env).stdout
    )
    assert len(listed["tasks"]) == 2
    assert len(box.accepted()) == 2


@pytest.mark.parametrize("role", PASSWORDS, indirect=True, ids=range(len(PASSWORDS)))
def test_a_password_written_as_it_is_never_shows(
    tmp_path: Path, sandbox_factory: Any, postgres_server: PostgresServer, role: tuple[str, str]
) -> None:
    user, database = role
    password = PASSWORDS[[f"nasty_{i}" for i in range(len(PASSWORDS))].index(user)]
    write_manifests(tmp_path / "clips", 2)
    box: Sandbox = sandbox_factory()
    env = clean_env(box)
    for port in (postgres_server.port, free_port()):
        state = uri(postgres_server, user, password, database, port=port)
        for args, extra in [
            (("init", "--state", state), {}),
            (("plan", "clips", "--state", state), {}),
            (("apply", "clips", "--state", state), {}),
            (("apply", "clips"), {"RECONCILER_STATE": state}),
            (("state", "list", "--state", state), {}),
            (("state", "list", "--format", "json"), {"RECONCILER_STATE": state}),
            (("state", "migrate", "missing.json", state), {}),
            (("state", "migrate", state, "elsewhere.json"), {}),
        ]:
            done = cli(*args, cwd=tmp_path, env=env | extra)
            assert done.returncode in (1, 2), done.stdout + done.stderr
            assert_hidden(password, done.stdout, done.stderr)
    assert box.accepted() == [], "a state that cannot be used sends nothing"


def test_a_value_libpq_would_misread_is_withheld_with_a_hint(tmp_path: Path) -> None:
    done = cli(
        "state",
        "list",
        "--state",
        "postgresql://ci:Ab/Cd@db.example.com/ops",
        cwd=tmp_path,
        env=clean_env(),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not shown" in done.stderr and "Percent-encode" in done.stderr, done.stderr
    assert "db.example.com" not in done.stderr, "the whole value is withheld"


@pytest.mark.parametrize(
    "value", ["postgresql://ci@db.example.com/ops#", "postgres://ci:Pw%23@db.example.com/ops#"]
)
def test_an_empty_state_name_after_the_hash_is_refused(tmp_path: Path, value: str) -> None:
    for args in (("state", "list", "--state", value), ("init", "--state", value)):
        done = cli(*args, cwd=tmp_path, env=clean_env())
        assert done.returncode == 2, done.stdout + done.stderr
        assert "the state name after '#' is empty" in done.stderr, done.stderr
        assert "Pw%23" not in done.stderr
        no_traceback(done.stdout, done.stderr)
