"""Shared fixtures and settings of the estargz test suite.

``--installed`` makes the run prove that ``estargz`` is imported from an
installed wheel, not from the source tree (the wheel check uses it).
Hypothesis profiles: ``ESTARGZ_HYPOTHESIS=ci`` runs more examples than the
quick default.  Random data comes from the ``rng`` fixture, whose seed is
printed with every failure and can be fixed with ``ESTARGZ_SEED``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

settings.register_profile("default", max_examples=60, deadline=None, print_blob=True)
settings.register_profile(
    "ci",
    max_examples=400,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("ESTARGZ_HYPOTHESIS", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--installed",
        action="store_true",
        help="require estargz to be imported from an installed wheel",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--installed"):
        import estargz

        location = Path(estargz.__file__).resolve()
        if REPO / "src" in location.parents:
            raise pytest.UsageError(
                f"--installed given but estargz was imported from {location}"
            )


def pytest_report_header(config: pytest.Config) -> list[str]:
    import estargz

    return [
        f"estargz {estargz.__version__} from {Path(estargz.__file__).parent}",
        f"zlib-ng {estargz.zlib_ng_version()}, "
        f"sha256 {estargz.sha256_implementation()}",
    ]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded random generator; the seed is reported when the test fails."""
    seed = int(os.environ.get("ESTARGZ_SEED", random.SystemRandom().randrange(2**32)))
    request.node.user_properties.append(("seed", seed))
    return random.Random(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(
                    ("random seed", f"rerun with ESTARGZ_SEED={value}")
                )
    return report


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: tricky tars and Go-made blobs (see its README)."""
    return DATA
