"""Reading buckets over the S3 API (the edge verify looks through): list a prefix, HEAD a key.

JD Cloud OSS speaks S3 (Signature V4) at `https://{saveEndpoint}` with the JD Cloud access
key; `storage_endpoint` points every bucket at one S3 endpoint instead (tests, the sandbox, a
proxy), path-style. Read-only: nothing here writes, deletes or lists beyond the prefix asked.
The client is `minio` (the `storage` extra), imported only when a bucket is read. Every error
is a BucketError whose text names the endpoint and the bucket, never a credential.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from reconciler.storage import ListedObject
from reconciler.text import has_space_or_control, visible, without_user_info

if TYPE_CHECKING:
    from minio import Minio

    from reconciler.signing import Credentials

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
RETRIES = 2  # 5xx answers and dropped connections are tried again this many times
# JD Cloud OSS hosts name their region: s3.cn-north-1.jdcloud-oss.com, s3-internal.cn-east-2....
_REGION_IN_HOST = re.compile(
    r"^s3(?:-internal)?\.([a-z0-9-]+)\.(?:jdcloud-oss\.com|jcloudcs\.com)$", re.IGNORECASE
)


class BucketError(Exception):
    """A bucket could not be read; str() names the endpoint and bucket and says why."""


class StorageUnavailable(Exception):
    """The S3 client (the `storage` extra) is not installed."""


def check_storage_endpoint(url: str) -> str:
    """`url` if it is an http(s) endpoint with no path, query or credentials; else ValueError,
    whose text never repeats a user name or password the URL carries."""
    shown = repr(visible(without_user_info(url)))
    if has_space_or_control(url):
        raise ValueError(f"{shown} must not contain whitespace or control characters")
    # Before anything that parses it: what urlsplit reads as user info is before an `@` here.
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise ValueError("the URL must not carry credentials (they come from JDCLOUD_*)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown} is not a URL (expected http(s)://host[:port])") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http(s) URL (expected http(s)://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{shown} has a path, query or fragment; an S3 endpoint is http(s)://host[:port]"
        )
    del port
    return url.rstrip("/")


@dataclass(frozen=True)
class Place:
    """Where a bucket is read: the endpoint the task names (saveEndpoint) and the URL used."""

    endpoint: str  # the task's saveEndpoint, as the manifest says it
    bucket: str
    url: str  # the endpoint actually asked: https://{saveEndpoint} or the storage endpoint

    @property
    def shown(self) -> str:
        return f"bucket {self.bucket} at {self.url}"

    def object_url(self, key: str) -> str:
        """The object's URL, path-style, its bucket and key percent-encoded (`/` kept)."""
        return f"{self._bucket_url}/{_quoted(key)}"

    @functools.cached_property
    def _bucket_url(self) -> str:
        return f"{self.url}/{_quoted(self.bucket)}"


# What quote() leaves as it is (with `/` safe): a key made only of these is its own encoding,
# found without quote()'s bytes round trip (verify builds a URL per file it finds).
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~/-]*")


def _quoted(text: str) -> str:
    return text if _UNQUOTED.fullmatch(text) else quote(text)


class BucketReader:
    """Lists and HEADs objects, one S3 client per endpoint, shared by verify's threads."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        storage_endpoint: str | None = None,
        pool_size: int = 4,
    ) -> None:
        try:
            import minio  # noqa: F401
        except ImportError:
            raise StorageUnavailable(
                "reading buckets needs the S3 client: pip install 'reconciler[storage]'"
            ) from None
        self._credentials = credentials
        self._storage_endpoint = storage_endpoint
        self._pool_size = pool_size
        self._clients: dict[str, Minio] = {}
        self._lock = threading.Lock()

    def place(self, endpoint: str, bucket: str) -> Place:
        url = self._storage_endpoint or f"https://{endpoint}"
        return Place(endpoint, bucket, url.rstrip("/"))

    def list(self, place: Place, prefix: str) -> list[ListedObject]:
        """Every object under `prefix` (all pages of ListObjectsV2); BucketError if any fails."""
        client = self._client(place)
        objects: list[ListedObject] = []
        try:
            for item in client.list_objects(place.bucket, prefix=prefix, recursive=True):
                if item.object_name is not None and not item.is_dir:
                    objects.append(ListedObject(item.object_name, item.size))
        except Exception as error:
            raise BucketError(f"cannot list {place.shown}: {_why(error, place)}") from None
        return objects

    def head(self, place: Place, key: str) -> ListedObject | None:
        """The object at `key`, or None when there is none; BucketError for any other answer."""
        from minio.error import S3Error

        client = self._client(place)
        try:
            found = client.stat_object(place.bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise BucketError(f"cannot read {place.shown}: {_why(error, place)}") from None
        except Exception as error:
            raise BucketError(f"cannot read {place.shown}: {_why(error, place)}") from None
        return ListedObject(key, found.size)

    def _client(self, place: Place) -> Minio:
        with self._lock:
            client = self._clients.get(place.url)
            if client is None:
                client = self._make_client(place)
                self._clients[place.url] = client
            return client

    def _make_client(self, place: Place) -> Minio:
        import os

        import certifi
        import urllib3
        from minio import Minio

        parts = urlsplit(place.url)
        assert parts.hostname is not None
        host = parts.netloc
        found = _REGION_IN_HOST.match(place.endpoint) or _REGION_IN_HOST.match(parts.hostname)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            maxsize=self._pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        credentials = self._credentials
        return Minio(
            host,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            session_token=credentials.session_token,
            secure=parts.scheme == "https",
            # Named, so no GetBucketLocation is asked first; else the client asks the bucket.
            region=found.group(1).lower() if found else None,
            http_client=http,
        )


_DENIED = {
    "AccessDenied": "access denied (HTTP 403): the access key may not read this bucket",
    "SignatureDoesNotMatch": (
        "the credentials were refused (SignatureDoesNotMatch): check JDCLOUD_SECRET_KEY"
    ),
    "InvalidAccessKeyId": (
        "the credentials were refused (InvalidAccessKeyId): check JDCLOUD_ACCESS_KEY"
    ),
    "NoSuchBucket": "no such bucket (HTTP 404): check saveBucket and saveEndpoint",
    "ExpiredToken": "the session token has expired (ExpiredToken): check JDCLOUD_SESSION_TOKEN",
    "InvalidToken": "the session token was refused (InvalidToken): check JDCLOUD_SESSION_TOKEN",
}


def _why(error: BaseException, place: Place) -> str:
    """What went wrong, in words that carry no credential and no text the server made up
    (beyond an S3 error code, which is a word from a fixed list)."""
    import urllib3.exceptions as http_errors
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(error, S3Error):
        code = error.code or ""
        status = error.response.status if error.response is not None else None
        if code in _DENIED:
            return _DENIED[code]
        shown = code if re.fullmatch(r"[A-Za-z0-9.]{1,64}", code) else "an error"
        return f"the server answered {shown} (HTTP {status})"
    if isinstance(error, ServerError):
        return f"the server answered HTTP {error.status_code} (after {RETRIES} retries)"
    if isinstance(error, InvalidResponseError):
        return "the server's answer is not an S3 answer"
    if isinstance(error, http_errors.MaxRetryError):
        return _why_transport(error.reason, place, retried=True)
    if isinstance(error, http_errors.HTTPError):
        return _why_transport(error, place, retried=False)
    if isinstance(error, ValueError):  # the client's own checks, e.g. of a bucket name
        return f"the client refused the request ({_plain(str(error))})"
    return f"unexpected {type(error).__name__}"


def _why_transport(reason: Any, place: Place, *, retried: bool) -> str:
    import urllib3.exceptions as http_errors

    after = f" (after {RETRIES} retries)" if retried else ""
    host = urlsplit(place.url).hostname
    if isinstance(reason, http_errors.NameResolutionError):
        return f"the host name {host} does not resolve (DNS)"
    if isinstance(reason, http_errors.SSLError):
        return f"the TLS connection to {host} failed (certificate or TLS version)"
    if isinstance(reason, http_errors.NewConnectionError | http_errors.ConnectTimeoutError):
        return f"cannot connect to {host}{after}"
    if isinstance(reason, http_errors.ReadTimeoutError):
        return f"no answer from {host} within {READ_TIMEOUT:g} s{after}"
    if isinstance(reason, http_errors.ResponseError):
        return f"the server kept answering with errors (HTTP 5xx){after}"
    if isinstance(reason, http_errors.ProtocolError | ConnectionError):
        return f"the connection was closed before the answer was complete{after}"
    return f"the connection failed ({type(reason).__name__}){after}"


def _plain(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."
