"""Regenerate tests/fixtures/signing_vectors.json with the official jdcloud-sdk signer.

Run it from the repository root, with the test extras installed (they include `jdcloud-sdk`):

    .venv/bin/python scripts/make_signing_vectors.py          # rewrite the fixture
    .venv/bin/python scripts/make_signing_vectors.py --check  # exit 1 if the fixture is stale

Each vector holds a request (method, URL, headers, body, credentials, date, nonce, the list of
headers to sign) and what `jdcloud_sdk.core.signer.Signer` computes for it: the canonical
request, the string to sign, the Authorization header, and the other headers it adds.

How the official signer is driven, so that the vectors are its real algorithm and nothing else:

- It is called exactly as its own client calls it (`JDCloudClient.send`): `Signer.sign(method,
  service, region, url, headers, body_text, Credential(ak, sk), security_token)`, with the
  session token base64-encoded by the SDK's own `util.base64encode` and put in the headers,
  as `JDCloudClient.__merge_headers` does. A User-Agent is passed too; the signer ignores it.
- It signs `host` plus every header it is given. So each vector passes it exactly the headers
  the vector names in `signed_headers`: `content-type` alone gives the official client's set
  (`content-type;host`); adding `x-jdcloud-date` and `x-jdcloud-nonce` gives reconciler's set.
  When the date and nonce are among the headers, the signer uses them (its own tests rely on
  that); when they are not, its clock (`Signer.__now`) and `uuid.uuid4` are patched to return
  the vector's date and nonce for the duration of the call.
- The canonical request and string to sign are captured from the signer's own log calls.

Large bodies are stored as a recipe ({"repeat": text, "count": n}) rather than literally.
`official_sign` is also imported by tests/test_signing.py to compare with the official signer
on generated inputs when jdcloud-sdk is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "signing_vectors.json"

OURS = ["content-type", "host", "x-jdcloud-date", "x-jdcloud-nonce"]
OFFICIAL = ["content-type", "host"]
ENDPOINT = "https://live.jdcloud-api.com"
JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": "reconciler/0.1.0"}
SAMPLE_BODY = json.dumps(
    {
        "appName": "live",
        "publishDomain": "push.example.com",
        "recordFileType": "flv;mp4",
        "recordTimes": [{"endTime": "2026-11-20T19:05:00Z", "startTime": "2026-11-20T19:00:00Z"}],
        "saveBucket": "highlights",
        "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
        "streamName": "cup-final",
    },
    separators=(",", ":"),
    sort_keys=True,
)


def body_bytes(spec: Mapping[str, Any]) -> bytes:
    """The body a vector describes: {"text": ...} or {"repeat": ..., "count": n}."""
    if "text" in spec:
        return str(spec["text"]).encode("utf-8")
    return (str(spec["repeat"]) * int(spec["count"])).encode("utf-8")


def task_url(domain: str, app: str, stream: str, endpoint: str = ENDPOINT) -> str:
    """The addLiveRecordTask URL with each parameter encoded as one segment."""
    segments = [quote(value, safe="") for value in (domain, app, stream)]
    return "{}/v1/records/{}/appNames/{}/streamNames/{}/task".format(endpoint, *segments)


def case(
    name: str,
    url: str,
    *,
    method: str = "POST",
    headers: Mapping[str, str] = JSON_HEADERS,
    body: Mapping[str, Any] | None = None,
    signed_headers: list[str] = OURS,
    session_token: str | None = None,
    access_key: str = "JDC_0123456789ABCDEF",
    secret_key: str = "example-secret/+=key",
    date: str = "20261120T190500Z",
    service: str = "live",
    region: str = "jdcloud-api",
) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "url": url,
        "headers": dict(headers),
        "body": dict(body) if body is not None else {"text": SAMPLE_BODY},
        "access_key": access_key,
        "secret_key": secret_key,
        "session_token": session_token,
        "date": date,
        # A fixed nonce per vector, in uuid4's textual form as the official client sends it.
        "nonce": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "signed_headers": list(signed_headers),
        "service": service,
        "region": region,
    }


def cases() -> list[dict[str, Any]]:
    return [
        case("plain", task_url("push.example.com", "live", "cup-final")),
        case(
            "plain, official header set",
            task_url("push.example.com", "live", "cup-final"),
            signed_headers=OFFICIAL,
        ),
        case("colon and at, encoded", task_url("push.example.com", "app:1", "user@cam:2")),
        case(
            "colon and at, raw",
            f"{ENDPOINT}/v1/records/push.example.com/appNames/app:1/streamNames/user@cam:2/task",
        ),
        case("unicode, encoded", task_url("push.example.com", "直播", "决赛-🎥")),
        case(
            "unicode, raw",
            f"{ENDPOINT}/v1/records/push.example.com/appNames/直播/streamNames/决赛-🎥/task",
        ),
        case(
            "tilde, raw and encoded",
            task_url("push.example.com", "~app", "a~b").replace("a~b", "a%7Eb"),
        ),
        case("plus, encoded as %2B", task_url("push.example.com", "live", "a+b")),
        case(
            "plus, raw (the signer reads it as a space)",
            f"{ENDPOINT}/v1/records/push.example.com/appNames/live/streamNames/a+b/task",
        ),
        case("space, encoded as %20", task_url("push.example.com", "live", "a b")),
        case("percent-encoded slash in a segment", task_url("push.example.com", "live", "a/b")),
        case(
            "broken percent escapes",
            f"{ENDPOINT}/v1/records/push.example.com/appNames/%zz/streamNames/%E4%B8/task",
        ),
        case("double slashes", "https://live.jdcloud-api.com//v1//records///x/task"),
        case("port 8443", task_url("d.example.com", "a", "s", "https://live.jdcloud-api.com:8443")),
        case(
            "port 443 explicit",
            task_url("d.example.com", "a", "s", "https://live.jdcloud-api.com:443"),
        ),
        case(
            "port 80 on http", task_url("d.example.com", "a", "s", "http://live.jdcloud-api.com:80")
        ),
        case("port 443 on http", task_url("d.example.com", "a", "s", "http://sandbox.test:443")),
        case(
            "loopback sandbox port", task_url("d.example.com", "a", "s", "http://127.0.0.1:54321")
        ),
        case("ipv6 with port", task_url("d.example.com", "a", "s", "http://[::1]:8080")),
        case(
            "user info in the URL", task_url("d.example.com", "a", "s", "https://u:p@h.test:8443")
        ),
        case(
            "session token",
            task_url("push.example.com", "live", "cup-final"),
            session_token="sts-token/with+base64=chars==",
        ),
        case(
            "session token, official header set",
            task_url("push.example.com", "live", "cup-final"),
            session_token="sts-token/with+base64=chars==",
            signed_headers=OFFICIAL,
        ),
        case("empty body", task_url("push.example.com", "live", "cup-final"), body={"text": ""}),
        case(
            "empty body, GET with a query",
            f"{ENDPOINT}/v1/records?pageNumber=1&pageSize=10",
            method="GET",
            body={"text": ""},
        ),
        case(
            "large body (1 MiB)",
            task_url("push.example.com", "live", "cup-final"),
            body={"repeat": "0123456789abcdef", "count": 65536},
        ),
        case(
            "large body (1 MiB), official header set",
            task_url("push.example.com", "live", "cup-final"),
            body={"repeat": "0123456789abcdef", "count": 65536},
            signed_headers=OFFICIAL,
        ),
        case(
            "unicode body",
            task_url("push.example.com", "live", "cup-final"),
            body={"text": '{"saveObject":"精彩/进球 1","taskExternalId":"é~+"}'},
        ),
        case(
            "query string",
            f"{ENDPOINT}/v1/x?b=2&a=1&a=0&c=%20x+y&empty=&flag&=skip&k=v=w&%7E=~&%E4%B8%AD=文",
        ),
        case(
            "header value with spaces",
            task_url("push.example.com", "live", "cup-final"),
            headers={"Content-Type": "  application/json; charset=utf-8  "},
        ),
        case(
            "other service and region",
            "https://vod.jdcloud-api.com/v1/regions/cn-north-1/videos",
            service="vod",
            region="cn-north-1",
        ),
        case(
            "date at the end of a day",
            task_url("push.example.com", "live", "cup-final"),
            date="20261231T235959Z",
        ),
    ]


class _CapturingLogger:
    """Stands in for jdcloud_sdk's Logger to keep the canonical request it logs."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, level: int, message: object) -> None:
        self.messages.append(str(message))

    def after(self, marker: str) -> str:
        for message in self.messages:
            if message.startswith(marker):
                return message[len(marker) :]
        raise LookupError(f"the official signer did not log {marker!r}")


def official_sign(vector: Mapping[str, Any]) -> dict[str, str | None]:
    """What the official signer computes for one vector's request (see the module docstring)."""
    from unittest import mock

    from jdcloud_sdk.core import signer as official
    from jdcloud_sdk.core.credential import Credential
    from jdcloud_sdk.core.util import base64encode

    signed = {name.lower() for name in vector["signed_headers"]}
    headers: dict[str, str] = {"User-Agent": "JdcloudSdkPython/1.2.9 live/1.0.22"}
    for name, value in vector["headers"].items():
        if name.lower() in signed:
            headers[name] = value
    token = vector.get("session_token")
    if token:
        headers["x-jdcloud-security-token"] = base64encode(token)
    if "x-jdcloud-date" in signed:
        headers["x-jdcloud-date"] = vector["date"]
    if "x-jdcloud-nonce" in signed:
        headers["x-jdcloud-nonce"] = vector["nonce"]

    moment = datetime.strptime(vector["date"], "%Y%m%dT%H%M%SZ")
    logger = _CapturingLogger()
    with (
        mock.patch.object(official.Signer, "_Signer__now", lambda self: moment),
        mock.patch.object(official.uuid, "uuid4", lambda: vector["nonce"]),
    ):
        official.Signer(logger).sign(
            method=vector["method"],
            service=vector["service"],
            region=vector["region"],
            uri=vector["url"],
            headers=headers,
            data=body_bytes(vector["body"]).decode("utf-8"),
            credential=Credential(vector["access_key"], vector["secret_key"]),
            security_token=headers.get("x-jdcloud-security-token", ""),
        )

    expected_signed = sorted(signed | {"host"} | ({"x-jdcloud-security-token"} if token else set()))
    if f"SignedHeaders={';'.join(expected_signed)}," not in headers["Authorization"]:
        raise AssertionError(f"{vector['name']}: the official signer signed other headers")
    if (headers["x-jdcloud-date"], headers["x-jdcloud-nonce"]) != (vector["date"], vector["nonce"]):
        raise AssertionError(f"{vector['name']}: the official signer used another date or nonce")
    return {
        "canonical_request": logger.after("---canonical_request---\n"),
        "string_to_sign": logger.after("----string_to_sign---\n"),
        "authorization": headers["Authorization"],
        "x-jdcloud-content-sha256": headers["x-jdcloud-content-sha256"],
        "x-jdcloud-security-token": headers.get("x-jdcloud-security-token"),
    }


def build() -> str:
    from importlib.metadata import version

    vectors = [{**vector, "expected": official_sign(vector)} for vector in cases()]
    document = {
        "about": "JDCLOUD3-HMAC-SHA256 signatures computed by the official jdcloud-sdk signer; "
        "regenerate with scripts/make_signing_vectors.py (its docstring explains how).",
        "jdcloud_sdk_version": version("jdcloud-sdk"),
        "vectors": vectors,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _without_version(text: str) -> list[str]:
    # The SDK version is recorded, not compared: a newer SDK with the same results is fine.
    return [line for line in text.splitlines() if "jdcloud_sdk_version" not in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the fixture is current")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        current = FIXTURE.read_text(encoding="utf-8") if FIXTURE.exists() else ""
        if _without_version(current) != _without_version(text):
            print(f"{FIXTURE} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        print(f"{FIXTURE} is current")
        return 0
    FIXTURE.write_text(text, encoding="utf-8")
    print(f"wrote {len(cases())} vectors to {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
