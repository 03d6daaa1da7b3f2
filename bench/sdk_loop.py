"""The apply peer: what a user would script by hand with the official jdcloud-sdk.

Reads every manifest under a directory with PyYAML and sends each task, one after the other,
with `jdcloud_sdk.services.live.client.LiveClient`. Runs in bench/.venvs/jdcloud-sdk, so it
imports nothing from reconciler. Exit 0 when every task was accepted, 1 otherwise.

    python sdk_loop.py DIR --endpoint 127.0.0.1:PORT --scheme http
    (credentials in JDCLOUD_ACCESS_KEY / JDCLOUD_SECRET_KEY)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from jdcloud_sdk.core.config import Config
from jdcloud_sdk.core.credential import Credential
from jdcloud_sdk.core.logger import FATAL, Logger
from jdcloud_sdk.services.live.apis.AddLiveRecordTaskRequest import (
    AddLiveRecordTaskParameters,
    AddLiveRecordTaskRequest,
)
from jdcloud_sdk.services.live.client.LiveClient import LiveClient
from jdcloud_sdk.services.live.models.RecordTime import RecordTime


def request_for(spec: dict[str, Any]) -> AddLiveRecordTaskRequest:
    parameters = AddLiveRecordTaskParameters(
        spec["publishDomain"],
        spec["appName"],
        spec["streamName"],
        [RecordTime(s["startTime"], s["endTime"]) for s in spec["recordTimes"]],
        spec["saveBucket"],
        spec["saveEndpoint"],
        spec["recordFileType"],
    )
    if "saveObject" in spec:
        parameters.setSaveObject(spec["saveObject"])
    if "taskExternalId" in spec:
        parameters.setTaskExternalId(spec["taskExternalId"])
    return AddLiveRecordTaskRequest(parameters)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--endpoint", required=True, help="host:port")
    parser.add_argument("--scheme", default="http")
    args = parser.parse_args()
    client = LiveClient(
        Credential(os.environ["JDCLOUD_ACCESS_KEY"], os.environ["JDCLOUD_SECRET_KEY"]),
        Config(endpoint=args.endpoint, scheme=args.scheme, timeout=30),
        logger=Logger(FATAL),  # the default logger prints every URL, body and header
    )
    sent = failed = 0
    for path in sorted(args.directory.rglob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                response = client.send(request_for(document["spec"]))
                sent += 1
                if response.error is not None:
                    failed += 1
                    print(f"{path}: {response.error.code} {response.error.message}")
    print(f"sent {sent}, failed {failed}")
    return 1 if failed or not sent else 0


if __name__ == "__main__":
    sys.exit(main())
