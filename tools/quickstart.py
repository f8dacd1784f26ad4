"""The main job on a real default input: convert a real layer and check it.

The layer is this machine's Python standard library as a tar (made once
under build/quickstart/).  It is converted to eStargz with the default
options, read back and fully verified, and the report is printed.
"""

from __future__ import annotations

import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import estargz

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "quickstart"


def make_layer(path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    partial = path.with_suffix(".part")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(stdlib.rglob("*")):
            if "site-packages" in item.parts or "__pycache__" in item.parts:
                continue
            tar.add(
                item,
                arcname="usr/lib/python3/" + str(item.relative_to(stdlib)),
                recursive=False,
            )
    partial.replace(path)


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    layer = WORK / "layer.tar"
    if not layer.exists():
        print(f"making a layer of the Python standard library: {layer}")
        make_layer(layer)
    blob = WORK / "layer.esgz"
    start = time.perf_counter()
    result = estargz.convert(layer, blob)
    seconds = time.perf_counter() - start
    size = layer.stat().st_size
    print(
        f"converted {layer.name} ({size / 1e6:.1f} MB) in {seconds:.2f} s "
        f"({size / seconds / 1e6:.0f} MB/s)"
    )
    for key, value in result.to_json().items():
        print(f"  {key:<17} {value}")
    with estargz.open_blob(blob, toc_digest=result.toc_digest) as opened:
        report = opened.verify()
        sample = "usr/lib/python3/os.py"
        same = (
            opened.read(sample)
            == (Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_bytes()
        )
    print(
        f"verified {report.entries} entries and {report.chunks} chunks; "
        f"{sample} reads back {'identical' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
