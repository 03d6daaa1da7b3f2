"""A task's identity: its canonical request and the sha256 of it.

Apart from `tasks` (which reads manifests, and so loads YAML) because every state load checks
each task's hash, and commands that only read a state (verify, receive, state list) should not
load what reads manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Built once (json.dumps with options builds one per call): every state load hashes every task.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """The one serialisation that is hashed (and sent): sorted keys, no whitespace, UTF-8."""
    return _CANONICAL.encode(value).encode()


def request_hash(request: Mapping[str, Any]) -> str:
    """A task's identity: sha256 of its canonical request."""
    return hashlib.sha256(canonical_json(request)).hexdigest()
