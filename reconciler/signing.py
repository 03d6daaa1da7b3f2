"""JD Cloud's JDCLOUD3-HMAC-SHA256 request signature: signing requests and verifying them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote_plus, urlparse

SERVICE = "live"
REGION = "jdcloud-api"
ALGORITHM = "JDCLOUD3-HMAC-SHA256"
TERMINATOR = "jdcloud3_request"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"

AUTHORIZATION = "Authorization"
DATE_HEADER = "x-jdcloud-date"
NONCE_HEADER = "x-jdcloud-nonce"
CONTENT_SHA256_HEADER = "x-jdcloud-content-sha256"
SECURITY_TOKEN_HEADER = "x-jdcloud-security-token"

#: What the official jdcloud-sdk client signs (plus the security token when there is one).
OFFICIAL_SIGNED_HEADERS = ("content-type", "host")
#: What we sign: the date and nonce too, so a captured request cannot be re-dated.
DEFAULT_SIGNED_HEADERS = ("content-type", "host", DATE_HEADER, NONCE_HEADER)

# Headers sign_request computes itself; any copy the caller passes in is replaced.
_GENERATED = frozenset(
    {AUTHORIZATION.lower(), DATE_HEADER, NONCE_HEADER, CONTENT_SHA256_HEADER, SECURITY_TOKEN_HEADER}
)


@dataclass(frozen=True)
class Credentials:
    """An access key pair, optionally with a session token; repr shows only the access key."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The access key is written into "Credential=AK/...," so it must not break that syntax.
        if not self.access_key or any(c.isspace() or c == "," for c in self.access_key):
            raise ValueError("the access key must be non-empty, without spaces or commas")
        if not self.secret_key:
            raise ValueError("the secret key must not be empty")
        if self.session_token == "":
            raise ValueError("the session token must be None or non-empty")


class SignatureError(Exception):
    """A request's JDCLOUD3 signature is missing, malformed or wrong (the text says which)."""


def canonical_uri(path: str) -> str:
    """The path as the official signer canonicalises it: decoded (`+` is a space), runs of `/`
    collapsed, then percent-encoded keeping only unreserved characters, `/` and `~`."""
    decoded = unquote_plus(path)
    while "//" in decoded:
        decoded = decoded.replace("//", "/")
    if not decoded:
        return "/"
    encoded = quote(decoded, safe="/~")
    return encoded if encoded.startswith("/") else "/" + encoded


def canonical_query(query: str) -> str:
    """The query string as the official signer canonicalises it: each key and value decoded and
    re-encoded, pairs sorted; pairs with an empty key, and keys without `=`, are left out."""
    pairs: list[list[str]] = []
    for item in query.split("&"):
        if item:
            pairs.append([quote(unquote_plus(part), safe="~") for part in item.split("=", 1)])
    pairs.sort()
    return "&".join(f"{pair[0]}={pair[1]}" for pair in pairs if len(pair) == 2 and pair[0])


def canonical_host(netloc: str) -> str:
    """`host[:port]` from a URL's netloc or a Host header: user info dropped, and the port dropped
    when it is 80 or 443 (whatever the scheme, as the official signer does)."""
    at = netloc.find("@", 1)
    hostport = netloc[at + 1 :] if at > 0 else netloc
    host, colon, port = hostport.rpartition(":")
    if colon and port.isdecimal() and port in ("80", "443"):
        return host.strip()
    return hostport.strip()


def credential_scope(date: str, region: str, service: str) -> str:
    """`YYYYMMDD/region/service/jdcloud3_request` for an `x-jdcloud-date` value."""
    return f"{date[:8]}/{region}/{service}/{TERMINATOR}"


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    payload_hash: str,
) -> str:
    """The text whose hash is signed. `headers` are (lower-case name, value) pairs in the
    order of the signed-header list, `host` already canonical."""
    lines = "".join(f"{name}:{value.strip()}\n" for name, value in headers)
    signed = ";".join(name for name, _ in headers)
    return "\n".join(
        [method, canonical_uri(path), canonical_query(query), lines, signed, payload_hash]
    )


def string_to_sign(date: str, scope: str, request: str) -> str:
    """The second stage: algorithm, date, scope and the canonical request's sha256."""
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{date}\n{scope}\n{digest}"


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived from the secret for one day, region and service."""
    key = ("JDCLOUD3" + secret_key).encode("utf-8")
    for part in (date[:8], region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def compute_signature(secret_key: str, date: str, region: str, service: str, request: str) -> str:
    """The hex signature of a canonical request."""
    text = string_to_sign(date, credential_scope(date, region, service), request)
    key = signing_key(secret_key, date, region, service)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Credentials,
    *,
    now: datetime | None = None,
    nonce: str | None = None,
    signed_headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    service: str = SERVICE,
    region: str = REGION,
) -> dict[str, str]:
    """Return the full header dict to send: the given headers plus x-jdcloud-date,
    x-jdcloud-nonce, x-jdcloud-content-sha256, x-jdcloud-security-token (base64, when a session
    token is set; then it is signed too, as the official client does) and Authorization.

    `host` is always signed, taken from `url` (not from any Host header). A naive `now` is
    taken as UTC. Every other name in `signed_headers` must be among `headers`.
    """
    parts = urlparse(url)  # the same parser as the official signer, so `;params` match too
    date = _as_utc(now or datetime.now(UTC)).strftime(DATE_FORMAT)
    payload_hash = hashlib.sha256(body).hexdigest()

    out = {name: value for name, value in headers.items() if name.lower() not in _GENERATED}
    out[DATE_HEADER] = date
    out[NONCE_HEADER] = nonce if nonce is not None else str(uuid.uuid4())
    out[CONTENT_SHA256_HEADER] = payload_hash
    names = {name.lower() for name in signed_headers} | {"host"}
    if credentials.session_token is not None:
        token = credentials.session_token.encode("utf-8")
        out[SECURITY_TOKEN_HEADER] = base64.b64encode(token).decode("ascii")
        names.add(SECURITY_TOKEN_HEADER)

    values = _lower_case(out.items(), ValueError)
    signed: list[tuple[str, str]] = []
    for name in sorted(names):
        if name == "host":
            signed.append((name, canonical_host(parts.netloc)))
        elif name in values:
            signed.append((name, values[name]))
        else:
            raise ValueError(f"header {name!r} is to be signed but is not among the headers")

    request = canonical_request(method, parts.path, parts.query, signed, payload_hash)
    signature = compute_signature(credentials.secret_key, date, region, service, request)
    out[AUTHORIZATION] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{credential_scope(date, region, service)}"
        f", SignedHeaders={';'.join(name for name, _ in signed)}, Signature={signature}"
    )
    return out


def verify_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    *,
    service: str = SERVICE,
    region: str = REGION,
    now: datetime | None = None,
    max_skew: timedelta | None = None,
) -> str:
    """Server side (used by the sandbox): parse Authorization, require `host` among
    SignedHeaders, recompute the signature over exactly the signed-header list the request
    names, compare with hmac.compare_digest; return the access key on success, raise
    SignatureError otherwise. Header names are matched case-insensitively.

    `path` and `query` are the request target's parts as received (still percent-encoded).
    With `max_skew`, an `x-jdcloud-date` further than that from `now` (default: the clock) is
    refused too; the official client leaves the date unsigned, so that check alone does not
    stop a replay.
    """
    values = _lower_case(headers.items(), SignatureError)
    authorization = values.get(AUTHORIZATION.lower())
    if authorization is None:
        raise SignatureError("the request has no Authorization header")
    access_key, scope, names, signature = _parse_authorization(authorization)

    date = values.get(DATE_HEADER)
    if date is None:
        raise SignatureError(f"the request has no {DATE_HEADER} header")
    try:
        when = datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            f"{DATE_HEADER} {date!r} is not in the form YYYYMMDDTHHMMSSZ"
        ) from None
    expected_scope = credential_scope(date, region, service)
    if scope != expected_scope:
        raise SignatureError(
            f"the credential scope {scope!r} does not match {expected_scope!r} "
            f"(day of {DATE_HEADER}, region, service)"
        )
    if max_skew is not None:
        skew = abs(_as_utc(now or datetime.now(UTC)) - when)
        if skew > max_skew:
            raise SignatureError(
                f"{DATE_HEADER} {date} is {skew.total_seconds():.0f} s from the server's clock "
                f"(at most {max_skew.total_seconds():.0f} s allowed)"
            )

    if "host" not in names:
        raise SignatureError("SignedHeaders must include host")
    signed: list[tuple[str, str]] = []
    for name in names:
        value = values.get(name)
        if value is None:
            raise SignatureError(f"the signed header {name!r} is missing from the request")
        signed.append((name, canonical_host(value) if name == "host" else value))

    # urlparse (and so the official signer) leaves `;params` of the last segment out of the
    # canonical URI; refuse them rather than accept a path part the signature does not cover.
    if ";" in path[path.rfind("/") :]:
        raise SignatureError("the last path segment has ';' parameters, which are not signed")

    secret = secret_for(access_key)
    if secret is None:
        raise SignatureError(f"unknown access key {access_key!r}")
    payload_hash = hashlib.sha256(body).hexdigest()
    request = canonical_request(method, path, query, signed, payload_hash)
    expected = compute_signature(secret, date, region, service, request)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8")):
        raise SignatureError(
            "the signature does not match: check the secret key, and that the request "
            "(method, path, query, signed headers, body) was not changed after signing"
        )
    return access_key


def _parse_authorization(value: str) -> tuple[str, str, list[str], str]:
    """(access key, credential scope, signed header names, signature) of an Authorization."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(f"the Authorization header does not use {ALGORITHM}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, equals, field_value = item.strip().partition("=")
        if not equals or key in fields:
            raise SignatureError(f"the Authorization header is malformed near {item.strip()!r}")
        fields[key] = field_value
    missing = [key for key in ("Credential", "SignedHeaders", "Signature") if key not in fields]
    if missing or len(fields) != 3:
        raise SignatureError(
            "the Authorization header must hold exactly Credential, SignedHeaders and Signature"
        )
    access_key, slash, scope = fields["Credential"].partition("/")
    if not access_key or not slash:
        raise SignatureError("the Authorization Credential must be ACCESS_KEY/scope")
    names = fields["SignedHeaders"].split(";")
    if any(not name or name != name.lower() for name in names):
        raise SignatureError("SignedHeaders must be lower-case names separated by ';'")
    return access_key, scope, names, fields["Signature"]


def _lower_case(items: Iterable[tuple[str, str]], error: type[Exception]) -> dict[str, str]:
    """Headers keyed by lower-case name; two spellings with different values are an error."""
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in out and out[key] != value:
            raise error(f"the header {key!r} is given twice with different values")
        out[key] = value
    return out


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
