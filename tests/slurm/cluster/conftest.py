"""Tests against a real one-node Slurm cluster (tests/support/slurm_cluster.py), started once per session.

``slurm_cluster`` (session scope) yields the running SlurmCluster and points ``SLURM_CONF`` at it for the whole
session: the code under test calls sbatch and squeue through subprocess and must reach this cluster, not another.
Where the cluster cannot start the tests are skipped with the reason, except with ``ABLATION_REQUIRE_SLURM=1``
(CI sets it), where they fail: a CI run must never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.slurm_cluster import CLIENT_ENV_PREFIXES, SlurmCluster, SlurmUnavailable, start_cluster

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    # pyproject.toml's markers are not ours to edit; --strict-markers needs this one registered before collection.
    config.addinivalue_line("markers", "slurm: runs against the session's real one-node Slurm cluster (tests/slurm/)")


def pytest_collection_modifyitems(config, items):
    # A conftest's hook sees the whole session's items: mark only those collected from this folder.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slurm)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """The session's running cluster, with SLURM_CONF (and nothing else Slurm reads) set to it in os.environ."""
    stack = contextlib.ExitStack()
    try:
        cluster = stack.enter_context(start_cluster(tmp_path_factory.mktemp("slurm")))
        unavailable = None
    except SlurmUnavailable as exc:
        unavailable = exc
    if unavailable is not None:  # out here, so the report is the reason alone, not a chain of two exceptions
        if os.environ.get("ABLATION_REQUIRE_SLURM") == "1":
            pytest.fail(
                f"the Slurm test cluster could not start (ABLATION_REQUIRE_SLURM=1): {unavailable}", pytrace=False
            )
        pytest.skip(f"the Slurm test cluster could not start: {unavailable.reason}")
    with stack, pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith(CLIENT_ENV_PREFIXES)]:
            env.delenv(name)  # e.g. a session run inside a real Slurm job: its SBATCH_*/SLURM_* are not ours
        env.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
