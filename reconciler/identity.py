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
# JSONEncoder.encode also builds json's C encoder anew on every call (a third of the time of
# hashing a request); this one is built once. No check for circular references: a request is
# parsed JSON or built from a manifest's, and neither can refer to itself (one would end in a
# RecursionError instead of json's ValueError). tests/test_identity.py holds it to json.dumps.
_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _CANONICAL.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def canonical_json(value: Any) -> bytes:
    """The one serialisation that is hashed (and sent): sorted keys, no whitespace, UTF-8."""
    if _ENCODE is None:  # a Python without json's C accelerator
        return _CANONICAL.encode(value).encode()
    return "".join(_ENCODE(value, 0)).encode()


def request_hash(request: Mapping[str, Any]) -> str:
    """A task's identity: sha256 of its canonical request."""
    return hashlib.sha256(canonical_json(request)).hexdigest()
