"""The schema as an editor uses it: the real yaml-language-server (tests/editor/package-lock.json)
driven over LSP on stdio, with manifests that name the schema in their modeline, as the README
shows. Each kind completes with its own fields, and a typo gets a diagnostic.

Without Node.js or tests/editor/node_modules this module is skipped, saying what to install;
with CI set (as in .ci/run, which installs both) it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.editor.lsp import LanguageServer, missing

MISSING = missing()
if MISSING:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        raise RuntimeError(
            f"CI is set, so the schema must be checked in a real yaml-language-server, but this "
            f"machine {MISSING} (.ci/run installs both)"
        )
    pytest.skip(f"driving yaml-language-server {MISSING}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "reconciler" / "schemas" / "record-task.schema.json"
CURSOR = "<|>"

SPEC_FIELDS = {
    "publishDomain",
    "appName",
    "streamName",
    "recordTimes",
    "saveBucket",
    "saveEndpoint",
    "recordFileType",
    "saveObject",
    "taskExternalId",
}
SET_FIELDS = {"template", "clips"}
NOTIFY_FIELDS = {"publishDomain", "notifyUrl"}
# Names of the schema's own definitions, which an editor shows when they leak into a kind
# they are not part of.
INTERNAL = {
    "setSpec",
    "recordTaskSet",
    "recordTask",
    "recordNotifyConfig",
    "notifySpec",
    "notifyMetadata",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanguageServer]:
    with LanguageServer(tmp_path_factory.mktemp("workspace")) as running:
        yield running


def document(body: str) -> str:
    return f"# yaml-language-server: $schema={SCHEMA.as_uri()}\n{body}"


def complete(server: LanguageServer, name: str, body: str) -> set[str]:
    """The labels offered at the cursor (<|>) in `body`, opened as a manifest named `name`."""
    text = document(body)
    before = text[: text.index(CURSOR)].split("\n")
    uri = server.open(server.root / name, text.replace(CURSOR, ""))
    return server.completion_labels(uri, len(before) - 1, len(before[-1]))


def test_a_record_task_spec_offers_its_request_fields_and_no_set_keys(
    server: LanguageServer,
) -> None:
    offered = complete(
        server,
        "single.yaml",
        """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: goal-1
spec:
  appName: live
  <|>
""",
    )
    assert SPEC_FIELDS - {"appName"} <= offered, offered
    assert not offered & (SET_FIELDS | {"notifyUrl"} | INTERNAL), offered


def test_an_empty_record_task_spec_offers_every_request_field(server: LanguageServer) -> None:
    offered = complete(
        server,
        "empty-spec.yaml",
        """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: goal-1
spec:
  <|>
""",
    )
    assert offered >= SPEC_FIELDS, offered
    assert not offered & (SET_FIELDS | INTERNAL), offered


def test_a_set_spec_offers_template_and_clips_and_no_request_fields(
    server: LanguageServer,
) -> None:
    offered = complete(
        server,
        "set.yaml",
        """\
apiVersion: reconciler/v1
kind: RecordTaskSet
metadata:
  name: cup-final
spec:
  <|>
""",
    )
    assert offered >= SET_FIELDS, offered
    assert not offered & (SPEC_FIELDS | INTERNAL), offered


def test_a_set_template_and_a_clip_offer_the_request_fields(server: LanguageServer) -> None:
    body = """\
apiVersion: reconciler/v1
kind: RecordTaskSet
metadata:
  name: cup-final
spec:
  template:
    {template}
  clips:
    - name: goal-1
      {clip}
"""
    in_template = complete(server, "template.yaml", body.format(template=CURSOR, clip=""))
    assert in_template >= SPEC_FIELDS, in_template
    assert not in_template & ({"name", "labels"} | SET_FIELDS | INTERNAL), in_template
    in_clip = complete(server, "clip.yaml", body.format(template="", clip=CURSOR))
    assert SPEC_FIELDS | {"labels"} <= in_clip, in_clip
    assert not in_clip & (SET_FIELDS | INTERNAL), in_clip


def test_a_notify_config_spec_offers_its_two_fields_only(server: LanguageServer) -> None:
    offered = complete(
        server,
        "notify.yaml",
        """\
apiVersion: reconciler/v1
kind: RecordNotifyConfig
metadata:
  name: push-example-com
spec:
  <|>
""",
    )
    assert offered >= NOTIFY_FIELDS, offered
    assert not offered & ((SPEC_FIELDS - NOTIFY_FIELDS) | SET_FIELDS | INTERNAL), offered


def test_the_kind_completes_to_every_kind(server: LanguageServer) -> None:
    offered = complete(server, "kind.yaml", "apiVersion: reconciler/v1\nkind: <|>\n")
    assert {"RecordTask", "RecordTaskSet", "RecordNotifyConfig"} <= offered, offered


def diagnostics(server: LanguageServer, name: str, body: str) -> list[str]:
    uri = server.open(server.root / name, document(body))
    return [item["message"] for item in server.wait_for_diagnostics(uri)]


VALID = """\
apiVersion: reconciler/v1
kind: RecordTask
metadata:
  name: goal-1
spec:
  publishDomain: push.example.com
  appName: live
  {stream}: cup-final
  recordTimes:
    - startTime: "2026-07-19T19:05:00Z"
      endTime: "2026-07-19T19:07:00Z"
  saveBucket: highlights
  saveEndpoint: s3.cn-north-1.jdcloud-oss.com
  recordFileType: mp4
"""


def test_a_valid_record_task_has_no_diagnostics(server: LanguageServer) -> None:
    assert diagnostics(server, "valid.yaml", VALID.format(stream="streamName")) == []


def test_a_typo_field_gets_a_diagnostic(server: LanguageServer) -> None:
    found = diagnostics(server, "typo.yaml", VALID.format(stream="streamNme"))
    assert any("streamNme" in message for message in found), found
    assert any('"streamName"' in message for message in found), found  # now missing


def test_a_typo_in_a_clip_gets_a_diagnostic(server: LanguageServer) -> None:
    found = diagnostics(
        server,
        "set-typo.yaml",
        """\
apiVersion: reconciler/v1
kind: RecordTaskSet
metadata:
  name: cup-final
spec:
  template:
    publishDomain: push.example.com
  clips:
    - name: goal-1
      recordTime: []
""",
    )
    assert any("recordTime" in message for message in found), found


NOTIFY = """\
apiVersion: reconciler/v1
kind: RecordNotifyConfig
metadata:
  name: push-example-com
spec:
  publishDomain: push.example.com
  notifyUrl: {url}
"""


def test_a_valid_notify_config_has_no_diagnostics(server: LanguageServer) -> None:
    url = "http://hooks.example.com:8080/callbacks/${RECONCILER_CALLBACK_TOKEN}"
    assert diagnostics(server, "notify-valid.yaml", NOTIFY.format(url=url)) == []


def test_an_https_notify_url_gets_a_diagnostic(server: LanguageServer) -> None:
    url = "https://hooks.example.com/callbacks/${RECONCILER_CALLBACK_TOKEN}"
    found = diagnostics(server, "notify-https.yaml", NOTIFY.format(url=url))
    assert any("http://" in message for message in found), found
