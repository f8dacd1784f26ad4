"""Image conversion with real components: OCI layouts, docker archives made
by skopeo, a real registry (Debian's docker-registry) on 127.0.0.1 with no
auth, basic auth and token auth, checked with skopeo and Go stargz."""

from __future__ import annotations

import base64
import gzip
import json
import resource
import subprocess
import sys
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


# -- hostile registries -------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.stop()


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


def test_oversized_declared_manifest_is_refused_up_front(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.routes["/v2/x/app/manifests/1"] = lambda h: endless(
        h, fake.stopping, declared=10_000_000_000
    )
    error, _ = finishes(convert_from_fake(fake, tmp_path / "out"), 60)
    assert isinstance(error, estargz.RegistryError), error
    assert "10000000000 bytes, more than the limit of 4194304" in str(error)


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
