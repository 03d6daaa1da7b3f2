"""The official jdcloud-sdk client, unchanged, against the sandbox's record notify URL API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.sandbox import NOTIFY_CONFIG_PATH, NOTIFY_PATH, Sandbox, SandboxConfig

pytest.importorskip("jdcloud_sdk")

from jdcloud_sdk.core.config import Config
from jdcloud_sdk.core.credential import Credential
from jdcloud_sdk.core.logger import FATAL, Logger
from jdcloud_sdk.services.live.apis.AddLiveRecordTaskRequest import (
    AddLiveRecordTaskParameters,
    AddLiveRecordTaskRequest,
)
from jdcloud_sdk.services.live.apis.DeleteLiveStreamRecordNotifyConfigRequest import (
    DeleteLiveStreamRecordNotifyConfigParameters,
    DeleteLiveStreamRecordNotifyConfigRequest,
)
from jdcloud_sdk.services.live.apis.DescribeLiveStreamRecordNotifyConfigRequest import (
    DescribeLiveStreamRecordNotifyConfigParameters,
    DescribeLiveStreamRecordNotifyConfigRequest,
)
from jdcloud_sdk.services.live.apis.SetLiveStreamRecordNotifyConfigRequest import (
    SetLiveStreamRecordNotifyConfigParameters,
    SetLiveStreamRecordNotifyConfigRequest,
)
from jdcloud_sdk.services.live.client.LiveClient import LiveClient
from jdcloud_sdk.services.live.models.RecordTime import RecordTime

DOMAIN = "push.example.com"


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(record_after=0.0, callback_retries=0)) as sandbox:
        yield sandbox


def sdk(sandbox: Sandbox, secret_key: str | None = None) -> Any:
    return LiveClient(
        Credential(sandbox.credentials.access_key, secret_key or sandbox.credentials.secret_key),
        Config(endpoint=f"127.0.0.1:{sandbox.port}", scheme="http", timeout=10),
        logger=Logger(FATAL),  # its default logger prints every header to stdout
    )


def set_url(client: Any, url: str, domain: str = DOMAIN) -> Any:
    parameters = SetLiveStreamRecordNotifyConfigParameters(domain, url)
    return client.send(SetLiveStreamRecordNotifyConfigRequest(parameters))


def describe(client: Any, domain: str = DOMAIN) -> Any:
    parameters = DescribeLiveStreamRecordNotifyConfigParameters(domain)
    return client.send(DescribeLiveStreamRecordNotifyConfigRequest(parameters))


def delete(client: Any, domain: str = DOMAIN) -> Any:
    parameters = DeleteLiveStreamRecordNotifyConfigParameters(domain)
    return client.send(DeleteLiveStreamRecordNotifyConfigRequest(parameters))


def test_the_sdk_requests_are_the_paths_the_sandbox_serves() -> None:
    # The SDK's own paths (it adds /v1): if a new SDK moved them, the sandbox must follow.
    set_request = SetLiveStreamRecordNotifyConfigRequest(None)
    get_request = DescribeLiveStreamRecordNotifyConfigRequest(None)
    delete_request = DeleteLiveStreamRecordNotifyConfigRequest(None)
    assert (set_request.method, f"/v1{set_request.url}") == ("POST", NOTIFY_CONFIG_PATH)
    assert (get_request.method, f"/v1{get_request.url}") == ("GET", NOTIFY_PATH)
    assert (delete_request.method, f"/v1{delete_request.url}") == ("DELETE", NOTIFY_PATH)
    assert sorted(vars(SetLiveStreamRecordNotifyConfigParameters(DOMAIN, "u"))) == [
        "notifyUrl",
        "publishDomain",
    ]


def test_the_sdk_sets_reads_and_deletes_a_notify_url(box: Sandbox) -> None:
    client = sdk(box)
    url = "http://hooks.example.com:8080/callbacks/a-token"

    unset = describe(client)
    assert unset.error.code == 404
    assert unset.error.status == "NOT_FOUND"
    assert unset.request_id and unset.result is None

    answer = set_url(client, url)
    assert answer.error is None and answer.request_id
    assert box.notify_url(DOMAIN) == url

    read = describe(client)
    assert read.error is None
    assert read.result == {"publishDomain": DOMAIN, "notifyUrl": url}

    assert set_url(client, url).error is None  # the same value twice is harmless
    other = "http://hooks.example.com:8080/callbacks/another"
    assert set_url(client, other).error is None
    assert describe(client).result["notifyUrl"] == other

    assert delete(client).error is None
    assert describe(client).error.code == 404
    assert box.notify_url(DOMAIN) is None
    assert delete(client).error is None  # deleting what is not set is no error
    assert box.counts().rejected == {}


def test_the_sdk_sees_jd_clouds_refusals(box: Sandbox) -> None:
    client = sdk(box)

    https = set_url(client, "https://hooks.example.com/callbacks/x")
    assert (https.error.code, https.error.status) == (400, "INVALID_ARGUMENT")
    assert "http://" in https.error.message

    bad_domain = set_url(client, "http://hooks.example.com/x", domain="https://push.example.com")
    assert bad_domain.error.code == 400
    assert "publishDomain" in bad_domain.error.message

    wrong = sdk(box, secret_key="not-the-secret")
    for answer in (set_url(wrong, "http://hooks.example.com/x"), describe(wrong), delete(wrong)):
        assert (answer.error.code, answer.error.status) == (401, "UNAUTHENTICATED")
        assert "signature" in answer.error.message
    assert box.notify_url(DOMAIN) is None


class _Collector(BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.got.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_url_the_sdk_sets_gets_the_callbacks_of_a_task_the_sdk_adds(
    box: Sandbox, base_spec: dict[str, Any]
) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    handler = type("Collector", (_Collector,), {"got": got})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        client = sdk(box)
        url = f"http://127.0.0.1:{server.server_port}/callbacks/the-token"
        assert set_url(client, url).error is None
        parameters = AddLiveRecordTaskParameters(
            base_spec["publishDomain"],
            base_spec["appName"],
            base_spec["streamName"],
            [RecordTime(t["startTime"], t["endTime"]) for t in base_spec["recordTimes"]],
            base_spec["saveBucket"],
            base_spec["saveEndpoint"],
            "mp4;flv",
        )
        parameters.setTaskExternalId("sdk-task-1")
        assert client.send(AddLiveRecordTaskRequest(parameters)).error is None

        deadline = time.monotonic() + 20
        while box.counts().recorder_pending or not box.counts().recorded:
            assert time.monotonic() < deadline, box.recordings()
            time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert sorted(body["format"] for _, body in got) == ["flv", "mp4"]
    assert {path for path, _ in got} == {"/callbacks/the-token"}
    assert {body["taskExternalId"] for _, body in got} == {"sdk-task-1"}
