"""A small client of the OCI distribution API, on urllib3.

Only what image conversion needs: manifests (get, head, put exact bytes),
blobs (head, streamed get, range get, streamed or chunked upload, cross-
repository mount) and authentication (bearer tokens from the registry's
challenge, basic auth, credentials from the docker config file).  No
library on PyPI covered chunked upload, mount, range reads and token auth
together through its public API (see the README).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, Optional
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from estargz import _native
from estargz.errors import RegistryError

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
ACCEPT = ", ".join(MANIFEST_TYPES)

# Blobs above this are uploaded in chunks of this size (PATCH), smaller ones
# in a single streamed PUT.
CHUNK_UPLOAD = 64 << 20
# The largest manifest, index or config read into memory (containerd's
# limit), the largest token-server answer, and how much of an error answer
# is read for its message.
MAX_DOCUMENT = 4 << 20
MAX_TOKEN = 1 << 20
MAX_ERROR_BODY = 8192
# Seconds a whole small request (manifest, config, token, the answer to an
# upload) may take, however slowly the server trickles its answer.
DOCUMENT_TIMEOUT = 120.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
# The digests this package can check.
DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
# What an Authorization header can carry as a bearer token: visible ASCII.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def new_hasher(digest: str) -> Any:
    """A hash object (``update``, ``hexdigest``) for the algorithm of ``digest``."""
    if digest.startswith("sha512:"):
        return hashlib.sha512()
    return _native.Sha256()


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    hasher = new_hasher(algorithm + ":")
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


class _Deadline:
    """An overall time limit for one small request.  Checking the clock
    between reads is not enough (one header line or chunk size can be
    trickled a byte at a time within every per-read timeout), so when the
    time is up the socket is shut, which ends any read in progress."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._timer: Optional[threading.Timer] = None
        self._lock = threading.Lock()
        self.fired = False

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def timeout(self, read: float) -> urllib3.Timeout:
        left = self.remaining()
        return urllib3.Timeout(connect=min(15.0, left), read=min(read, left))

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def watch(self, sock: Any) -> None:
        """Shut ``sock`` when the time is up (unless cancelled before)."""

        def fire() -> None:
            with self._lock:
                if self._timer is not timer:
                    return  # cancelled, or watching another socket now
                self.fired = True
                try:
                    # The plain socket's shutdown, also under TLS: the
                    # blocked read sees the end of the stream.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except (OSError, TypeError):
                    pass

        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            timer = threading.Timer(self.remaining(), fire)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def cancel(self) -> None:
        """No shutting after this returns."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def error(self, what: str) -> RegistryError:
        return RegistryError(
            f"{what}: no complete answer within {self.seconds:g} s "
            "(the server is too slow or trickles its answer)"
        )


# The deadline of the request this thread is making, for the connections
# below to arm when the request has been sent.
_active = threading.local()


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        deadline: Optional[_Deadline] = getattr(_active, "deadline", None)
        if deadline is not None and self.sock is not None:
            deadline.watch(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        deadline: Optional[_Deadline] = getattr(_active, "deadline", None)
        if deadline is not None and self.sock is not None:
            deadline.watch(self.sock)
        return super().getresponse()


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def docker_config_credentials(host: str) -> Optional[tuple[str, str]]:
    """User and password for ``host`` from the docker config file
    (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``)."""
    folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise RegistryError(f"cannot read the docker config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise RegistryError(f"the docker config {path} is not a JSON object")
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f"the docker config {path}: 'auths' is not an object")
    names = [
        host,
        f"https://{host}",
        f"http://{host}",
        f"https://{host}/v1/",
        f"{host}/v1/",
    ]
    if host == "registry-1.docker.io":
        names.append("https://index.docker.io/v1/")
    for name in names:
        entry = auths.get(name)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = (
                    base64.b64decode(entry["auth"]).decode().partition(":")
                )
            except ValueError as exc:
                raise RegistryError(
                    f"{path}: the auth of {name} is not base64"
                ) from exc
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    if config.get("credHelpers", {}).get(host) or config.get("credsStore"):
        log.warning(
            "the docker config names a credential helper for %s; helpers are not "
            "supported, give --creds instead",
            host,
        )
    return None


def _explain(exc: Exception, host: str) -> str:
    """A one-line reason for a failed connection."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"TLS failed: {host} seems to speak plain HTTP (use --plain-http)"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        cause = text.split(": ", 1)[-1].split("] ", 1)[-1]
        return f"cannot connect to {host}: {cause}"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"cannot resolve the name of {host}"
    return text


class _Response:
    def __init__(self, raw: Any, data: bytes = b"") -> None:
        self.raw = raw
        self.status: int = raw.status
        self.headers = raw.headers
        self.data = data


def _close(raw: Any) -> None:
    """Give up a response whose body was not read to its end: its connection
    is closed, not reused."""
    try:
        raw.close()
    finally:
        raw.release_conn()


class BlobReader(io.RawIOBase):
    """A blob streamed from the registry; its size (when known) and digest
    are checked as it is read, and never more than one byte past the size
    is read."""

    def __init__(
        self, response: Any, digest: str, where: str, size: Optional[int] = None
    ) -> None:
        self._response = response
        self._digest = digest
        self._where = where
        self._size = size
        self._hash = new_hasher(digest)
        self._count = 0
        self._done = False
        self._failure: Optional[RegistryError] = None

    def readable(self) -> bool:
        return True

    def _fail(self, message: str) -> RegistryError:
        self._failure = RegistryError(f"{self._where}: {message}")
        return self._failure

    def readinto(self, buffer: Any) -> int:
        if self._failure is not None:
            raise self._failure
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        if self._size is not None:
            view = view[: self._size - self._count + 1]
        if not len(view):
            return 0
        try:
            n = int(self._response.readinto(view))
        except urllib3.exceptions.HTTPError as exc:
            self.close()
            raise self._fail(f"the download broke off: {exc}") from exc
        if n:
            self._hash.update(view[:n])
            self._count += n
            if self._size is not None and self._count > self._size:
                self.close()
                raise self._fail(
                    f"the registry sends more than the {self._size} bytes of "
                    "its descriptor"
                )
            return n
        self._done = True
        self._response.release_conn()
        if self._size is not None and self._count != self._size:
            raise self._fail(
                f"the registry sent {self._count} bytes, the descriptor says "
                f"{self._size}"
            )
        algorithm = self._digest.partition(":")[0]
        found = f"{algorithm}:{self._hash.hexdigest()}"
        if found != self._digest:
            raise self._fail(f"the blob's digest is {found}, not {self._digest}")
        return 0

    def finish(self) -> None:
        """Read what is left (a reader may stop at the end of a tar) and
        check the digest."""
        buffer = bytearray(1 << 20)
        while self.readinto(buffer):
            pass

    def close(self) -> None:
        if not self._done:
            _close(self._response)
            self._done = True
        super().close()


class RegistryClient:
    """Talks to one registry host.

    :param host: ``host[:port]``; Docker Hub's ``docker.io`` is mapped to its API host
    :param plain_http: use http:// instead of https://
    :param credentials: ``(user, password)``; default: the docker config file
    :param timeout: seconds one read from the network may wait
    :param document_timeout: seconds a whole small request (a manifest, a
        config, a token) may take; default :data:`DOCUMENT_TIMEOUT`
    """

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        credentials: Optional[tuple[str, str]] = None,
        timeout: float = 120.0,
        document_timeout: Optional[float] = None,
    ) -> None:
        self.host = (
            "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        )
        self.base = f"{'http' if plain_http else 'https'}://{self.host}"
        self.credentials = credentials or docker_config_credentials(self.host)
        self.timeout = timeout
        self.document_timeout = (
            DOCUMENT_TIMEOUT if document_timeout is None else document_timeout
        )
        self._http = urllib3.PoolManager(
            maxsize=16,
            timeout=urllib3.Timeout(connect=15, read=timeout),
            retries=urllib3.Retry(
                total=3,
                connect=1,
                read=0,
                status=0,
                redirect=5,
                allowed_methods=frozenset({"GET", "HEAD"}),
            ),
        )
        # Connections that a request's deadline can cut.
        self._http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        # Bearer tokens by repository; a token names the scopes it grants.
        self._tokens: dict[str, str] = {}
        self._basic = False

    # -- transport --------------------------------------------------------------

    def _basic_header(self) -> dict[str, str]:
        if not self.credentials:
            return {}
        user, password = self.credentials
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _auth_headers(self, repo: str) -> dict[str, str]:
        token = self._tokens.get(repo)
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self._basic:
            return self._basic_header()
        return {}

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: Any = None,
        deadline: Optional[_Deadline] = None,
    ) -> Any:
        """One request; the body of the answer is left unread.  GET and HEAD
        follow redirects (at most 5), here rather than in urllib3, which
        would read a redirect's whole body into memory, however long."""
        for _ in range(MAX_REDIRECTS + 1):
            options: dict[str, Any] = {}
            if deadline is not None:
                options["timeout"] = deadline.timeout(self.timeout)
            _active.deadline = deadline
            try:
                raw = self._http.request(
                    method,
                    url,
                    headers=headers,
                    body=body,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                    **options,
                )
            finally:
                _active.deadline = None
            location = raw.headers.get("Location")
            if (
                raw.status not in _REDIRECTS
                or method not in ("GET", "HEAD")
                or not location
            ):
                return raw
            # The redirect's body is thrown away: a little of it is read (so
            # the connection can serve again), else the connection is closed.
            self._read_body(
                raw,
                f"{method} {url}",
                deadline or _Deadline(self.document_timeout),
                MAX_ERROR_BODY,
                strict=False,
            )
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                # Credentials are for the registry, not for where it sends us
                # (a storage service).
                headers = {
                    k: v for k, v in headers.items() if k.lower() != "authorization"
                }
            url = target
        raise RegistryError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    def _read_body(
        self,
        raw: Any,
        what: str,
        deadline: _Deadline,
        limit: int,
        strict: bool = True,
    ) -> bytes:
        """The body of an answer, at most ``limit`` bytes, within the deadline.
        With ``strict``, a longer (or encoded) body is an error; without, the
        first ``limit`` bytes are kept.  The connection is reused only when
        the body was read to its end.  The request is over afterwards: its
        deadline is cancelled."""
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if not deadline.armed and not deadline.fired and sock is not None:
            # Not armed yet (the answer to an upload): from now on.
            deadline.watch(sock)
        complete = False
        pieces: list[bytes] = []
        try:
            encoding = raw.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                if strict:
                    raise RegistryError(
                        f"{what}: the answer is {encoding}-encoded, "
                        "which was not asked for"
                    )
                return b""
            declared = raw.headers.get("Content-Length", "").strip()
            if strict and declared.isdigit() and int(declared) > limit:
                raise RegistryError(
                    f"{what}: the answer is {int(declared)} bytes, "
                    f"more than the limit of {limit}"
                )
            read = getattr(raw, "read1", None) or raw.read
            total = 0
            while True:
                if deadline.expired:
                    raise deadline.error(what)
                try:
                    piece = read(min(1 << 16, limit + 1 - total))
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if deadline.expired:
                        raise deadline.error(what) from exc
                    raise RegistryError(f"{what}: the answer broke off: {exc}") from exc
                if not piece:
                    break
                pieces.append(piece)
                total += len(piece)
                if total > limit:
                    if strict:
                        raise RegistryError(
                            f"{what}: the answer is longer than the limit of "
                            f"{limit} bytes"
                        )
                    return b"".join(pieces)[:limit]
            if deadline.fired:
                # The end came from our shutting the socket.
                raise deadline.error(what)
            complete = True
            return b"".join(pieces)
        finally:
            deadline.cancel()
            if complete:
                raw.release_conn()
            else:
                _close(raw)

    def _fetch_token(self, challenge: str, repo: str) -> None:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryError(
                f"{self.host}: a bearer challenge without a realm: {challenge}"
            )
        query = [("service", params["service"])] if "service" in params else []
        # Several scopes may arrive space-separated in one parameter; the token
        # endpoint wants one scope= each.
        query += [("scope", scope) for scope in params.get("scope", "").split()]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        what = f"token server {realm}"
        deadline = _Deadline(self.document_timeout)
        try:
            try:
                raw = self._send(
                    "GET", url, headers=self._basic_header(), deadline=deadline
                )
            except urllib3.exceptions.HTTPError as exc:
                if deadline.expired:
                    raise deadline.error(what) from exc
                raise RegistryError(f"{what}: {_explain(exc, realm)}") from exc
            if raw.status != 200:
                self._read_body(raw, what, deadline, MAX_ERROR_BODY, strict=False)
                who = "the credentials" if self.credentials else "an anonymous token"
                raise RegistryError(f"{what} refused {who} ({raw.status})")
            data = self._read_body(raw, what, deadline, MAX_TOKEN)
        finally:
            deadline.cancel()
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise RegistryError(f"{what}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise RegistryError(
                f"{what}: the answer is a JSON {type(body).__name__}, not an object"
            )
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(
                f"{what}: no token in the answer (no 'token' or 'access_token' string)"
            )
        if not _TOKEN.fullmatch(token):
            raise RegistryError(
                f"{what}: the token holds characters an HTTP header cannot carry"
            )
        self._tokens[repo] = token

    def _request(
        self,
        method: str,
        url: str,
        repo: str,
        *,
        headers: Optional[dict[str, str]] = None,
        body: Any = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        limit: int = 0,
        what: str = "",
    ) -> _Response:
        """A request.  With ``stream`` the body of the answer is left to the
        caller; otherwise up to ``limit`` bytes of it are read into
        ``.data`` (more is an error), within :attr:`document_timeout`
        for the whole request unless a large body is being sent."""
        url = urljoin(self.base + "/", url)
        what = what or f"{method} {url}"
        position = body.tell() if hasattr(body, "tell") else None
        # Small requests get an overall deadline; uploads only for reading
        # the answer, once the server has taken the body.
        timed = not stream and (
            body is None or (isinstance(body, bytes) and len(body) <= MAX_DOCUMENT)
        )
        for attempt in range(2):
            sent = dict(headers or {})
            sent.update(self._auth_headers(repo))
            if position is not None and attempt:
                body.seek(position)
            deadline = _Deadline(self.document_timeout) if timed else None
            try:
                raw = self._send(
                    method, url, headers=sent, body=body, deadline=deadline
                )
            except urllib3.exceptions.HTTPError as exc:
                if deadline is not None:
                    deadline.cancel()
                    if deadline.expired:
                        raise deadline.error(what) from exc
                raise RegistryError(
                    f"{method} {url}: {_explain(exc, self.host)}"
                ) from exc
            if deadline is None and not stream:
                deadline = _Deadline(self.document_timeout)
            if raw.status == 401 and attempt == 0:
                challenge = raw.headers.get("WWW-Authenticate", "")
                refusal = (
                    b""
                    if deadline is None
                    else self._read_body(
                        raw, what, deadline, MAX_ERROR_BODY, strict=False
                    )
                )
                if deadline is None:
                    _close(raw)
                scheme = challenge.split(" ", 1)[0].lower()
                if scheme == "bearer":
                    self._fetch_token(challenge, repo)
                    continue
                if scheme == "basic" and self.credentials and not self._basic:
                    self._basic = True
                    continue
                raise self._error(method, url, raw, None, refusal)
            break
        try:
            if raw.status not in ok:
                raise self._error(method, url, raw, deadline, None)
            if stream:
                return _Response(raw)
            assert deadline is not None
            data = self._read_body(
                raw, what, deadline, limit or MAX_ERROR_BODY, strict=bool(limit)
            )
            return _Response(raw, data if limit else b"")
        finally:
            if deadline is not None:
                deadline.cancel()

    def _error(
        self,
        method: str,
        url: str,
        raw: Any,
        deadline: Optional[_Deadline],
        data: Optional[bytes],
    ) -> RegistryError:
        status = raw.status
        detail = ""
        if data is None:
            if status == 416 or method == "HEAD":
                # distribution answers 416 with a body shorter than it announces.
                _close(raw)
                data = b""
            else:
                data = self._read_body(
                    raw,
                    f"{method} {url}",
                    deadline or _Deadline(self.document_timeout),
                    MAX_ERROR_BODY,
                    strict=False,
                )
        if data:
            try:
                errors = json.loads(data).get("errors") or []
                detail = "; ".join(
                    f"{e.get('code')}: {e.get('message')}" for e in errors
                )
            except (ValueError, AttributeError, TypeError, RecursionError):
                detail = data[:200].decode("utf-8", "replace").strip()
            detail = " ".join(detail.split())[:300]
        if status == 401:
            detail = detail or "authentication required"
            detail += " (give --creds USER:PASS or log in with docker)"
        error = RegistryError(f"{method} {url}: {status} {detail}".rstrip())
        error.status = status  # type: ignore[attr-defined]
        return error

    # -- manifests --------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index (at most
        :data:`MAX_DOCUMENT` bytes; checked against ``reference`` when that
        is a digest)."""
        separator = "@" if ":" in reference else ":"
        response = self._request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            repo,
            headers={"Accept": ACCEPT},
            limit=MAX_DOCUMENT,
            what=f"manifest {repo}{separator}{reference}",
        )
        data = response.data
        if DIGEST.fullmatch(reference):
            found = digest_of(data, reference.partition(":")[0])
            if found != reference:
                raise RegistryError(
                    f"{repo}@{reference}: the registry sent a manifest of digest "
                    f"{found}"
                )
            digest = reference
        else:
            digest = digest_of(data)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            try:
                document = json.loads(data)
            except (ValueError, RecursionError):
                document = None
            if isinstance(document, dict) and isinstance(
                document.get("mediaType"), str
            ):
                media_type = document["mediaType"] or media_type
        return data, media_type, digest

    def manifest_digest(self, repo: str, reference: str) -> Optional[str]:
        try:
            response = self._request(
                "HEAD",
                f"/v2/{repo}/manifests/{reference}",
                repo,
                headers={"Accept": ACCEPT},
            )
        except RegistryError as exc:
            if getattr(exc, "status", 0) == 404:
                return None
            raise
        digest: Optional[str] = response.headers.get("Docker-Content-Digest")
        return digest

    def put_manifest(
        self, repo: str, reference: str, data: bytes, media_type: str
    ) -> str:
        digest = digest_of(data)
        response = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            repo,
            headers={"Content-Type": media_type},
            body=data,
            ok=(201,),
        )
        stored = response.headers.get("Docker-Content-Digest", digest)
        if stored != digest:
            raise RegistryError(
                f"{repo}:{reference}: the registry stored {stored}, not {digest}"
            )
        return digest

    # -- blobs ------------------------------------------------------------------

    def blob_size(self, repo: str, digest: str) -> Optional[int]:
        """The size of a blob the repository has, or None."""
        try:
            response = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        except RegistryError as exc:
            if getattr(exc, "status", 0) == 404:
                return None
            raise
        length = response.headers.get("Content-Length", "0").strip()
        if not length.isdigit():
            raise RegistryError(
                f"{repo}@{digest}: the registry gives the size {length[:40]!r}"
            )
        return int(length)

    def get_blob(
        self,
        repo: str,
        digest: str,
        size: Optional[int] = None,
        limit: int = MAX_DOCUMENT,
    ) -> bytes:
        """A small blob (a config), read whole: at most ``limit`` bytes,
        within :attr:`document_timeout`, checked against its digest (and
        ``size``)."""
        where = f"blob {repo}@{digest}"
        if size is not None and size > limit:
            raise RegistryError(
                f"{where}: {size} bytes, more than the limit of {limit}"
            )
        response = self._request(
            "GET", f"/v2/{repo}/blobs/{digest}", repo, limit=limit, what=where
        )
        data = response.data
        if size is not None and len(data) != size:
            raise RegistryError(
                f"{where}: the registry sent {len(data)} bytes, "
                f"the descriptor says {size}"
            )
        found = digest_of(data, digest.partition(":")[0])
        if found != digest:
            raise RegistryError(f"{where}: the blob's digest is {found}, not {digest}")
        return data

    def open_blob(
        self, repo: str, digest: str, size: Optional[int] = None
    ) -> BlobReader:
        """A blob, streamed; its size and digest are checked as it is read."""
        response = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo, stream=True)
        return BlobReader(response.raw, digest, f"{repo}@{digest}", size)

    def read_range(self, repo: str, digest: str, offset: int, size: int) -> bytes:
        """``size`` bytes of a blob from ``offset`` (an HTTP range request)."""
        if size <= 0:
            return b""
        response = self._request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            repo,
            headers={"Range": f"bytes={offset}-{offset + size - 1}"},
            stream=True,
            ok=(206, 200),
        )
        # A registry that ignores ranges sends it all: skip to ours.
        skip = offset if response.status == 200 else 0
        data = bytearray()
        complete = False
        try:
            for piece in response.raw.stream(1 << 20):
                if skip >= len(piece):
                    skip -= len(piece)
                    continue
                data += piece[skip : skip + size - len(data)]
                skip = 0
                if len(data) >= size:
                    break
            else:
                complete = True
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(
                f"{repo}@{digest}: the download broke off: {exc}"
            ) from exc
        finally:
            if complete:
                response.raw.release_conn()
            else:
                _close(response.raw)
        return bytes(data)

    def mount(self, repo: str, digest: str, source_repo: str) -> bool:
        """Ask for a cross-repository mount; True when the blob was mounted."""
        response = self._request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?"
            + urlencode({"mount": digest, "from": source_repo}),
            repo,
            headers={"Content-Length": "0"},
            ok=(201, 202),
        )
        if response.status == 201:
            return True
        # Not mounted: an upload session was opened; close it.
        location = response.headers.get("Location")
        if location:
            try:
                self._request("DELETE", location, repo, ok=(204, 200, 404))
            except RegistryError:
                pass
        return False

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        parts = urlsplit(location)
        query = [*parse_qsl(parts.query, keep_blank_values=True), ("digest", digest)]
        return urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(query), "")
        )

    @staticmethod
    def _location(response: _Response, repo: str) -> str:
        location: Optional[str] = response.headers.get("Location")
        if not location:
            raise RegistryError(
                f"{repo}: the registry opened an upload without a Location"
            )
        return location

    def upload(
        self,
        repo: str,
        file: BinaryIO,
        digest: str,
        size: int,
        *,
        chunk_size: int = CHUNK_UPLOAD,
    ) -> None:
        """Upload ``size`` bytes of ``file`` as blob ``digest``: one streamed
        PUT, or PATCH chunks in order when larger than ``chunk_size``."""
        response = self._request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            repo,
            headers={"Content-Length": "0"},
            ok=(202,),
        )
        location = self._location(response, repo)
        if size <= chunk_size:
            response = self._request(
                "PUT",
                self._with_digest(location, digest),
                repo,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                body=file,
                ok=(201,),
            )
        else:
            sent = 0
            while sent < size:
                data = file.read(min(chunk_size, size - sent))
                if not data:
                    raise RegistryError(
                        f"{repo}@{digest}: the file ended after {sent} bytes"
                    )
                response = self._request(
                    "PATCH",
                    location,
                    repo,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{sent}-{sent + len(data) - 1}",
                        "Content-Length": str(len(data)),
                    },
                    body=data,
                    ok=(202,),
                )
                sent += len(data)
                received = response.headers.get("Range", "")
                if received != f"0-{sent - 1}":
                    raise RegistryError(
                        f"{repo}@{digest}: the registry holds {received!r} "
                        f"after {sent} bytes"
                    )
                location = self._location(response, repo)
            response = self._request(
                "PUT",
                self._with_digest(location, digest),
                repo,
                headers={"Content-Length": "0"},
                ok=(201,),
            )
        stored = response.headers.get("Docker-Content-Digest", digest)
        if stored != digest:
            raise RegistryError(f"{repo}: the registry stored {stored}, not {digest}")

    def iter_tags(self, repo: str) -> Iterator[str]:
        response = self._request(
            "GET",
            f"/v2/{repo}/tags/list",
            repo,
            limit=MAX_DOCUMENT,
            what=f"tags of {repo}",
        )
        try:
            tags = json.loads(response.data).get("tags") or []
        except (ValueError, AttributeError, RecursionError) as exc:
            raise RegistryError(f"tags of {repo}: not a JSON object") from exc
        if not isinstance(tags, list):
            raise RegistryError(f"tags of {repo}: 'tags' is not a list")
        yield from (tag for tag in tags if isinstance(tag, str))
