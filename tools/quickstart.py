"""The main job on a real default input: convert a real image and check it.

With no arguments, a two-layer OCI image is made from files already on this
machine (the Python standard library, and the site-packages of the venv
estargz runs in), converted to eStargz with an external TOC, and every
layer is then read back and verified against the TOC digest in its
manifest, with its TOC taken from the TOC image (found by the -esgztoc
rule).  With arguments, they are passed to ``estargz image convert``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import site
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import estargz
from estargz.cli import main as cli_main
from estargz.image import LAYER_DIGEST, TOC_DIGEST, convert_image

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "quickstart"


def tar_of(source: Path, prefix: str, path: Path) -> None:
    partial = path.with_suffix(".part")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(source.rglob("*")):
            if (
                "__pycache__" in item.parts
                or "site-packages" in item.relative_to(source).parts[:1]
            ):
                continue
            tar.add(
                item, arcname=prefix + str(item.relative_to(source)), recursive=False
            )
    partial.replace(path)


def put(layout: Path, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def make_image(layout: Path) -> None:
    """An OCI layout holding one image of two gzip layers, tagged "latest"."""
    layers = [
        (Path(sysconfig.get_paths()["stdlib"]), "usr/lib/python3/"),
        (Path(site.getsitepackages()[0]), "usr/local/lib/python3/site-packages/"),
    ]
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors, diff_ids = [], []
    for i, (source, prefix) in enumerate(layers):
        plain = WORK / f"layer{i}.tar"
        tar_of(source, prefix, plain)
        data = plain.read_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
        descriptor = put(layout, gzip.compress(data, compresslevel=6, mtime=0))
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **descriptor}
        )
        plain.unlink()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **put(layout, config),
            },
            "layers": descriptors,
        }
    ).encode()
    top = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(layout, manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [top]})
    )


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest[7:]


def main() -> int:
    if len(sys.argv) > 1:
        return cli_main(["image", "convert", *sys.argv[1:]])
    WORK.mkdir(parents=True, exist_ok=True)
    source, target = WORK / "image", WORK / "converted"
    print("making an OCI image of the Python standard library and site-packages ...")
    make_image(source)
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    report = convert_image(
        f"oci:{source}:latest", f"oci:{target}:esgz", external_toc=True
    )
    seconds = time.perf_counter() - started
    print(f"converted oci:{source}:latest -> {report.destination} in {seconds:.1f} s")
    for layer in report.layers:
        size_in = (layer.uncompressed_size or 0) / 1e6
        toc = (layer.toc_digest or "-")[:19]
        print(
            f"  {layer.source_digest[:19]} -> {layer.digest[:19]}  "
            f"{size_in:6.1f} MB -> {layer.size / 1e6:5.1f} MB  TOC {toc}"
        )
    print(f"  TOC image {report.toc_image}: {report.toc_image_digest}")

    # Check it as a lazy-pulling runtime would: TOC from the TOC image, each
    # layer against the toc.digest annotation of its manifest.
    index = json.loads((target / "index.json").read_text())
    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m
        for m in index["manifests"]
    }
    manifest = json.loads(blob(target, names["esgz"]["digest"]).read_bytes())
    toc_manifest = json.loads(
        blob(target, names["esgz-esgztoc"]["digest"]).read_bytes()
    )
    tocs = {
        layer["annotations"][LAYER_DIGEST]: blob(target, layer["digest"])
        for layer in toc_manifest["layers"]
    }
    checked = 0
    for layer in manifest["layers"]:
        with estargz.open_blob(
            blob(target, layer["digest"]),
            external_toc=tocs[layer["digest"]],
            toc_digest=layer["annotations"][TOC_DIGEST],
        ) as opened:
            result = opened.verify()
            checked += result.chunks
    layers = len(manifest["layers"])
    print(f"verified {layers} layers ({checked} chunks) against their TOC digests: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
