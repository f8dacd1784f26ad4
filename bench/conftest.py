"""Benchmark settings and the same-run ratio report.

Every benchmark records, in ``extra_info``, which implementation it runs
(``impl``: ``ours`` or a peer) and how many input bytes one round handles
(``bytes``).  At the end of the session each group is reported as ratios
against ``ours`` measured in the same run, never as absolute times compared
across runs.  Groups may also carry the C ceiling (zlib-ng alone, same
pieces, same threads) and a target stated as "ours at least R times a peer".

``pytest bench --benchmark-disable`` runs every benchmark once without
timing (CI does this so the suites cannot rot); the report then says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from _support import CEILINGS, PEERS, TARGETS


def pytest_configure(config: pytest.Config) -> None:
    # Our child processes should start as an installed estargz does: pip
    # byte-compiles a package when it installs it, a source checkout (and
    # PYTHONDONTWRITEBYTECODE) would compile every module on every start.
    import compileall

    import estargz

    compileall.compile_dir(Path(estargz.__file__).parent, quiet=1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ratios-json",
        default=None,
        help="also write the ratio report to this JSON file",
    )


def _rows(config: pytest.Config) -> dict[str, dict[str, dict[str, Any]]]:
    session = getattr(config, "_benchmarksession", None)
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    if session is None:
        return groups
    for bench in session.benchmarks:
        if bench.stats is None or not bench.stats.rounds:
            continue
        impl = bench.extra_info.get("impl", bench.name)
        groups[bench.group or bench.name][impl] = {
            "seconds": bench.stats.median,
            "bytes": bench.extra_info.get("bytes", 0),
            **{k: v for k, v in bench.extra_info.items() if k not in ("impl",)},
        }
    for group, peers in PEERS.items():
        if group in groups:
            groups[group].update(peers)
    return groups


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    groups = _rows(config)
    write = terminalreporter.write_line
    if not groups:
        if config.getoption("benchmark_disable", False):
            write("estargz ratios: timing disabled, nothing to report")
        return
    report: dict[str, Any] = {}
    terminalreporter.section("estargz: same-run ratios (speed of ours / speed of peer)")
    for group in sorted(groups):
        impls = groups[group]
        ours = impls.get("ours")
        if ours is None:
            continue
        line = [f"{group}:"]
        entry: dict[str, Any] = {"ours": ours}
        if ours["bytes"]:
            line.append(f"ours {ours['bytes'] / ours['seconds'] / 1e6:.1f} MB/s")
        if ours.get("per_read"):
            line.append(f"ours {ours['seconds'] * 1e6:.1f} us per read")
        if ours.get("bytes_per_chunk"):
            line.append(f"{ours['bytes_per_chunk']:.1f} bytes of memory per chunk")
        for impl, row in sorted(impls.items()):
            if impl == "ours":
                continue
            ratio = row["seconds"] / ours["seconds"]
            entry[impl] = {**row, "speed_ratio": ratio}
            line.append(f"{impl} x{ratio:.2f}")
        for impl, row in sorted(impls.items()):
            if impl == "ours" or not row.get("blob_size") or not ours.get("blob_size"):
                continue
            size_ratio = ours["blob_size"] / row["blob_size"]
            entry[impl]["blob_ratio"] = size_ratio
            line.append(f"| blob ours/{impl} {size_ratio:.4f}")
            if ours.get("peak_rss_kb") and row.get("peak_rss_kb"):
                line.append(
                    f"| peak RSS ours {ours['peak_rss_kb'] / 1024:.0f} MiB, "
                    f"{impl} {row['peak_rss_kb'] / 1024:.0f} MiB"
                )
        references = CEILINGS.get(group, {})
        labels = {"ceiling": "zlib-ng alone", "floor": "zlib-ng + digests"}
        for kind, label in labels.items():
            reference = references.get(kind)
            if reference and reference["seconds"] and ours["bytes"]:
                share = reference["seconds"] / ours["seconds"]
                entry[kind] = {**reference, "share": share}
                line.append(f"| {share:.0%} of {label} (C)")
        write("  ".join(line))
        for peer, wanted, why in TARGETS.get(group, []):
            if peer in ("ceiling", "floor"):
                got = entry.get(peer, {}).get("share")
            else:
                got = entry.get(peer, {}).get("speed_ratio")
            verdict = "n/a" if got is None else ("met" if got >= wanted else "MISSED")
            shown = "?" if got is None else f"{got:.2f}"
            reason = f" ({why})" if why else ""
            write(f"    target: ours >= {wanted:g} x {peer}: {shown} {verdict}{reason}")
            entry.setdefault("targets", []).append(
                {"peer": peer, "wanted": wanted, "got": got, "verdict": verdict}
            )
        report[group] = entry
    path = config.getoption("--ratios-json")
    if path:
        Path(path).write_text(json.dumps(report, indent=2, sort_keys=True))
        write(f"ratio report written to {path}")
