"""Image conversion with real components: OCI layouts, docker archives made
by skopeo, a real registry (Debian's docker-registry) on 127.0.0.1 with no
auth, basic auth and token auth, checked with skopeo and Go stargz."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import make_oci_image, make_tar, sha256
from registry import (
    PASSWORD,
    USER,
    FakeRegistry,
    LocalRegistry,
    endless,
    send,
    skopeo,
    trickle,
)

import estargz
import estargz._registry
from estargz.image import (
    LAYER_DIGEST,
    TOC_DIGEST,
    UNCOMPRESSED_SIZE,
    ImageReference,
    convert_image,
    parse_reference,
)
from estargz.reader import open_blob

REPO = Path(__file__).resolve().parent.parent

LAYERS = [
    make_tar(
        [
            ("etc", None),
            ("etc/hosts", b"127.0.0.1 localhost\n"),
            ("bin", None),
            ("bin/tool", bytes(range(256)) * 3000),
        ]
    ),
    make_tar(
        [
            ("usr", None),
            ("usr/share", None),
            ("usr/share/doc.txt", b"words " * 5000),
            ("usr/share/empty", b""),
        ]
    ),
    make_tar([("opt", None), ("opt/big.bin", bytes(range(7)) * 1_000_000)]),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    server = LocalRegistry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_oci_image(root / "single", LAYERS, tag="v1")
    make_oci_image(
        root / "multi", LAYERS[:2], tag="v1", platforms=("linux/amd64", "linux/arm64")
    )
    return root


def manifest_of(layout: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of a single-platform image in a layout."""
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:{name}"))
    config = json.loads(skopeo("inspect", "--config", "--raw", f"oci:{layout}:{name}"))
    return raw, config


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest[7:]


def check_converted(
    layout: Path,
    manifest: dict[str, Any],
    config: dict[str, Any],
    external: Path | None = None,
) -> None:
    """Every layer opens, verifies against its toc.digest and has the
    annotations; the config's diffIDs are the new layers'."""
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"])
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        annotations = layer["annotations"]
        path = blob(layout, layer["digest"])
        data = path.read_bytes()
        assert sha256(data) == layer["digest"] and len(data) == layer["size"]
        uncompressed = gzip.decompress(data)
        assert annotations[UNCOMPRESSED_SIZE] == str(len(uncompressed))
        assert diff_id == sha256(uncompressed)
        toc = None
        if external is not None:
            toc = external[layer["digest"]]  # type: ignore[index]
        with open_blob(
            path, external_toc=toc, toc_digest=annotations[TOC_DIGEST]
        ) as opened:
            opened.verify()


def test_references() -> None:
    ref = parse_reference("docker://127.0.0.1:5000/a/b:tag")
    assert (ref.host, ref.repository, ref.tag) == ("127.0.0.1:5000", "a/b", "tag")
    assert str(ref.toc_image()) == "docker://127.0.0.1:5000/a/b:tag-esgztoc"
    hub = parse_reference("docker://ubuntu")
    assert (hub.host, hub.repository, hub.tag) == ("docker.io", "library/ubuntu", None)
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"docker://localhost/x@{digest}").digest == digest
    assert parse_reference("oci:/tmp/x:v1") == ImageReference(
        "oci", path="/tmp/x", name="v1"
    )
    assert parse_reference("docker-archive:/tmp/a.tar:app:1").name == "app:1"
    assert str(parse_reference("oci:/tmp/x:v1").toc_image()) == "oci:/tmp/x:v1-esgztoc"
    with pytest.raises(estargz.ConversionError, match="not an image address"):
        parse_reference("http://x/y")
    with pytest.raises(estargz.ConversionError, match="not a sha256 digest"):
        parse_reference("docker://x.io/y@md5:1")
    with pytest.raises(estargz.ConversionError, match="not a valid (tag|repository)"):
        parse_reference("docker://127.0.0.1:5000/x:bad:tag")
    with pytest.raises(estargz.ConversionError, match="not a valid repository name"):
        parse_reference("docker://127.0.0.1:5000/Upper/case")


def test_oci_layout_to_oci_layout(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = convert_image(
        f"oci:{images / 'single'}:v1", f"oci:{out}:esgz", chunk_size=1 << 20
    )
    manifest, config = manifest_of(out, "esgz")
    assert report.digest == sha256(blob(out, report.digest).read_bytes())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 3
    check_converted(out, manifest, config)
    # History and the rest of the config are kept.
    assert config["history"] == [{"created_by": f"layer {i}"} for i in range(3)]
    assert [layer.toc_digest for layer in report.layers] == [
        layer["annotations"][TOC_DIGEST] for layer in manifest["layers"]
    ]
    # Files get the mode open() would give them (0666 less the umask), so
    # other users (a registry, containerd) can read the layout.
    from estargz._util import file_mode

    for path in out.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == file_mode(), path


def test_external_toc_image(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = convert_image(
        f"oci:{images / 'single'}:v1", f"oci:{out}:esgz", external_toc=True
    )
    assert report.toc_image == f"oci:{out}:esgz-esgztoc"
    manifest, config = manifest_of(out, "esgz")
    toc_manifest = json.loads(skopeo("inspect", "--raw", f"oci:{out}:esgz-esgztoc"))
    toc_config = blob(out, toc_manifest["config"]["digest"]).read_bytes()
    assert (
        toc_config == b"{}"
        and toc_manifest["config"]["mediaType"]
        == "application/vnd.oci.image.config.v1+json"
    )
    toc_layers = toc_manifest["layers"]
    assert [layer["digest"] for layer in toc_layers] == sorted(
        layer["digest"] for layer in toc_layers
    )
    by_layer = {
        layer["annotations"][LAYER_DIGEST]: blob(out, layer["digest"])
        for layer in toc_layers
    }
    assert set(by_layer) == {layer["digest"] for layer in manifest["layers"]}
    check_converted(out, manifest, config, external=by_layer)  # type: ignore[arg-type]


def test_keep_diff_id_keeps_the_config_diff_ids(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_image(
        f"oci:{images / 'single'}:v1",
        f"oci:{out}:kd",
        external_toc=True,
        keep_diff_id=True,
    )
    _, config = manifest_of(out, "kd")
    assert config["rootfs"]["diff_ids"] == [sha256(layer) for layer in LAYERS]
    with pytest.raises(estargz.ConversionError, match="needs an external TOC"):
        convert_image(f"oci:{images / 'single'}:v1", f"oci:{out}:x", keep_diff_id=True)


def test_docker_archive_to_oci_layout(
    images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "app.tar"
    # What skopeo writes is what docker save writes: Docker types, plain tars.
    skopeo(
        "copy",
        f"oci:{images / 'single'}:v1",
        f"docker-archive:{archive}:example/app:v1",
    )
    out = tmp_path / "out"
    report = convert_image(f"docker-archive:{archive}", f"oci:{out}:oci", oci=True)
    manifest, config = manifest_of(out, "oci")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    check_converted(out, manifest, config)
    assert len(report.layers) == 3
    # An OCI layout gets OCI types even without --oci (layout readers such as
    # skopeo look for nothing else there).
    convert_image(f"docker-archive:{archive}:example/app:v1", f"oci:{out}:docker")
    manifest, config = manifest_of(out, "docker")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    check_converted(out, manifest, config)
    with pytest.raises(estargz.InputError, match="no image tagged 'nope:1'"):
        convert_image(f"docker-archive:{archive}:nope:1", f"oci:{out}:x")


@pytest.mark.needs_registry
def test_layout_to_registry_checked_by_skopeo_and_go(
    registry: LocalRegistry, images: Path, tmp_path: Path
) -> None:
    destination = f"docker://{registry.host}/converted/app:esgz"
    report = convert_image(
        f"oci:{images / 'single'}:v1", destination, plain_http=True, threads=2
    )
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", destination))
    assert inspected["Digest"] == report.digest
    pulled = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", destination, f"oci:{pulled}:esgz")
    manifest, config = manifest_of(pulled, "esgz")
    check_converted(pulled, manifest, config)
    go = REPO / "build" / "go" / "estargz-go"
    if not go.exists():
        subprocess.run(
            ["bash", str(REPO / "tests" / "goharness" / "build.sh"), str(go)],
            check=True,
        )
    for layer in manifest["layers"]:
        result = subprocess.run(
            [
                str(go),
                "verify",
                "-toc-digest",
                layer["annotations"][TOC_DIGEST],
                str(blob(pulled, layer["digest"])),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ok"]
    # Converting again uploads nothing new: every blob is already there.
    again = convert_image(f"oci:{images / 'single'}:v1", destination, plain_http=True)
    assert again.digest == report.digest


@pytest.mark.needs_registry
def test_registry_to_registry_multi_platform_with_toc_image(
    registry: LocalRegistry, images: Path
) -> None:
    source = f"docker://{registry.host}/source/multi:v1"
    skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{images / 'multi'}:v1", source
    )
    destination = f"docker://{registry.host}/converted/multi:esgz"
    report = convert_image(
        source,
        destination,
        plain_http=True,
        all_platforms=True,
        external_toc=True,
        oci=True,
    )
    # Both platforms share their layers: each converts once.
    assert [layer.action for layer in report.layers] == [
        "converted",
        "converted",
        "reused",
        "reused",
    ]
    index = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", destination))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"]["architecture"] for m in index["manifests"]] == [
        "amd64",
        "arm64",
    ]
    # The TOC image is found by the -esgztoc rule, in the same repository.
    toc_image = json.loads(
        skopeo("inspect", "--tls-verify=false", "--raw", destination + "-esgztoc")
    )
    layer_digests = {layer.digest for layer in report.layers}
    assert {
        layer["annotations"][LAYER_DIGEST] for layer in toc_image["layers"]
    } == layer_digests
    # skopeo copies the whole result, and every layer verifies against its TOC.
    out = Path(registry.process.args[-1]).parent / "multi-copy"  # type: ignore[index]
    skopeo("copy", "--all", "--src-tls-verify=false", destination, f"oci:{out}:esgz")
    skopeo("copy", "--src-tls-verify=false", destination + "-esgztoc", f"oci:{out}:toc")
    tocs = {
        layer["annotations"][LAYER_DIGEST]: blob(out, layer["digest"])
        for layer in toc_image["layers"]
    }
    for manifest_descriptor in index["manifests"]:
        manifest = json.loads(blob(out, manifest_descriptor["digest"]).read_bytes())
        config = json.loads(blob(out, manifest["config"]["digest"]).read_bytes())
        check_converted(out, manifest, config, external=tocs)  # type: ignore[arg-type]
    # Only the host's platform by default; an unknown platform is an error.
    single = convert_image(
        source, destination + "-amd64", plain_http=True, platforms=["linux/amd64"]
    )
    assert single.media_type == "application/vnd.oci.image.index.v1+json"
    with pytest.raises(estargz.ConversionError, match="no manifest for linux/s390x"):
        convert_image(
            source, destination + "-x", plain_http=True, platforms=["linux/s390x"]
        )


@pytest.mark.needs_registry
def test_copied_blobs_are_mounted_across_repositories(
    registry: LocalRegistry, images: Path, tmp_path: Path
) -> None:
    # An image whose layers are already eStargz: they are copied, by mount.
    first = f"docker://{registry.host}/mount/a:esgz"
    convert_image(f"oci:{images / 'single'}:v1", first, plain_http=True)
    report = convert_image(
        first, f"docker://{registry.host}/mount/b:esgz", plain_http=True
    )
    assert {layer.action for layer in report.layers} == {"mounted"}


@pytest.mark.needs_registry
@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_registries_with_auth(
    auth: str, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalRegistry(tmp_path / "registry", auth=auth)
    try:
        source = f"docker://{server.host}/src/app:v1"
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"--dest-creds={USER}:{PASSWORD}",
            f"oci:{images / 'single'}:v1",
            source,
        )
        destination = f"docker://{server.host}/dst/app:esgz"
        with pytest.raises(estargz.RegistryError, match="401"):
            convert_image(
                source, destination, plain_http=True, credentials=(USER, "wrong")
            )
        report = convert_image(
            source, destination, plain_http=True, credentials=(USER, PASSWORD)
        )
        assert report.digest
        # Credentials from the docker config file.
        config_dir = tmp_path / "docker"
        config_dir.mkdir()
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (config_dir / "config.json").write_text(
            json.dumps({"auths": {server.host: {"auth": token}}})
        )
        monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
        again = convert_image(
            source, f"docker://{server.host}/dst/other:esgz", plain_http=True
        )
        assert again.digest == report.digest
        inspected = json.loads(
            skopeo(
                "inspect",
                "--tls-verify=false",
                f"--creds={USER}:{PASSWORD}",
                destination,
            )
        )
        assert inspected["Digest"] == report.digest
        if auth == "token":
            assert server.token is not None and server.token.requests
            assert any("push" in " ".join(r["scope"]) for r in server.token.requests)
    finally:
        server.stop()


@pytest.mark.needs_registry
def test_cli_image_convert(registry: LocalRegistry, images: Path) -> None:
    destination = f"docker://{registry.host}/cli/app:esgz"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "estargz",
            "image",
            "convert",
            f"oci:{images / 'single'}:v1",
            destination,
            "--plain-http",
            "--json",
            "--estargz-min-chunk-size",
            "50000",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["destination"]["digest"] and len(report["layers"]) == 3
    assert all(
        layer["tocDigest"] and layer["seconds"] >= 0 for layer in report["layers"]
    )
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "estargz",
            "image",
            "convert",
            f"docker://{registry.host}/nope/x:1",
            destination,
            "--plain-http",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        missing.returncode == 1
        and "404" in missing.stderr
        and "Traceback" not in missing.stderr
    )


@pytest.mark.needs_registry
def test_docker_types_kept_without_oci_for_registries(
    registry: LocalRegistry,
    images: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    archive = tmp_path / "app.tar"
    skopeo(
        "copy",
        f"oci:{images / 'single'}:v1",
        f"docker-archive:{archive}:example/app:v1",
    )
    destination = f"docker://{registry.host}/docker/app:esgz"
    with caplog.at_level("WARNING"):
        convert_image(f"docker-archive:{archive}", destination, plain_http=True)
    assert "Docker media types" in caplog.text
    manifest = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", destination))
    assert (
        manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    assert all(TOC_DIGEST in layer["annotations"] for layer in manifest["layers"])


# -- hostile registries, tampered layouts and archives, atomic outputs ----------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.stop()


def fake_image(layers: list[bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A valid OCI manifest and its blobs (config, gzip layers)."""
    blobs: dict[str, bytes] = {}
    descriptors = []
    for layer in layers:
        blob = gzip.compress(layer, mtime=0)
        blobs[sha256(blob)] = blob
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(blob),
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
        }
    ).encode()
    blobs[sha256(config)] = config
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": descriptors,
    }
    return manifest, blobs


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) and its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def finishes(
    function: Callable[[], Any], seconds: float
) -> tuple[Optional[BaseException], float]:
    """Run ``function`` in a thread: (its exception or None, seconds taken);
    fails the test when it has not finished after ``seconds``."""
    outcome: list[Optional[BaseException]] = []

    def run() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0], time.monotonic() - started


def convert_from_fake(fake: FakeRegistry, out: Path) -> Callable[[], Any]:
    return lambda: convert_image(
        f"docker://{fake.host}/x/app:1", f"oci:{out}:esgz", plain_http=True
    )


def test_endless_manifest_is_cut_at_the_limit(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.routes["/v2/x/app/manifests/1"] = lambda h: endless(h, fake.stopping)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert isinstance(error, estargz.RegistryError), error
    assert "longer than the limit of 4194304 bytes" in str(error)
    assert "manifest x/app:1" in str(error)
    assert grown_mib < 200
    assert not (tmp_path / "out").exists()


def test_oversized_declared_manifest_is_refused_up_front(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.routes["/v2/x/app/manifests/1"] = lambda h: endless(
        h, fake.stopping, declared=10_000_000_000
    )
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), error
    assert "10000000000 bytes, more than the limit of 4194304" in str(error)


def test_endless_config_and_layer_are_cut(fake: FakeRegistry, tmp_path: Path) -> None:
    manifest, blobs = fake_image(LAYERS[:1])
    config = manifest["config"]["digest"]
    layer = manifest["layers"][0]
    fake.serve_image("x/app", "1", json.dumps(manifest).encode(), blobs)
    # A config that never ends: cut at the document limit.
    fake.routes[f"/v2/x/app/blobs/{config}"] = lambda h: endless(h, fake.stopping)
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), error
    assert f"blob x/app@{config}" in str(error) and "limit" in str(error)
    # A layer that never ends: streamed, and cut one byte past its size.
    fake.serve_image("x/app", "1", json.dumps(manifest).encode(), blobs)
    fake.routes[f"/v2/x/app/blobs/{layer['digest']}"] = lambda h: endless(
        h, fake.stopping, content_type="application/octet-stream"
    )
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), error
    assert f"more than the {layer['size']} bytes of its descriptor" in str(error)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_trickling_registry_meets_the_deadline(
    fake: FakeRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_headers: bool,
) -> None:
    # 1,000,000 bytes declared, one sent every 50 ms: each read is quick, the
    # whole would take 14 hours.
    monkeypatch.setattr(estargz._registry, "DOCUMENT_TIMEOUT", 1.5)
    fake.routes["/v2/x/app/manifests/1"] = lambda h: trickle(
        h, fake.stopping, every=0.05, in_headers=in_headers
    )
    error, seconds = finishes(convert_from_fake(fake, tmp_path / "out"), 30)
    assert isinstance(error, estargz.RegistryError), error
    assert "no complete answer within 1.5 s" in str(error)
    assert seconds < 10


def challenge(fake: FakeRegistry) -> Callable[[Any], None]:
    return lambda h: send(
        h,
        b'{"errors":[{"code":"UNAUTHORIZED"}]}',
        status=401,
        headers={
            "WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",'
            'service="fake",scope="repository:x/app:pull"'
        },
    )


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"[1,2]", "the answer is a JSON list, not an object"),
        (b'"tok"', "the answer is a JSON str, not an object"),
        (b"{not json", "the answer is not JSON"),
        (b'{"token":5}', "no token in the answer"),
        (b"{}", "no token in the answer"),
        (b'{"token":"a\\r\\nInjected: 1"}', "characters an HTTP header cannot"),
    ],
)
def test_hostile_token_answers(
    fake: FakeRegistry, tmp_path: Path, answer: bytes, problem: str
) -> None:
    fake.routes["/v2/x/app/manifests/1"] = challenge(fake)
    fake.routes["/token"] = lambda h: send(h, answer)
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), repr(error)
    prefix = f"token server http://{fake.host}/token: "
    assert str(error).startswith(prefix) and problem in str(error), str(error)
    assert "\n" not in str(error)


def test_endless_token_answer_is_cut(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.routes["/v2/x/app/manifests/1"] = challenge(fake)
    fake.routes["/token"] = lambda h: endless(h, fake.stopping)
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), error
    assert "longer than the limit of 1048576 bytes" in str(error)
    assert "token server" in str(error)


def test_redirects_with_endless_bodies_and_to_other_hosts(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    manifest, blobs = fake_image(LAYERS[:1])
    layer = manifest["layers"][0]["digest"]
    config = manifest["config"]["digest"]
    storage = FakeRegistry()  # where the registry sends blob downloads
    try:

        def authorized(route: Callable[[Any], None]) -> Callable[[Any], None]:
            def answer(h: Any) -> None:
                if h.headers.get("Authorization") != "Bearer secret":
                    challenge(fake)(h)
                else:
                    route(h)

            return answer

        fake.routes["/token"] = lambda h: send(h, b'{"token":"secret"}')
        data = json.dumps(manifest).encode()
        fake.routes["/v2/x/app/manifests/1"] = authorized(
            lambda h: send(h, data, content_type=OCI_MANIFEST)
        )
        # The config: a redirect whose body never ends, on the same host.
        fake.routes[f"/v2/x/app/blobs/{config}"] = authorized(
            lambda h: endless(
                h, fake.stopping, status=307, headers={"Location": "/storage/config"}
            )
        )
        fake.routes["/storage/config"] = lambda h: send(h, blobs[config])
        # The layer: to another host, which must not get the registry's token.
        fake.routes[f"/v2/x/app/blobs/{layer}"] = authorized(
            lambda h: send(
                h,
                b"",
                status=307,
                headers={"Location": f"http://{storage.host}/layer?signed=1"},
            )
        )
        storage.routes["/layer"] = lambda h: send(h, blobs[layer])
        error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
        assert error is None, error
        assert storage.requests == ["GET /layer"]
        assert "Authorization" not in storage.headers[0]
        assert "GET /storage/config" in fake.requests
        assert any(h.get("Authorization") == "Bearer secret" for h in fake.headers)
        manifest_out, config_out = manifest_of(tmp_path / "out", "esgz")
        check_converted(tmp_path / "out", manifest_out, config_out)
        # A redirect loop ends.
        fake.routes["/loop"] = lambda h: send(
            h, b"", status=302, headers={"Location": "/loop"}
        )
        fake.routes[f"/v2/x/app/blobs/{config}"] = authorized(
            lambda h: send(h, b"", status=302, headers={"Location": "/loop"})
        )
        with pytest.raises(estargz.RegistryError, match="more than 5 redirects"):
            convert_from_fake(fake, tmp_path / "loop")()
    finally:
        storage.stop()


def malformed(case: str, blobs: dict[str, bytes]) -> bytes:
    """The manifest of ``fake_image`` broken as ``case`` says (adding any
    blob the case needs to ``blobs``)."""
    manifest, more = fake_image(LAYERS[:1])
    blobs.update(more)
    if case == "not-json":
        return b'{"schemaVersion": 2, "config": '
    if case == "list":
        return b"[]"
    if case == "deep":
        return b"[" * 100_000
    if case == "layer-without-digest":
        del manifest["layers"][0]["digest"]
    elif case == "layers-string":
        manifest["layers"] = "abc"
    elif case == "layers-numbers":
        manifest["layers"] = [1, 2]
    elif case == "no-config":
        del manifest["config"]
    elif case == "uppercase-digest":
        manifest["layers"][0]["digest"] = "sha256:" + "A" * 64
    elif case == "short-digest":
        manifest["layers"][0]["digest"] = "sha256:abc"
    elif case == "md5-digest":
        manifest["layers"][0]["digest"] = "md5:" + "a" * 32
    elif case == "negative-size":
        manifest["layers"][0]["size"] = -1
    elif case == "string-size":
        manifest["layers"][0]["size"] = "12"
    elif case == "boolean-size":
        manifest["config"]["size"] = True
    elif case == "media-type-number":
        manifest["mediaType"] = 5
    elif case == "annotation-number":
        manifest["layers"][0]["annotations"] = {"a": 1}
    elif case in ("config-list", "config-diff-ids", "config-rootfs"):
        config = {
            "config-list": b"[1]",
            "config-diff-ids": b'{"rootfs":{"diff_ids":[5]}}',
            "config-rootfs": b'{"rootfs":"layers"}',
        }[case]
        blobs[sha256(config)] = config
        manifest["config"].update(digest=sha256(config), size=len(config))
    elif case == "schema-1":
        manifest["schemaVersion"] = 1
    elif case == "says-index":
        manifest["mediaType"] = OCI_INDEX
    return json.dumps(manifest).encode()


MALFORMED = {
    "not-json": r"manifest sha256:\w+: not valid JSON: Expecting value",
    "list": r"manifest sha256:\w+: the document is a list, not a JSON object",
    "deep": r"manifest sha256:\w+: not valid JSON: nested too deeply",
    "layer-without-digest": r"manifest sha256:\w+: layers\[0\]\.digest is missing",
    "layers-string": r"layers is a string, not a list",
    "layers-numbers": r"layers\[0\] is a number, not a descriptor object",
    "no-config": r"manifest sha256:\w+: config is missing",
    "uppercase-digest": r"layers\[0\]\.digest is 'sha256:AAAA.*not a digest",
    "short-digest": r"layers\[0\]\.digest is 'sha256:abc', not a digest",
    "md5-digest": r"layers\[0\]\.digest is 'md5:a+', not a digest",
    "negative-size": r"layers\[0\]\.size is negative \(-1\)",
    "string-size": r"layers\[0\]\.size is a string, not an integer",
    "boolean-size": r"config\.size is a boolean, not an integer",
    "media-type-number": r"mediaType is a number, not a string",
    "annotation-number": r"layers\[0\]\.annotations\['a'\] is a number",
    "config-list": r"config sha256:\w+: the document is a list, not a JSON object",
    "config-diff-ids": r"config sha256:\w+: rootfs\.diff_ids\[0\] is 5, not a digest",
    "config-rootfs": r"config sha256:\w+: rootfs is a string, not an object",
    "schema-1": r"schemaVersion is 1, not 2",
    "says-index": r"its mediaType is application/vnd.oci.image.index.v1\+json, "
    r"its descriptor says application/vnd.oci.image.manifest.v1\+json",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifests_from_a_registry(
    fake: FakeRegistry, tmp_path: Path, case: str
) -> None:
    blobs: dict[str, bytes] = {}
    fake.serve_image("x/app", "1", malformed(case, blobs), blobs)
    out = tmp_path / "out"
    with pytest.raises(estargz.ConversionError) as caught:
        convert_image(
            f"docker://{fake.host}/x/app:1", f"oci:{out}:esgz", plain_http=True
        )
    message = str(caught.value)
    assert re.search(MALFORMED[case], message), message
    assert message.startswith(f"docker://{fake.host}/x/app:1: ")
    assert "\n" not in message
    assert not out.exists()


def test_malformed_index_from_a_registry(fake: FakeRegistry, tmp_path: Path) -> None:
    manifest, blobs = fake_image(LAYERS[:1])
    data = json.dumps(manifest).encode()
    entry = {"mediaType": OCI_MANIFEST, "digest": sha256(data), "size": len(data)}
    for platform, problem in [
        ("linux", r"manifests\[0\]\.platform is a string, not an object"),
        ({"os": "linux"}, r"manifests\[0\]\.platform\.architecture is missing"),
        ({"os": "linux", "architecture": 1}, r"platform\.architecture is a number"),
    ]:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX}
        index["manifests"] = [dict(entry, platform=platform)]
        fake.routes["/v2/x/app/manifests/1"] = lambda h, i=index: send(
            h, json.dumps(i).encode(), content_type=OCI_INDEX
        )
        with pytest.raises(estargz.ConversionError, match=problem):
            convert_image(
                f"docker://{fake.host}/x/app:1",
                f"oci:{tmp_path / 'out'}:esgz",
                plain_http=True,
            )
    # An index entry whose manifest is not the size it says.
    fake.serve_image("x/app", sha256(data), data, blobs)
    index = {"schemaVersion": 2, "manifests": [dict(entry, size=len(data) + 1)]}
    fake.routes["/v2/x/app/manifests/1"] = lambda h: send(
        h, json.dumps(index).encode(), content_type=OCI_INDEX
    )
    with pytest.raises(estargz.RegistryError, match="its descriptor says"):
        convert_image(
            f"docker://{fake.host}/x/app:1",
            f"oci:{tmp_path / 'out'}:esgz",
            plain_http=True,
            all_platforms=True,
        )
    assert not (tmp_path / "out").exists()


def test_cli_malformed_manifest_is_one_line(fake: FakeRegistry, tmp_path: Path) -> None:
    for case in ("list", "layers-numbers", "no-config"):
        blobs: dict[str, bytes] = {}
        fake.serve_image("x/app", "1", malformed(case, blobs), blobs)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "estargz",
                "image",
                "convert",
                f"docker://{fake.host}/x/app:1",
                f"oci:{tmp_path / 'out'}:esgz",
                "--plain-http",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert re.search(MALFORMED[case], result.stderr), result.stderr
    fake.routes["/v2/x/app/manifests/1"] = challenge(fake)
    fake.routes["/token"] = lambda h: send(h, b"[1,2]")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "estargz",
            "image",
            "convert",
            f"docker://{fake.host}/x/app:1",
            f"oci:{tmp_path / 'out'}:esgz",
            "--plain-http",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "token server" in result.stderr
    assert not (tmp_path / "out").exists()


def layout_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def test_malformed_documents_in_layouts_and_archives(
    images: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images / "single", layout)
    out = tmp_path / "out"
    index = json.loads((layout / "index.json").read_text())
    # A manifest (stored under its right digest) with numbers for layers.
    broken = b'{"schemaVersion":2,"config":{"digest":"sha256:' + b"0" * 64
    broken += b'","size":2},"layers":[1]}'
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": layout_blob(layout, broken),
            "size": len(broken),
            "annotations": {"org.opencontainers.image.ref.name": "broken"},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        estargz.ConversionError,
        match=r"manifest sha256:\w+: layers\[0\] is a number, not a descriptor",
    ):
        convert_image(f"oci:{layout}:broken", f"oci:{out}:x")
    # index.json itself.
    (layout / "index.json").write_text('{"schemaVersion":2,"manifests":"x"}')
    with pytest.raises(
        estargz.ConversionError, match=r"index.json: manifests is a string"
    ):
        convert_image(f"oci:{layout}:v1", f"oci:{out}:x")
    (layout / "index.json").write_text('{"manifests":[{"digest":"sha256:1"}]}')
    with pytest.raises(
        estargz.ConversionError, match=r"manifests\[0\]\.digest is 'sha256:1'"
    ):
        convert_image(f"oci:{layout}:v1", f"oci:{out}:x")
    # A broken destination layout is refused before any work.
    with pytest.raises(estargz.ConversionError, match=r"index.json: manifests\[0\]"):
        convert_image(f"oci:{images / 'single'}:v1", f"oci:{layout}:x")
    assert not out.exists()
    # A docker archive's manifest.json.
    for entries, problem in [
        ([{"Config": 5}], r"manifest.json: \[0\]\.Config is a number"),
        ({"Config": "x"}, r"manifest.json: is an object, not a list"),
        ([{"Config": "c.json", "Layers": [1]}], r"\[0\]\.Layers\[0\] is a number"),
        ([{"Config": "nope.json"}], r"names 'nope.json', which the archive does not"),
    ]:
        archive = tmp_path / "broken.tar"
        with tarfile.open(archive, "w") as tar:
            data = json.dumps(entries).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        with pytest.raises(estargz.ConversionError, match=problem):
            convert_image(f"docker-archive:{archive}", f"oci:{out}:x")
    assert not out.exists()


def tampered_layout(tmp_path: Path) -> tuple[Path, str]:
    """A layout of plain-tar layers whose first layer was replaced by a tar
    of the same size and names but other content (a valid layer)."""
    layout = tmp_path / "tampered"
    make_oci_image(layout, LAYERS, tag="v1", compress=False)
    digest = sha256(LAYERS[0])
    evil = LAYERS[0].replace(b"127.0.0.1 localhost\n", b"6.6.6.6   localhost\n")
    assert len(evil) == len(LAYERS[0]) and evil != LAYERS[0]
    blob(layout, digest).write_bytes(evil)
    return layout, digest


def test_tampered_layout_layer_is_refused(tmp_path: Path) -> None:
    layout, digest = tampered_layout(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(estargz.ConversionError) as caught:
        convert_image(f"oci:{layout}:v1", f"oci:{out}:esgz")
    message = str(caught.value)
    assert f"blob {digest}: the content's digest is sha256:" in message
    assert f"not {digest}" in message and "\n" not in message
    # Nothing is left where the output was to go.
    assert not out.exists()
    # A replaced blob of another length is caught before it is read, a
    # gzip one too.
    gz = tmp_path / "gz"
    make_oci_image(gz, LAYERS, tag="v1")
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{gz}:v1"))
    layer = manifest["layers"][1]["digest"]
    blob(gz, layer).write_bytes(gzip.compress(b"not the layer"))
    with pytest.raises(
        estargz.ConversionError, match=f"blob {layer}: .* its descriptor says"
    ):
        convert_image(f"oci:{gz}:v1", f"oci:{out}:esgz")
    assert not out.exists()


def test_tampered_layout_config_and_manifest_are_refused(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    layout = tmp_path / "layout"
    shutil.copytree(images / "single", layout)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest_path = blob(layout, manifest_digest)
    manifest_bytes = manifest_path.read_bytes()
    manifest = json.loads(manifest_bytes)
    # The config with another diff_id of the same length.
    config_path = blob(layout, manifest["config"]["digest"])
    config = config_path.read_bytes()
    diff_id = json.loads(config)["rootfs"]["diff_ids"][0]
    config_path.write_bytes(config.replace(diff_id.encode(), b"sha256:" + b"e" * 64))
    with pytest.raises(
        estargz.ConversionError,
        match=f"blob {manifest['config']['digest']}: the content's digest",
    ):
        convert_image(f"oci:{layout}:v1", f"oci:{out}:esgz")
    config_path.write_bytes(config)
    # The manifest, pointing at another (present) layer blob.
    layers = manifest["layers"]
    swapped = manifest_bytes.replace(
        layers[0]["digest"].encode(), layers[1]["digest"].encode(), 1
    )
    manifest_path.write_bytes(swapped)
    with pytest.raises(
        estargz.ConversionError, match=f"blob {manifest_digest}: the content's digest"
    ):
        convert_image(f"oci:{layout}:v1", f"oci:{out}:esgz")
    assert not out.exists()


def test_tampered_copied_layer_is_refused(images: Path, tmp_path: Path) -> None:
    # Layers that are eStargz already are copied as they are: checked too.
    first = tmp_path / "first"
    convert_image(f"oci:{images / 'single'}:v1", f"oci:{first}:esgz")
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{first}:esgz"))
    layer = manifest["layers"][2]
    path = blob(first, layer["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(
        estargz.ConversionError, match=f"blob {layer['digest']}: the content's digest"
    ):
        convert_image(f"oci:{first}:esgz", f"oci:{out}:copy")
    assert not out.exists()


def test_tampered_docker_archive_layer_is_refused(images: Path, tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    skopeo("copy", f"oci:{images / 'single'}:v1", f"docker-archive:{archive}:a:1")
    data = archive.read_bytes()
    assert data.count(b"127.0.0.1 localhost\n") == 1
    archive.write_bytes(
        data.replace(b"127.0.0.1 localhost\n", b"6.6.6.6   localhost\n")
    )
    out = tmp_path / "out"
    with pytest.raises(estargz.ConversionError) as caught:
        convert_image(f"docker-archive:{archive}", f"oci:{out}:esgz")
    digest = sha256(LAYERS[0])
    assert f"(blob {digest}): the content's digest is" in str(caught.value)
    assert not out.exists()


def test_failed_conversion_leaves_an_existing_layout_as_it_was(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    convert_image(f"oci:{images / 'single'}:v1", f"oci:{out}:good")
    before = files_of(out)
    layout, _ = tampered_layout(tmp_path)
    # Three layers at once: the two sound ones are converted and written
    # before the failure of the third, then taken away again.
    events: list[dict[str, Any]] = []
    with pytest.raises(estargz.ConversionError, match="the content's digest"):
        convert_image(
            f"oci:{layout}:v1",
            f"oci:{out}:bad",
            external_toc=True,
            progress=events.append,
        )
    assert any(e.get("state") == "done" for e in events)
    assert files_of(out) == before
    # A directory that exists but is empty stays so.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(estargz.ConversionError, match="the content's digest"):
        convert_image(f"oci:{layout}:v1", f"oci:{empty}:bad")
    assert empty.is_dir() and not any(empty.iterdir())
    # A nested destination: every directory made is removed.
    with pytest.raises(estargz.ConversionError, match="the content's digest"):
        convert_image(f"oci:{layout}:v1", f"oci:{tmp_path / 'a' / 'b' / 'c'}:bad")
    assert not (tmp_path / "a").exists()
    # And a successful run still makes the layout, skopeo reads it.
    convert_image(f"oci:{images / 'single'}:v1", f"oci:{tmp_path / 'a' / 'b'}:ok")
    skopeo("inspect", f"oci:{tmp_path / 'a' / 'b'}:ok")


@pytest.mark.needs_registry
def test_failed_conversion_tags_nothing_in_a_registry(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    layout, _ = tampered_layout(tmp_path)
    destination = f"docker://{registry.host}/tampered/app:esgz"
    with pytest.raises(estargz.ConversionError, match="the content's digest"):
        convert_image(
            f"oci:{layout}:v1", destination, plain_http=True, external_toc=True
        )
    for reference in (destination, destination + "-esgztoc"):
        with pytest.raises(AssertionError, match="manifest unknown"):
            skopeo("inspect", "--tls-verify=false", "--raw", reference)


def test_config_diff_ids_must_match_the_layers(images: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images / "single", layout)
    manifest, config = manifest_of(layout, "v1")
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:-1]
    data = json.dumps(config).encode()
    manifest["config"] = {
        **manifest["config"],
        "digest": layout_blob(layout, data),
        "size": len(data),
    }
    data = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0] = {
        **index["manifests"][0],
        "digest": layout_blob(layout, data),
        "size": len(data),
    }
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(estargz.ConversionError, match=r"2 diff_ids for 3 layers"):
        convert_image(f"oci:{layout}:v1", f"oci:{tmp_path / 'out'}:x")
    assert not (tmp_path / "out").exists()


def test_archive_member_names_keep_their_dots() -> None:
    from estargz.image import _archive_name

    assert _archive_name("./manifest.json") == "manifest.json"
    assert _archive_name("././/abc/layer.tar") == "abc/layer.tar"
    assert _archive_name(".hidden/layer.tar") == ".hidden/layer.tar"
    assert _archive_name("..x") == "..x"
