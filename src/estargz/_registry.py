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
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Optional
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import urllib3

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
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


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
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the docker config {path}: {exc}") from exc
    auths = config.get("auths") or {}
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
    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.status: int = raw.status
        self.headers = raw.headers


class BlobReader(io.RawIOBase):
    """A blob streamed from the registry, its digest checked at the end."""

    def __init__(self, response: Any, digest: str, where: str) -> None:
        self._response = response
        self._digest = digest
        self._where = where
        self._hash = _native.Sha256()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        try:
            n = int(self._response.readinto(view))
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(
                f"{self._where}: the download broke off: {exc}"
            ) from exc
        if n:
            self._hash.update(view[:n])
            return n
        self._done = True
        self._response.release_conn()
        found = "sha256:" + self._hash.hexdigest()
        if self._digest.startswith("sha256:") and found != self._digest:
            raise RegistryError(
                f"{self._where}: the blob's digest is {found}, not {self._digest}"
            )
        return 0

    def close(self) -> None:
        if not self._done:
            self._response.release_conn()
            self._done = True
        super().close()


class RegistryClient:
    """Talks to one registry host.

    :param host: ``host[:port]``; Docker Hub's ``docker.io`` is mapped to its API host
    :param plain_http: use http:// instead of https://
    :param credentials: ``(user, password)``; default: the docker config file
    """

    def __init__(
        self,
        host: str,
        *,
        plain_http: bool = False,
        credentials: Optional[tuple[str, str]] = None,
        timeout: float = 120.0,
    ) -> None:
        self.host = (
            "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        )
        self.base = f"{'http' if plain_http else 'https'}://{self.host}"
        self.credentials = credentials or docker_config_credentials(self.host)
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
        try:
            response = self._http.request("GET", url, headers=self._basic_header())
        except urllib3.exceptions.HTTPError as exc:
            raise RegistryError(f"token server {realm}: {exc}") from exc
        if response.status != 200:
            who = "the credentials" if self.credentials else "an anonymous token"
            raise RegistryError(
                f"token server {realm} refused {who} ({response.status})"
            )
        try:
            body = json.loads(response.data)
            token = body.get("token") or body.get("access_token")
        except ValueError as exc:
            raise RegistryError(f"token server {realm}: not JSON") from exc
        if not isinstance(token, str):
            raise RegistryError(f"token server {realm}: no token in the answer")
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
    ) -> _Response:
        url = urljoin(self.base + "/", url)
        position = body.tell() if hasattr(body, "tell") else None
        for attempt in range(2):
            sent = dict(headers or {})
            sent.update(self._auth_headers(repo))
            if position is not None and attempt:
                body.seek(position)
            try:
                raw = self._http.request(
                    method,
                    url,
                    headers=sent,
                    body=body,
                    preload_content=not stream,
                    redirect=method in ("GET", "HEAD"),
                )
            except urllib3.exceptions.HTTPError as exc:
                raise RegistryError(
                    f"{method} {url}: {_explain(exc, self.host)}"
                ) from exc
            if raw.status == 401 and attempt == 0:
                challenge = raw.headers.get("WWW-Authenticate", "")
                if stream:
                    raw.release_conn()
                scheme = challenge.split(" ", 1)[0].lower()
                if scheme == "bearer":
                    self._fetch_token(challenge, repo)
                    continue
                if scheme == "basic" and self.credentials and not self._basic:
                    self._basic = True
                    continue
            break
        if raw.status not in ok:
            raise self._error(method, url, raw, stream)
        return _Response(raw)

    def _error(self, method: str, url: str, raw: Any, stream: bool) -> RegistryError:
        status = raw.status
        detail = ""
        if status == 416 or method == "HEAD":
            # distribution answers 416 with a body shorter than it announces.
            raw.release_conn()
        else:
            data = raw.read(8192) if stream else raw.data
            raw.release_conn()
            try:
                errors = json.loads(data).get("errors") or []
                detail = "; ".join(
                    f"{e.get('code')}: {e.get('message')}" for e in errors
                )
            except (ValueError, AttributeError):
                detail = data[:200].decode("utf-8", "replace").strip()
        if status == 401:
            detail = detail or "authentication required"
            detail += " (give --creds USER:PASS or log in with docker)"
        error = RegistryError(f"{method} {url}: {status} {detail}".rstrip())
        error.status = status  # type: ignore[attr-defined]
        return error

    # -- manifests --------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index."""
        response = self._request(
            "GET", f"/v2/{repo}/manifests/{reference}", repo, headers={"Accept": ACCEPT}
        )
        data = response.raw.data
        digest = "sha256:" + _native.Sha256(data).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(
                f"{repo}@{reference}: the registry sent a manifest of digest {digest}"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            try:
                media_type = json.loads(data).get("mediaType") or media_type
            except ValueError:
                pass
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
        digest = "sha256:" + _native.Sha256(data).hexdigest()
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
        return int(response.headers.get("Content-Length", "0"))

    def open_blob(self, repo: str, digest: str) -> BlobReader:
        """A blob, streamed; its digest is checked when it has been read."""
        response = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo, stream=True)
        return BlobReader(response.raw, digest, f"{repo}@{digest}")

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
        try:
            if response.status == 200:
                # A registry that ignores ranges sends it all: skip to ours.
                data = b""
                skipped = 0
                for piece in response.raw.stream(1 << 20):
                    if skipped + len(piece) > offset:
                        data += piece[max(0, offset - skipped) :]
                        if len(data) >= size:
                            break
                    skipped += len(piece)
                return data[:size]
            return bytes(response.raw.read())
        finally:
            response.raw.release_conn()

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
        location = response.headers["Location"]
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
                location = response.headers["Location"]
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
        response = self._request("GET", f"/v2/{repo}/tags/list", repo)
        yield from json.loads(response.raw.data).get("tags") or []
