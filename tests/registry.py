"""A real OCI registry (Debian's docker-registry, CNCF distribution) on
127.0.0.1 for the tests, without auth, with htpasswd basic auth, or with
token auth served by a small token server of our own."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlparse

USER = "tester"
PASSWORD = "testpass"
# bcrypt of PASSWORD (distribution's htpasswd accepts bcrypt only).
HTPASSWD = f"{USER}:$2b$05$8k0gOoAkc5Q3wgtV8zMoXuhEUZVBRIQz7.WB4XZpasaCPSLm4zUVi\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def registry_binary() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        raise RuntimeError("no docker-registry binary (Debian package docker-registry)")
    return found


class TokenServer:
    """Issues RS256 tokens granting what is asked, to USER:PASSWORD only."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "estargz-test-token")]
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_path = workdir / "token.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        chain = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict[str, Any]] = []
        server = self

        def encode(value: bytes) -> str:
            return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                auth = self.headers.get("Authorization", "")
                granted = (
                    auth
                    == "Basic "
                    + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                )
                server.requests.append(
                    {"scope": query.get("scope", []), "granted": granted}
                )
                if not granted:
                    self.send_response(401)
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    repo, _, actions = rest.rpartition(":")
                    access.append(
                        {"type": kind, "name": repo, "actions": actions.split(",")}
                    )
                issued = int(time.time())
                header = {"typ": "JWT", "alg": "RS256", "x5c": [chain]}
                claims = {
                    "iss": "estargz-test",
                    "sub": USER,
                    "aud": query.get("service", [""])[0],
                    "exp": issued + 600,
                    "nbf": issued - 10,
                    "iat": issued,
                    "jti": uuid.uuid4().hex,
                    "access": access,
                }
                signing = (
                    encode(json.dumps(header).encode())
                    + "."
                    + encode(json.dumps(claims).encode())
                )
                signature = key.sign(
                    signing.encode(), padding.PKCS1v15(), hashes.SHA256()
                )
                body = json.dumps({"token": signing + "." + encode(signature)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class LocalRegistry:
    """docker-registry serving plain HTTP on 127.0.0.1 at a free port."""

    def __init__(self, workdir: Path, auth: Optional[str] = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.token: Optional[TokenServer] = None
        config = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {workdir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
            "  secret: estargz-test-only",
        ]
        if auth == "htpasswd":
            (workdir / "htpasswd").write_text(HTPASSWD)
            config += [
                "auth:",
                "  htpasswd:",
                "    realm: estargz-test",
                f"    path: {workdir / 'htpasswd'}",
            ]
        elif auth == "token":
            self.token = TokenServer(workdir)
            config += [
                "auth:",
                "  token:",
                f"    realm: http://127.0.0.1:{self.token.port}/token",
                "    service: estargz-test-registry",
                "    issuer: estargz-test",
                f"    rootcertbundle: {self.token.cert_path}",
            ]
        (workdir / "config.yml").write_text("\n".join(config) + "\n")
        self.log = (workdir / "registry.log").open("wb")
        self.process = subprocess.Popen(
            [registry_binary(), "serve", str(workdir / "config.yml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: up, asking for auth
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (workdir / "registry.log").read_text(errors="replace")
                    raise RuntimeError(
                        f"docker-registry did not start: {log[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        if self.token is not None:
            self.token.stop()


def skopeo(*args: str, creds: Optional[str] = None) -> str:
    """Run skopeo (Debian package) with the policy check off and TLS off for
    our plain-HTTP registries."""
    binary = shutil.which("skopeo")
    if binary is None:
        raise RuntimeError("no skopeo binary (Debian package skopeo)")
    command = [binary, "--insecure-policy", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {result.stderr}")
    return result.stdout


# -- a registry that answers what a test wants ------------------------------------


Route = Callable[[BaseHTTPRequestHandler], None]


class FakeRegistry:
    """A small HTTP server on 127.0.0.1 posing as a registry (and its token
    server): ``routes`` maps a path to a function that answers the request,
    however hostile; other paths get 404.  ``requests`` records
    ``METHOD PATH`` of every request, ``headers`` its headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        # Set on stop: endless and trickling answers end.
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def dispatch(self) -> None:
                path = urlparse(self.path).path
                fake.requests.append(f"{self.command} {path}")
                fake.headers.append(dict(self.headers.items()))
                route = fake.routes.get(path)
                try:
                    if route is None:
                        send(self, b'{"errors":[{"code":"NOT_FOUND"}]}', status=404)
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = dispatch

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def serve_image(
        self,
        repo: str,
        tag: str,
        manifest: bytes,
        blobs: dict[str, bytes],
        media_type: str = "application/vnd.oci.image.manifest.v1+json",
    ) -> None:
        """Answer for a manifest by tag and for blobs by digest."""
        self.routes[f"/v2/{repo}/manifests/{tag}"] = lambda h: send(
            h, manifest, content_type=media_type
        )
        for digest, data in blobs.items():
            self.routes[f"/v2/{repo}/blobs/{digest}"] = blob_route(data)

    def stop(self) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()


def blob_route(data: bytes) -> Route:
    return lambda handler: send(handler, data, content_type="application/octet-stream")


def send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Optional[dict[str, str]] = None,
) -> None:
    """A whole answer with its Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def endless(
    handler: BaseHTTPRequestHandler,
    stopping: threading.Event,
    *,
    content_type: str = "application/json",
    declared: Optional[int] = None,
    status: int = 200,
    headers: Optional[dict[str, str]] = None,
) -> None:
    """An answer that never ends (no Content-Length, or a false one): a
    JSON-looking start, then more until the client hangs up."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    if declared is not None:
        handler.send_header("Content-Length", str(declared))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(b'{"padding":"')
    piece = b"x" * (1 << 16)
    while not stopping.is_set():
        handler.wfile.write(piece)


def trickle(
    handler: BaseHTTPRequestHandler,
    stopping: threading.Event,
    *,
    every: float,
    declared: int = 1_000_000,
    in_headers: bool = False,
) -> None:
    """An answer sent one byte every ``every`` seconds: the body (of a
    declared length), or with ``in_headers`` the headers themselves."""
    wfile = handler.wfile
    if in_headers:
        wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    else:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
    wfile.flush()
    while not stopping.wait(every):
        wfile.write(b"a" if in_headers else b" ")
        wfile.flush()
