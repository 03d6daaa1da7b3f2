"""notify.py and `kind: RecordNotifyConfig` (DESIGN §7a): the schema and validate, `${NAME}`
substitution and masking, the plan's `update`/`unchanged`, apply's read-compare-set, the client's
two requests, and every output format of plan and apply, none of which may show a substituted
value.

The client's HTTP shapes are checked with `responses`; everything that talks to a server (reading
and applying with the real client, the command line in a subprocess) runs against the sandbox
(reconciler.sandbox, started here on loopback), its notify faults standing in for JD Cloud's
refusals of a read or a set, and a wrong secret key for a refused signature.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.apply import ApplyResult
from reconciler.client import (
    DEFAULT_ENDPOINT,
    AuthenticationError,
    EndpointUnreachableError,
    FinalError,
    LiveClient,
    UnknownOutcomeError,
)
from reconciler.manifests import parse_text
from reconciler.notify import (
    MASK,
    NO_CREDENTIALS,
    ConfigOutcome,
    ConfigOutcomeKind,
    ConfigPlanItem,
    Current,
    CurrentStatus,
    SubstitutionError,
    Variable,
    apply_configs,
    mask_current,
    masked_template,
    plan_configs,
    read_current,
    substitute,
    template_parts,
    template_problem,
    unknown,
)
from reconciler.plan import Plan, PlanAction, PlanError
from reconciler.report import apply_configs_line, config_outcomes_sentence
from reconciler.sandbox import Sandbox
from reconciler.schema import check_manifest, load_schema
from reconciler.signing import Credentials, verify_request
from reconciler.tasks import TaskSet, load_tasks

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "notify"
CONFIG = FIXTURES / "push-example-com.yaml"
OUTPUT_SCHEMA = ROOT / "schemas" / "output.schema.json"

TOKEN = "cb-T0ken-never-shown-4f9a1c"
VARIABLE = "RECONCILER_CALLBACK_TOKEN"
TEMPLATE = "http://hooks.example.com:8080/callbacks/${RECONCILER_CALLBACK_TOKEN}"
URL = f"http://hooks.example.com:8080/callbacks/{TOKEN}"
SHOWN = "http://hooks.example.com:8080/callbacks/***"
DOMAIN = "push.example.com"
AK, SK = "JDC_NOTIFYTESTKEY01", "S3cr3t-of-the-notify-tests-0b7e"
REQUEST_ID = "c7f0notifyrequestid00000000000001"
ENVIRON = {VARIABLE: TOKEN}

CONFIG_TEXT = """\
apiVersion: reconciler/v1
kind: RecordNotifyConfig
metadata:
  name: {name}
  labels: {{event: cup-final}}
spec:
  publishDomain: {domain}
  notifyUrl: {url}
"""


def config_text(
    url: str = TEMPLATE, *, name: str = "push-example-com", domain: str = DOMAIN
) -> str:
    return CONFIG_TEXT.format(name=name, domain=domain, url=url)


def problems_of(text: str) -> list[tuple[str, str]]:
    loaded = parse_text("notify.yaml", text)
    assert loaded.problems == []
    (manifest,) = loaded.manifests
    return [(problem.field, problem.message) for problem in check_manifest(manifest)]


def loaded_configs(folder: Path) -> TaskSet:
    result = load_tasks([str(folder)])
    assert result.ok, result.problems
    return result


# --- the schema and validate ------------------------------------------------------------------


def test_the_fixture_is_a_valid_config_and_loads_as_one() -> None:
    result = loaded_configs(CONFIG)
    assert result.tasks == []
    (config,) = result.configs
    assert (config.name, config.publish_domain, config.notify_url) == (
        "push-example-com",
        DOMAIN,
        TEMPLATE,
    )
    assert config.labels == {"event": "cup-final"}
    assert (config.url_location.line, config.url_location.column) == (11, 14)
    (verdict,) = result.results
    assert verdict.valid and verdict.hash is None


@pytest.mark.parametrize(
    ("name", "field", "line", "column", "says"),
    [
        ("https.yaml", "spec.notifyUrl", 7, 14, "JD Cloud posts record callbacks to http:// URLs only"),
        ("no-scheme.yaml", "spec.notifyUrl", 7, 14, "must be an http:// URL"),
        ("bad-domain.yaml", "spec.publishDomain", 6, 18, "must be a DNS host name"),
        ("unknown-field.yaml", "spec.notifyURL", 7, 3, "unknown field 'notifyURL'; did you mean 'notifyUrl'?"),
        ("bad-variable.yaml", "spec.notifyUrl", 7, 14, "starts no variable: write ${NAME}"),
    ],
)  # fmt: skip
def test_a_bad_config_is_refused_at_its_value(
    name: str, field: str, line: int, column: int, says: str
) -> None:
    path = FIXTURES / "bad" / name
    result = load_tasks([str(path)])
    found = [p for p in result.problems if p.field == field]
    assert found, result.problems
    problem = found[0]
    assert (problem.file, problem.line, problem.column) == (str(path), line, column)
    assert says in problem.message, problem.message
    assert "not supported yet" not in str(result.problems)


def test_the_cli_validates_good_and_bad_configs(tmp_path: Path) -> None:
    good = cli(tmp_path, "validate", str(CONFIG), "--verbose")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok push-example-com (notify URL)" in good.stdout
    bad = cli(tmp_path, "validate", str(FIXTURES / "bad"), "--format", "json")
    assert bad.returncode == 1
    document = json.loads(bad.stdout)
    assert_output_valid(document)
    assert document["summary"]["invalidManifests"] == 5


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hooks.example.com/cb/${}", "starts no variable"),
        ("http://hooks.example.com/cb/${TOKEN", "starts no variable"),
        ("http://hooks.example.com/cb/a b", "must be an http:// URL"),
        ("http://hooks.example.com/cb/é", "must be an http:// URL"),
        ("http://user:pw@hooks.example.com/cb", "must be an http:// URL"),
        ("http://", "must be an http:// URL"),
        ("HTTP://hooks.example.com/cb", "must be an http:// URL"),
        ("http://hooks.example.com:8080/cb\n", "must be an http:// URL"),
    ],
)
def test_a_malformed_notify_url_is_refused(url: str, says: str) -> None:
    found = problems_of(config_text(json.dumps(url)))
    assert [field for field, _ in found] == ["spec.notifyUrl"], found
    assert says in found[0][1], found


@pytest.mark.parametrize(
    "url",
    [
        TEMPLATE,
        "http://hooks.example.com/callbacks",
        "http://10.0.0.7:8080/cb/${A}/${B_2}",
        "http://${HOOK_HOST}:${HOOK_PORT}/cb/${TOKEN}",
        "http://hooks-${ENV}.example.com/cb?token=${TOKEN}",
        "http://[2001:db8::1]:8080/cb",
        "http://hooks.example.com/literal/$${NOT_A_VARIABLE}/$x",
    ],
)
def test_a_well_formed_notify_url_passes(url: str) -> None:
    assert problems_of(config_text(json.dumps(url))) == []


def test_the_kinds_keep_their_own_fields() -> None:
    task_field = config_text().replace("  publishDomain:", "  appName: live\n  publishDomain:")
    assert problems_of(task_field) == [
        ("spec.appName", "unknown field 'appName'; allowed here: publishDomain, notifyUrl")
    ]
    as_task = config_text().replace("kind: RecordNotifyConfig", "kind: RecordTask")
    fields = {field for field, _ in problems_of(as_task)}
    assert "spec.notifyUrl" in fields and "spec.appName" in fields


def test_two_configs_for_one_domain_name_both_places() -> None:
    path = ROOT / "tests" / "fixtures" / "notify-duplicate" / "configs.yaml"
    result = load_tasks([str(path)])
    (problem,) = result.problems
    assert (problem.line, problem.column, problem.field) == (14, 18, "spec.publishDomain")
    assert f"already declared by 'push-example-com' at {path}:6:18" in problem.message


def test_two_configs_with_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(config_text(domain="push.example.com"))
    (tmp_path / "b.yaml").write_text(config_text(domain="pull.example.com"))
    result = load_tasks([str(tmp_path)])
    (problem,) = result.problems
    assert problem.file == str(tmp_path / "b.yaml") and problem.field == "metadata.name"
    assert f"already used by the RecordNotifyConfig at {tmp_path / 'a.yaml'}:4:9" in problem.message


def test_the_schema_describes_the_kind_for_standard_validators() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert "RecordNotifyConfig" in schema["properties"]["kind"]["examples"]
    assert schema["else"]["then"] == {"$ref": "#/$defs/recordNotifyConfig"}
    standard = Draft202012Validator(schema)
    docs = {path.name: parse_text(str(path), path.read_text()).manifests[0].doc for path in
            [CONFIG, *sorted((FIXTURES / "bad").glob("*.yaml"))]}  # fmt: skip
    assert standard.is_valid(docs["push-example-com.yaml"])
    for name in ("https.yaml", "no-scheme.yaml", "bad-domain.yaml", "unknown-field.yaml"):
        assert not standard.is_valid(docs[name]), name


def test_check_jsonschema_reads_a_config_as_editors_do() -> None:
    schema = ROOT / "schemas" / "record-task.schema.json"
    command = [sys.executable, "-m", "check_jsonschema", "--color", "never", "--schemafile"]
    good = subprocess.run([*command, str(schema), str(CONFIG)], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run(
        [*command, str(schema), str(FIXTURES / "bad" / "https.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "$.spec.notifyUrl" in bad.stdout, bad.stdout


NOTIFY_CORNERS = ["a\n", "a\t", " a", "a\u00a0b", "a\u200bb", "\ufeffa", "\u202e", "球", "%20",
                  "${A}", "$${A}", "${", "$", "#frag", "?q=${T}", ":8080", "@", "[::1]"]  # fmt: skip


def test_check_jsonschema_accepts_every_url_validate_accepts(tmp_path: Path) -> None:
    """DESIGN §3 "one meaning for every value": a standard validator (check-jsonschema, ECMA-262
    patterns) never refuses a notify URL that validate accepts."""
    accepted: list[Path] = []
    for index, corner in enumerate(NOTIFY_CORNERS):
        for value in ("http://h.example.com/" + corner, "http://h.example.com" + corner, corner):
            text = config_text(json.dumps(value))
            if problems_of(text):
                continue
            accepted.append(tmp_path / f"url-{index}-{len(accepted)}.yaml")
            accepted[-1].write_text(text, encoding="utf-8")
    assert len(accepted) > 5
    schema = ROOT / "schemas" / "record-task.schema.json"
    command = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema)]
    result = subprocess.run([*command, *map(str, accepted)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the template: ${NAME}, $${, masking -------------------------------------------------------


def test_template_parts_read_variables_and_the_escape() -> None:
    assert template_parts("http://h/${A}x$${B}/$y${C_1}") == (
        "http://h/",
        Variable("A"),
        "x${B}/$y",
        Variable("C_1"),
    )
    assert masked_template("http://h/${A}x$${B}") == "http://h/***x${B}"
    assert template_problem("http://h/${A}") is None
    assert "position 10" in (template_problem("http://h/${1}") or "")


def test_substitution_needs_every_variable_set_and_usable() -> None:
    assert substitute(TEMPLATE, ENVIRON).url == URL
    assert substitute("http://h/$${X}", {}).url == "http://h/${X}"
    for environ, says in (
        ({}, "is not set in the environment"),
        ({VARIABLE: ""}, "is set but empty"),
        ({VARIABLE: "tok en"}, "holds a character a URL cannot hold"),
        ({VARIABLE: "tok\nen"}, "holds a character a URL cannot hold"),
    ):
        with pytest.raises(SubstitutionError) as raised:
            substitute(TEMPLATE, environ)
        assert raised.value.variable == VARIABLE
        assert str(raised.value).startswith("${RECONCILER_CALLBACK_TOKEN} " + says)
        assert "tok" not in str(raised.value)


def test_a_substituted_value_is_never_in_its_repr() -> None:
    assert TOKEN not in repr(substitute(TEMPLATE, ENVIRON))
    assert TOKEN not in repr(Current(CurrentStatus.SET, URL))


@pytest.mark.parametrize(
    ("current", "shown"),
    [
        (URL, SHOWN),  # the template's shape: its variable's span masked
        ("http://hooks.example.com:8080/callbacks/old-token", SHOWN),
        ("http://old.example.com:9000/hooks/secret?x=1", f"http://old.example.com:9000/{MASK}"),
        ("http://u:pw@old.example.com/cb", f"http://old.example.com/{MASK}"),
        ("http://old.example.com", "http://old.example.com"),
        (f"http://old.example.com/{TOKEN}", f"http://old.example.com/{MASK}"),
        ("not a url", MASK),
    ],
)
def test_a_url_read_from_jd_cloud_is_masked(current: str, shown: str) -> None:
    assert mask_current(current, TEMPLATE, [TOKEN]) == shown


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=12),
    before=st.sampled_from(["", "http://hooks.example.com:8080/callbacks/", "http://x/"]),
)
def test_no_substituted_value_survives_masking(token: str, before: str) -> None:
    assert substitute(TEMPLATE, {VARIABLE: token}).url.endswith(token)
    for current in (f"{before}{token}", f"{before}{token}/{token}", token):
        assert token not in mask_current(current, TEMPLATE, [token])


# --- planning (pure) ---------------------------------------------------------------------------


def plan_of(current: dict[str, Current], folder: Path = CONFIG) -> tuple[ConfigPlanItem, ...]:
    return plan_configs(loaded_configs(folder).configs, current, ENVIRON)


def test_the_same_url_is_unchanged() -> None:
    (item,) = plan_of({DOMAIN: Current(CurrentStatus.SET, URL)})
    assert item.action is PlanAction.UNCHANGED
    assert (item.current.status, item.current.notify_url, item.desired) == ("set", SHOWN, SHOWN)


@pytest.mark.parametrize(
    ("current", "status", "text"),
    [
        (Current(CurrentStatus.SET, "http://old.example.com/cb/x"), "set", "http://old.example.com/***"),
        (Current(CurrentStatus.SET, URL + "x"), "set", SHOWN),  # another token, same shape
        (Current(CurrentStatus.NONE), "none", "none set"),
        (unknown(NO_CREDENTIALS), "unknown", "unknown (no credentials to read it)"),
    ],
)  # fmt: skip
def test_a_different_missing_or_unknown_url_is_an_update(
    current: Current, status: str, text: str
) -> None:
    (item,) = plan_of({DOMAIN: current})
    assert item.action is PlanAction.UPDATE
    assert (item.current.status.value, item.current.text) == (status, text)
    assert TOKEN not in json.dumps(item.to_json())


def test_a_plan_with_configs_counts_them_and_round_trips() -> None:
    items = plan_of({DOMAIN: Current(CurrentStatus.NONE)})
    plan = Plan(items=(), created_at="2026-11-24T12:00:00Z", fingerprint="0" * 64, configs=items)
    assert plan.has_changes
    assert plan.summary() == "Plan: 0 to submit; notify URL: 1 to update."
    document = plan.to_json()
    assert_output_valid(document)
    assert document["configs"][0]["notifyUrl"] == TEMPLATE  # the template, never the value
    again = Plan.from_json({**document, "paths": [], "directory": "/"})
    assert again.configs == items
    unchanged = Plan(
        items=(),
        created_at="2026-11-24T12:00:00Z",
        fingerprint="0" * 64,
        configs=plan_of({DOMAIN: Current(CurrentStatus.SET, URL)}),
    )
    assert not unchanged.has_changes
    assert unchanged.summary() == "Plan: 0 to submit; notify URL: 1 unchanged."
    assert (
        "configs"
        not in Plan(items=(), created_at="2026-11-24T12:00:00Z", fingerprint="0" * 64).to_json()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"action": "create"},
        {"current": {"status": "maybe"}},
        {"notifyUrl": "http://h/${1}"},
        {"line": "one"},
    ],
)
def test_a_malformed_saved_config_is_refused(change: dict[str, Any]) -> None:
    (item,) = plan_of({DOMAIN: Current(CurrentStatus.NONE)})
    with pytest.raises(PlanError, match="configs are incomplete or malformed"):
        ConfigPlanItem.from_json({**item.to_json(), **change})


# --- the client: GET and POST, with responses for the HTTP shapes ------------------------------

GET_URL = f"{DEFAULT_ENDPOINT}/v1/recordNotifys/{DOMAIN}"
SET_URL = f"{DEFAULT_ENDPOINT}/v1/recordNotifys:config"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveClient]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with LiveClient(Credentials(AK, SK), backoff_factor=0.0, backoff_jitter=0.0) as made:
        yield made


def jd_error(status: int, code: str, message: str) -> str:
    return json.dumps(
        {"requestId": REQUEST_ID, "error": {"code": status, "status": code, "message": message}}
    )


def check_signed(request: Any) -> None:
    parts = urlsplit(request.url)
    headers = {**request.headers, "Host": parts.netloc}
    body = request.body if isinstance(request.body, bytes) else b""
    assert verify_request(request.method, parts.path, parts.query, headers, body, {AK: SK}.get)


@responses.activate
def test_get_reads_the_url_set_now(client: LiveClient) -> None:
    result = {"publishDomain": DOMAIN, "notifyUrl": URL}
    responses.add(responses.GET, GET_URL, json={"requestId": REQUEST_ID, "result": result})
    read = client.get_record_notify_config(DOMAIN)
    assert (read.notify_url, read.request_id, read.http_status) == (URL, REQUEST_ID, 200)
    assert TOKEN not in repr(read)
    (call,) = responses.calls
    check_signed(call.request)


@responses.activate
def test_get_404_in_jd_clouds_shape_is_none_set(client: LiveClient) -> None:
    responses.add(responses.GET, GET_URL, status=404, body=jd_error(404, "NOT_FOUND", "none"))
    read = client.get_record_notify_config(DOMAIN)
    assert (read.notify_url, read.request_id, read.http_status) == (None, REQUEST_ID, 404)


@responses.activate
def test_a_404_that_is_not_jd_clouds_is_an_error(client: LiveClient) -> None:
    responses.add(responses.GET, GET_URL, status=404, body="<html>no such page</html>")
    with pytest.raises(FinalError, match="HTTP 404: <html>no such page</html>"):
        client.get_record_notify_config(DOMAIN)


@responses.activate
def test_set_posts_the_url_signed(client: LiveClient) -> None:
    responses.add(responses.POST, SET_URL, json={"requestId": REQUEST_ID})
    result = client.set_record_notify_config(DOMAIN, URL)
    assert (result.request_id, result.http_status) == (REQUEST_ID, 200)
    (call,) = responses.calls
    assert json.loads(call.request.body) == {"publishDomain": DOMAIN, "notifyUrl": URL}
    assert call.request.headers["Content-Type"] == "application/json"
    check_signed(call.request)


@pytest.mark.parametrize(
    ("status", "code", "error", "says"),
    [
        (401, "UNAUTHENTICATED", AuthenticationError, "the credentials were refused"),
        (403, "PERMISSION_DENIED", FinalError, "the access key may not use this domain"),
        (400, "INVALID_ARGUMENT", FinalError, "nothing was"),
    ],
)
@responses.activate
def test_a_refusal_is_typed_says_everything_and_is_not_retried(
    client: LiveClient, status: int, code: str, error: type[Exception], says: str
) -> None:
    for method, url in ((responses.GET, GET_URL), (responses.POST, SET_URL)):
        responses.add(method, url, status=status, body=jd_error(status, code, "refused here"))
    for call in (
        lambda: client.get_record_notify_config(DOMAIN),
        lambda: client.set_record_notify_config(DOMAIN, URL),
    ):
        with pytest.raises(error) as raised:
            call()
        text = str(raised.value)
        assert (
            f"notify URL of {DOMAIN}: HTTP {status} {code}: refused here (requestId {REQUEST_ID}); "
            in text
        )
        assert says in text and TOKEN not in text
        assert getattr(raised.value, "request_id", None) == REQUEST_ID
    assert len(responses.calls) == 2


@responses.activate
def test_5xx_answers_are_retried_both_ways(client: LiveClient) -> None:
    for method, url in ((responses.GET, GET_URL), (responses.POST, SET_URL)):
        responses.add(method, url, status=500, body=jd_error(500, "INTERNAL", "oops"))
        responses.add(method, url, status=502, body="bad gateway")
    responses.add(responses.GET, GET_URL, json={"requestId": REQUEST_ID, "result": None})
    responses.add(responses.POST, SET_URL, json={"requestId": REQUEST_ID})
    assert client.get_record_notify_config(DOMAIN).notify_url is None
    assert client.set_record_notify_config(DOMAIN, URL).request_id == REQUEST_ID
    assert [call.request.method for call in responses.calls] == ["GET"] * 3 + ["POST"] * 3
    nonces = {call.request.headers["x-jdcloud-nonce"] for call in responses.calls}
    assert len(nonces) == 6  # every attempt signed afresh


@responses.activate
def test_still_failing_after_every_retry(client: LiveClient) -> None:
    responses.add(responses.GET, GET_URL, status=500, body=jd_error(500, "INTERNAL", "oops"))
    responses.add(responses.POST, SET_URL, status=503, body=jd_error(503, "BUSY", "later"))
    with pytest.raises(FinalError, match=f"HTTP 500 INTERNAL: oops \\(requestId {REQUEST_ID}\\)"):
        client.get_record_notify_config(DOMAIN)
    with pytest.raises(UnknownOutcomeError, match="it is unknown whether it was set"):
        client.set_record_notify_config(DOMAIN, URL)
    assert len(responses.calls) == 2 * 5


@responses.activate
def test_an_unexpected_answer_is_an_error(client: LiveClient) -> None:
    responses.add(responses.GET, GET_URL, json={"requestId": REQUEST_ID, "result": ["x"]})
    responses.add(responses.POST, SET_URL, json={"ok": True})
    with pytest.raises(FinalError, match="is not the expected"):
        client.get_record_notify_config(DOMAIN)
    with pytest.raises(UnknownOutcomeError, match="no requestId"):
        client.set_record_notify_config(DOMAIN, URL)


def test_a_domain_that_is_no_segment_never_leaves(client: LiveClient) -> None:
    with pytest.raises(FinalError, match="must not contain '/'"):
        client.get_record_notify_config("push.example.com/x")


def test_an_unreachable_endpoint_is_said_so(unused_port: int) -> None:
    endpoint = f"http://127.0.0.1:{unused_port}"
    made = LiveClient(Credentials(AK, SK), endpoint=endpoint, backoff_factor=0.0)
    with made as client, pytest.raises(EndpointUnreachableError, match="could not connect"):
        client.get_record_notify_config(DOMAIN)


@responses.activate
def test_nothing_logged_holds_the_url(client: LiveClient, caplog: pytest.LogCaptureFixture) -> None:
    result = {"publishDomain": DOMAIN, "notifyUrl": URL}
    responses.add(responses.GET, GET_URL, json={"requestId": REQUEST_ID, "result": result})
    responses.add(responses.POST, SET_URL, status=400, body=jd_error(400, "BAD", URL))
    responses.add(responses.POST, SET_URL, json={"requestId": REQUEST_ID})
    with caplog.at_level(logging.DEBUG):
        client.get_record_notify_config(DOMAIN)
        with pytest.raises(FinalError):
            client.set_record_notify_config(DOMAIN, URL)
        client.set_record_notify_config(DOMAIN, URL)
    assert caplog.records and TOKEN not in caplog.text
    assert '"notifyUrl":"(withheld)"' in caplog.text


# --- reading and applying with a client (the real one, against the sandbox) --------------------


@dataclass
class SandboxApi:
    """A running sandbox, what the command line needs to reach it, and what it was asked."""

    box: Sandbox
    #: notify_received() entries made before the test's own requests (preset()'s).
    preset_requests: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "JDCLOUD_ACCESS_KEY": self.box.credentials.access_key,
            "JDCLOUD_SECRET_KEY": self.box.credentials.secret_key,
            "RECONCILER_ENDPOINT": self.box.url,
            VARIABLE: TOKEN,
            **extra,
        }

    def preset(self, publish_domain: str, notify_url: str) -> None:
        """Set a notify URL through the API, as someone else did before the test."""
        with api_client(self) as client:
            client.set_record_notify_config(publish_domain, notify_url)
        self.preset_requests = len(self.box.notify_received())

    def seen(self) -> list[tuple[str, str, str]]:
        """(method, publishDomain, outcome) of each checked notify request since preset()."""
        received = self.box.notify_received()[self.preset_requests :]
        return [(e["method"], e["publishDomain"], e["outcome"]) for e in received]

    def sets(self) -> int:
        return sum(1 for method, _, _ in self.seen() if method == "POST")


@pytest.fixture
def start_api(sandbox_factory: Any) -> Any:
    """start_api(**SandboxConfig options) -> a SandboxApi on a sandbox started for the test."""

    def start(**options: Any) -> SandboxApi:
        return SandboxApi(sandbox_factory(**options))

    return start


@pytest.fixture
def api(start_api: Any) -> SandboxApi:
    """The sandbox with no faults."""
    made: SandboxApi = start_api()
    return made


WRONG_SECRET = "not-the-sandbox-secret-key-0000"


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api_client(api: SandboxApi, *, secret_key: str | None = None) -> LiveClient:
    credentials = api.box.credentials
    if secret_key is not None:
        credentials = Credentials(credentials.access_key, secret_key)
    return LiveClient(credentials, endpoint=api.box.url, backoff_factor=0.0, backoff_jitter=0.0)


def test_read_current_tells_set_none_and_a_refusal(api: SandboxApi, start_api: Any) -> None:
    configs = loaded_configs(CONFIG).configs
    with api_client(api) as client:
        assert read_current(client, configs)[DOMAIN].status is CurrentStatus.NONE
        client.set_record_notify_config(DOMAIN, URL)
        now = read_current(client, configs)[DOMAIN]
        assert (now.status, now.notify_url) == (CurrentStatus.SET, URL)
    with api_client(start_api(notify_read_failures={403: 1.0})) as client:
        refused = read_current(client, configs)[DOMAIN]
    assert refused.status is CurrentStatus.UNKNOWN and not refused.stops_run
    assert "HTTP 403 PERMISSION_DENIED" in (refused.reason or "")
    with api_client(api, secret_key=WRONG_SECRET) as client:
        wrong = read_current(client, configs)[DOMAIN]
    assert wrong.stops_run and "HTTP 401 UNAUTHENTICATED" in (wrong.reason or "")


def test_apply_sets_only_what_differs(api: SandboxApi) -> None:
    items = plan_of({DOMAIN: Current(CurrentStatus.NONE)})
    with api_client(api) as client:
        (first,) = apply_configs(items, client, environ=ENVIRON)
        assert first.kind is ConfigOutcomeKind.UPDATED and first.request_id
        assert first.before is not None and first.before.text == "none set"
        assert api.box.notify_url(DOMAIN) == URL and api.sets() == 1
        (second,) = apply_configs(items, client, environ=ENVIRON)  # read again: already set
        assert second.kind is ConfigOutcomeKind.UNCHANGED
        assert api.sets() == 1
        (third,) = apply_configs(items, client, environ={VARIABLE: "rotated-token-1"})
        assert third.kind is ConfigOutcomeKind.UPDATED and api.sets() == 2
        assert third.before is not None and third.before.notify_url == SHOWN


def test_apply_masks_what_the_server_says(start_api: Any) -> None:
    items = plan_of({DOMAIN: Current(CurrentStatus.NONE)})
    api = start_api(notify_set_failures={403: 1.0})  # its message names the domain
    with api_client(api) as client:
        (outcome,) = apply_configs(items, client, environ={VARIABLE: DOMAIN})
    assert outcome.kind is ConfigOutcomeKind.FAILED and outcome.http_status == 403
    assert outcome.request_id and outcome.request_id in (outcome.message or "")
    assert DOMAIN not in (outcome.message or "")  # the value substituted, wherever it appears
    assert api.seen() == [("GET", DOMAIN, "none"), ("POST", DOMAIN, "injected-403")]


def test_a_401_leaves_the_rest_not_sent(api: SandboxApi, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(config_text(name="a", domain="a.example.com"))
    (tmp_path / "b.yaml").write_text(config_text(name="b", domain="b.example.com"))
    items = plan_of({}, tmp_path)
    with api_client(api, secret_key=WRONG_SECRET) as client:
        first, second = apply_configs(items, client, environ=ENVIRON)
    assert first.kind is ConfigOutcomeKind.FAILED and "credentials were refused" in (
        first.message or ""
    )
    assert second.kind is ConfigOutcomeKind.NOT_SENT
    counts = api.box.counts()
    assert (counts.requests, counts.rejected) == (1, {401: 1})  # a's read, and nothing more


class _StuckClient:
    """A client whose read never answers until told to (an endpoint gone silent)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked = threading.Event()

    def get_record_notify_config(self, publish_domain: str) -> Any:
        self.asked.set()
        self.release.wait(60)
        raise AssertionError("released only after the test")

    def set_record_notify_config(self, publish_domain: str, notify_url: str) -> Any:
        raise AssertionError("never reached")


def test_a_second_interrupt_leaves_a_request_in_flight_behind(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(config_text(name="a", domain="a.example.com"))
    (tmp_path / "b.yaml").write_text(config_text(name="b", domain="b.example.com"))
    items = plan_of({}, tmp_path)
    stuck, abort = _StuckClient(), threading.Event()
    threading.Thread(target=lambda: stuck.asked.wait(60) and abort.set(), daemon=True).start()
    try:
        first, second = apply_configs(items, stuck, environ=ENVIRON, abort=abort)
    finally:
        stuck.release.set()
    assert first.kind is ConfigOutcomeKind.FAILED and "apply was aborted" in (first.message or "")
    assert second.kind is ConfigOutcomeKind.NOT_SENT


def test_a_first_interrupt_sends_nothing_more(api: SandboxApi) -> None:
    stop = threading.Event()
    stop.set()
    with api_client(api) as client:
        (outcome,) = apply_configs(plan_of({}), client, environ=ENVIRON, stop=stop)
    assert outcome.kind is ConfigOutcomeKind.NOT_SENT and api.box.counts().requests == 0


# --- what apply's summary says of the notify URLs (pure) ----------------------------------------


def outcomes_of(folder: Path, *kinds: ConfigOutcomeKind) -> ApplyResult:
    """An apply result whose notify URLs (the configs in `folder`, in order) had `kinds`."""
    items = plan_of({}, folder)
    assert len(items) == len(kinds)
    outcomes = tuple(ConfigOutcome(item, kind) for item, kind in zip(items, kinds, strict=True))
    return ApplyResult(outcomes=(), configs=outcomes)


def test_the_configs_sentence_names_what_was_done_for_each_domain(tmp_path: Path) -> None:
    updated, unchanged = ConfigOutcomeKind.UPDATED, ConfigOutcomeKind.UNCHANGED
    one = outcomes_of(CONFIG, updated)
    assert config_outcomes_sentence(one) == "Notify URL set for push.example.com."
    assert apply_configs_line(one, tasks_to_send=True) == "Notify URL set for push.example.com."
    assert (
        apply_configs_line(one, tasks_to_send=False)
        == "No task to submit; notify URL set for push.example.com."
    )
    same = outcomes_of(CONFIG, unchanged)
    assert (
        apply_configs_line(same, tasks_to_send=False)
        == "Nothing to submit; notify URL unchanged for push.example.com."
    )
    none = ApplyResult(outcomes=())
    assert config_outcomes_sentence(none) is None
    assert apply_configs_line(none, tasks_to_send=False) == "Nothing to submit."
    assert apply_configs_line(none, tasks_to_send=True) is None

    domains = [f"d{n}.example.com" for n in range(10)]
    for n, domain in enumerate(domains):
        (tmp_path / f"{n}.yaml").write_text(config_text(name=f"c{n}", domain=domain))
    kinds = [updated] * 7 + [unchanged, ConfigOutcomeKind.FAILED, ConfigOutcomeKind.NOT_SENT]
    # plan_of lists them by file name: 0.yaml, 1.yaml, ... as written.
    many = outcomes_of(tmp_path, *kinds)
    assert config_outcomes_sentence(many) == (
        "Notify URLs set for d0.example.com, d1.example.com, d2.example.com, d3.example.com, "
        "d4.example.com and 2 more; unchanged for d7.example.com; not set for d8.example.com "
        "(failed); not set for d9.example.com (apply stopped first)."
    )
    line = apply_configs_line(many, tasks_to_send=False)
    assert line is not None and line.startswith("No task to submit; notify URLs set for d0.")


# --- the command line ---------------------------------------------------------------------------


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JDCLOUD_", "RECONCILER_"))}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env={**base, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=120,
    )


def assert_output_valid(document: Any) -> None:
    validator = Draft202012Validator(json.loads(OUTPUT_SCHEMA.read_text(encoding="utf-8")))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


WAITING_TASK = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: later-clip
spec:
  publishDomain: push.example.com
  appName: live
  streamName: later
  recordTimes:
    - startTime: "2099-01-01T10:00:00Z"
      endTime: "2099-01-01T10:01:00Z"
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Manifests (the config and a task still waiting for its recording) and an empty state."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "notify.yaml").write_text(CONFIG.read_text())
    (tmp_path / "manifests" / "later.yaml").write_text(WAITING_TASK)
    assert cli(tmp_path, "init").returncode == 0
    return tmp_path


def assert_masked(result: subprocess.CompletedProcess[str]) -> None:
    assert TOKEN not in result.stdout and TOKEN not in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("fmt", ["text", "json", "github", "markdown"])
def test_plan_shows_an_update_masked_in_every_format(
    api: SandboxApi, workspace: Path, fmt: str
) -> None:
    api.preset(DOMAIN, "http://old.example.com:9000/hooks/old-secret-value")
    result = cli(workspace, "plan", "manifests", "-f", fmt, "--detailed-exitcode", env=api.env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert_masked(result)
    assert "old-secret-value" not in result.stdout
    if fmt == "json":
        document = json.loads(result.stdout)
        assert_output_valid(document)
        (item,) = document["configs"]
        assert (item["action"], item["notifyUrl"], item["shown"]) == ("update", TEMPLATE, SHOWN)
        assert item["current"] == {"status": "set", "notifyUrl": "http://old.example.com:9000/***"}
    elif fmt == "markdown":
        assert "#### Notify URLs to update (1)" in result.stdout
        assert "http://old.example.com:9000/\\*\\*\\*" in result.stdout
    else:
        change = f"http://old.example.com:9000/*** -> {SHOWN}"
        assert change in result.stdout
    if fmt == "github":
        assert (
            "::notice file=manifests/notify.yaml,line=4,title=reconciler plan::update notify URL"
            in result.stdout
        )
    assert api.seen() == [("GET", DOMAIN, "read")]  # plan only reads
    assert "notify URL: 1 to update" in result.stdout or fmt == "json"


def test_plan_shows_unchanged_when_the_url_is_set(api: SandboxApi, workspace: Path) -> None:
    api.preset(DOMAIN, URL)
    result = cli(workspace, "plan", "manifests", "--detailed-exitcode", "-v", env=api.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"Notify URLs unchanged (1):\n  = push-example-com  push.example.com  {SHOWN}"
        in result.stdout
    )
    assert "notify URL: 1 unchanged." in result.stdout
    assert_masked(result)
    quiet = cli(workspace, "plan", "manifests", env=api.env())
    assert "Notify URLs unchanged" not in quiet.stdout  # listed with --verbose, as tasks are


def test_plan_404_is_an_update_from_none(api: SandboxApi, workspace: Path) -> None:
    result = cli(workspace, "plan", "manifests", env=api.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"none set -> {SHOWN}" in result.stdout


def test_plan_without_credentials_is_an_update_with_a_warning(workspace: Path) -> None:
    result = cli(workspace, "plan", "manifests", "--detailed-exitcode", env={VARIABLE: TOKEN})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"unknown (no credentials to read it) -> {SHOWN}" in result.stdout
    assert "warning: JDCLOUD_ACCESS_KEY and JDCLOUD_SECRET_KEY are not set" in result.stderr
    assert "('push-example-com') is unknown (no credentials to read it)" in result.stderr
    document = json.loads(
        cli(workspace, "plan", "manifests", "-f", "json", env={VARIABLE: TOKEN}).stdout
    )
    assert document["configs"][0]["current"] == {"status": "unknown", "reason": NO_CREDENTIALS}


@pytest.mark.parametrize("status", [401, 403, 500])
def test_plan_says_why_a_url_could_not_be_read(
    start_api: Any, workspace: Path, status: int
) -> None:
    # A 401 is the sandbox refusing a wrong signature; a 403 or 500 its notify read fault.
    api = start_api(notify_read_failures={} if status == 401 else {status: 1.0})
    env = api.env(JDCLOUD_SECRET_KEY=WRONG_SECRET) if status == 401 else api.env()
    result = cli(workspace, "plan", "manifests", "--detailed-exitcode", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    unknown = f"unknown (reading the notify URL of {DOMAIN}: HTTP {status} "
    assert unknown in result.stdout and "(requestId " in result.stdout
    assert f"is {unknown}" in result.stderr
    assert WRONG_SECRET not in result.stdout + result.stderr
    tries = 5 if status == 500 else 1  # a 5xx is tried again, a refusal is not
    if status == 401:
        assert api.box.counts().rejected == {401: tries} and api.seen() == []
    else:
        assert api.seen() == [("GET", DOMAIN, f"injected-{status}")] * tries


def test_an_unset_variable_stops_plan_and_apply_before_anything_is_sent(
    api: SandboxApi, workspace: Path
) -> None:
    env = {k: v for k, v in api.env().items() if k != VARIABLE}
    for command in ("plan", "apply"):
        result = cli(workspace, command, "manifests", env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            "manifests/notify.yaml:11:14: spec.notifyUrl: ${RECONCILER_CALLBACK_TOKEN} is not "
            "set in the environment"
        ) in result.stdout
    document = json.loads(cli(workspace, "apply", "manifests", "-f", "json", env=env).stdout)
    assert_output_valid(document)
    assert document["command"] == "apply" and document["problems"][0]["line"] == 11
    assert api.box.counts().requests == 0
    validate = cli(workspace, "validate", "manifests", env=env)  # validate reads no environment
    assert validate.returncode == 0, validate.stdout


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_apply_that_only_sets_a_url_says_so(api: SandboxApi, workspace: Path, fmt: str) -> None:
    # The workspace's one task still waits for its recording: only the notify URL changes.
    first = cli(workspace, "apply", "manifests", "-f", fmt, env=api.env())
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli(workspace, "apply", "manifests", "-f", fmt, env=api.env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert api.sets() == 1
    if fmt == "text":
        assert "Nothing to submit." not in first.stdout
        lines = first.stdout.splitlines()
        said = lines.index("No task to submit; notify URL set for push.example.com.")
        assert lines[said + 1] == "Apply complete: 0 submitted, 1 waiting; notify URL: 1 updated."
        assert "Nothing to submit; notify URL unchanged for push.example.com." in second.stdout
    elif fmt == "markdown":
        assert "**Apply complete: 0 submitted, 1 waiting; notify URL: 1 updated.**" in first.stdout
        assert "\nNotify URL set for push.example.com.\n" in first.stdout
        assert "\nNotify URL unchanged for push.example.com.\n" in second.stdout
    else:
        documents = [json.loads(first.stdout), json.loads(second.stdout)]
        for document in documents:
            assert_output_valid(document)
            assert document["summary"] == {"submitted": 0, "failed": 0, "unknown": 0, "not-sent": 0}
        counts = [document["configSummary"] for document in documents]
        assert counts == [
            {"updated": 1, "unchanged": 0, "failed": 0, "not-sent": 0},
            {"updated": 0, "unchanged": 1, "failed": 0, "not-sent": 0},
        ]


def test_apply_json_without_configs_has_no_config_summary(tmp_path: Path) -> None:
    (tmp_path / "later.yaml").write_text(WAITING_TASK)
    assert cli(tmp_path, "init").returncode == 0
    result = cli(tmp_path, "apply", ".", "--sandbox", "-f", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert_output_valid(document)
    assert "configs" not in document and "configSummary" not in document
    text = cli(tmp_path, "apply", ".", "--sandbox")
    assert "Nothing to submit.\n" in text.stdout  # as before: no notify URL to speak of


@pytest.mark.parametrize("fmt", ["text", "json", "github", "markdown"])
def test_apply_sets_the_url_once_masked_in_every_format(
    api: SandboxApi, workspace: Path, fmt: str
) -> None:
    first = cli(workspace, "apply", "manifests", "-f", fmt, env=api.env())
    assert first.returncode == 0, first.stdout + first.stderr
    assert api.box.notify_url(DOMAIN) == URL and api.sets() == 1
    assert_masked(first)
    if fmt == "json":
        document = json.loads(first.stdout)
        assert_output_valid(document)
        (outcome,) = document["configs"]
        assert outcome["outcome"] == "updated" and outcome["before"] == {"status": "none"}
        assert outcome["shown"] == SHOWN and outcome["requestId"]
    elif fmt == "text":
        assert (
            f"updated notify URL of {DOMAIN} (push-example-com): {SHOWN} (was none set)"
            in first.stdout
        )
        assert "notify URL: 1 updated." in first.stdout
    elif fmt == "github":
        assert (
            "::notice file=manifests/notify.yaml,line=4,title=reconciler apply::updated"
            in first.stdout
        )
    else:
        assert (
            f"| updated | push-example-com | {DOMAIN} | http://hooks.example.com:8080/callbacks/\\*\\*\\* |"
            in first.stdout
        )
    second = cli(workspace, "apply", "manifests", "-f", fmt, env=api.env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert api.sets() == 1  # read, found the same: not set again
    assert_masked(second)
    state = (workspace / "reconciler-state.json").read_text()
    assert TOKEN not in state and "notify" not in state.lower()  # nothing about configs


@pytest.mark.parametrize("status", [401, 403, 500])
def test_apply_shows_a_refused_set_with_its_request_id(
    start_api: Any, workspace: Path, status: int
) -> None:
    api = start_api(notify_set_failures={status: 1.0})  # reads answer, sets are refused
    result = cli(workspace, "apply", "manifests", env=api.env())
    assert result.returncode == 1, result.stdout + result.stderr
    failed = f"failed notify URL of {DOMAIN} (push-example-com): setting the notify URL of"
    assert f"{failed} {DOMAIN}: HTTP {status} " in result.stdout
    assert "(requestId " in result.stdout and "notify URL: 1 failed." in result.stdout
    assert_masked(result)
    assert api.box.notify_url(DOMAIN) is None and api.box.accepted() == []
    tries = 5 if status == 500 else 1  # a 500 is tried again (outcome unknown), a refusal not
    read = [("GET", DOMAIN, "none")] * 2  # for the plan, then again just before setting
    assert api.seen() == read + [("POST", DOMAIN, f"injected-{status}")] * tries
    document = json.loads(cli(workspace, "apply", "manifests", "-f", "json", env=api.env()).stdout)
    assert_output_valid(document)
    assert document["exitCode"] == 1


def test_apply_stops_before_sending_when_reading_is_refused(
    api: SandboxApi, workspace: Path
) -> None:
    result = cli(workspace, "apply", "manifests", env=api.env(JDCLOUD_SECRET_KEY=WRONG_SECRET))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: reading the notify URL of {DOMAIN}: HTTP 401 UNAUTHENTICATED" in result.stderr
    assert result.stderr.rstrip().endswith("nothing was sent")
    counts = api.box.counts()
    assert (counts.requests, counts.rejected) == (1, {401: 1})  # the read, refused; nothing more


def test_apply_stops_when_the_endpoint_cannot_be_reached(workspace: Path, unused_port: int) -> None:
    endpoint = f"http://127.0.0.1:{unused_port}"
    env = {"JDCLOUD_ACCESS_KEY": AK, "JDCLOUD_SECRET_KEY": SK, VARIABLE: TOKEN}
    result = cli(workspace, "apply", "manifests", "--endpoint", endpoint, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: reading the notify URL of {DOMAIN}: could not connect to 127.0.0." in result.stderr
    )
    assert result.stderr.count("nothing was sent") == 1


def test_plan_refuses_a_malformed_endpoint(workspace: Path) -> None:
    result = cli(workspace, "plan", "manifests", "--endpoint", "ftp://x", env={VARIABLE: TOKEN})
    assert result.returncode == 2 and "'--endpoint' (or RECONCILER_ENDPOINT)" in result.stderr


def test_dry_run_reads_as_plan_does_and_sets_nothing(api: SandboxApi, workspace: Path) -> None:
    result = cli(workspace, "apply", "manifests", "--dry-run", env=api.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"none set -> {SHOWN}" in result.stdout
    assert api.seen() == [("GET", DOMAIN, "none")]  # the read its plan shows; no set


def test_a_saved_plan_holds_the_template_and_apply_substitutes_again(
    api: SandboxApi, workspace: Path
) -> None:
    made = cli(workspace, "plan", "manifests", "--out", "plan.json", env=api.env())
    assert made.returncode == 0, made.stdout + made.stderr
    saved = (workspace / "plan.json").read_text()
    assert TOKEN not in saved and TEMPLATE in saved
    rotated = "rotated-token-after-the-plan"
    applied = cli(workspace, "apply", "plan.json", env=api.env(**{VARIABLE: rotated}))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert api.box.notify_url(DOMAIN) == f"http://hooks.example.com:8080/callbacks/{rotated}"
    assert rotated not in applied.stdout + applied.stderr


def test_a_saved_plan_whose_url_was_edited_is_refused(api: SandboxApi, workspace: Path) -> None:
    assert cli(workspace, "plan", "manifests", "--out", "plan.json", env=api.env()).returncode == 0
    path = workspace / "plan.json"
    path.write_text(path.read_text().replace("hooks.example.com:8080", "evil.example.com"))
    result = cli(workspace, "apply", "plan.json", env=api.env())
    assert result.returncode == 1
    assert (
        "its notifyUrl is 'http://evil.example.com/callbacks/${RECONCILER_CALLBACK_TOKEN}'"
        in result.stderr
    )
    assert api.sets() == 0


def test_the_selector_picks_configs_too(api: SandboxApi, workspace: Path) -> None:
    other = cli(workspace, "plan", "manifests", "-l", "event=other", env=api.env())
    assert "notify URL" not in other.stdout and api.box.counts().requests == 0
    picked = cli(workspace, "plan", "manifests", "-l", "event=cup-final", env=api.env())
    assert "notify URL: 1 to update" in picked.stdout
    assert "no manifest has the label" not in picked.stderr


# --- end to end, against the sandbox ------------------------------------------------------------


@pytest.mark.e2e
def test_apply_sandbox_sets_the_notify_url_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "notify.yaml").write_text(CONFIG.read_text())
    clip = WAITING_TASK.replace("2099-01-01", "2026-01-01").replace("later", "goal")
    (tmp_path / "clip.yaml").write_text(clip)
    result = cli(tmp_path, "apply", ".", "--sandbox", "-f", "json", env={VARIABLE: TOKEN})
    assert result.returncode == 0, result.stdout + result.stderr
    assert_masked(result)
    document = json.loads(result.stdout)
    assert_output_valid(document)
    (config,) = document["configs"]
    assert (config["outcome"], config["before"]) == ("updated", {"status": "none"})
    assert document["summary"]["submitted"] == 1
    assert document["configSummary"] == {"updated": 1, "unchanged": 0, "failed": 0, "not-sent": 0}
    text = cli(tmp_path, "apply", ".", "--sandbox", "--dry-run", env={VARIABLE: TOKEN})
    assert f"none set -> {SHOWN}" in text.stdout  # a new sandbox each run: none set again


@pytest.mark.e2e
def test_apply_sets_the_url_in_a_running_sandbox_before_its_clip(
    tmp_path: Path, sandbox_factory: Any
) -> None:
    box = sandbox_factory()
    env = {
        "JDCLOUD_ACCESS_KEY": box.credentials.access_key,
        "JDCLOUD_SECRET_KEY": box.credentials.secret_key,
        "RECONCILER_ENDPOINT": box.url,
        VARIABLE: TOKEN,
    }
    (tmp_path / "notify.yaml").write_text(CONFIG.read_text())
    clip = WAITING_TASK.replace("2099-01-01", "2026-01-01").replace("later", "goal")
    (tmp_path / "clip.yaml").write_text(clip)
    assert cli(tmp_path, "init").returncode == 0
    planned = cli(tmp_path, "plan", ".", "--detailed-exitcode", env=env)
    assert planned.returncode == 2 and f"none set -> {SHOWN}" in planned.stdout
    applied = cli(tmp_path, "apply", ".", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert_masked(applied)
    lines = applied.stdout.splitlines()
    set_at = next(i for i, line in enumerate(lines) if line.startswith("updated notify URL"))
    sent_at = next(i for i, line in enumerate(lines) if line.startswith("submitted goal-clip"))
    assert set_at < sent_at  # the URL first: the clip's callback goes where the manifest says
    summary = lines.index("Apply complete: 1 submitted; notify URL: 1 updated.")
    assert lines[summary - 1] == "Notify URL set for push.example.com."
    with LiveClient(box.credentials, endpoint=box.url) as client:
        assert client.get_record_notify_config(DOMAIN).notify_url == URL
    again = cli(tmp_path, "plan", ".", "--detailed-exitcode", "-v", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"= push-example-com  push.example.com  {SHOWN}" in again.stdout
