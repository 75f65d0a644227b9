"""A private Slurm cluster for the tests (launchers/slurm_cluster.py), started once per
session. Without Slurm the tests that use it are skipped, or fail when
FLOTILLA_REQUIRE_SLURM=1 (CI installs slurm-wlm and munge)."""

import contextlib
import os
import shutil
import tempfile

import pytest

from launchers.slurm_cluster import SlurmCluster, slurm_installed


def require_slurm() -> None:
    if slurm_installed():
        return
    problem = "needs Slurm (apt-get install slurm-wlm munge)"
    if os.environ.get("FLOTILLA_REQUIRE_SLURM"):
        pytest.fail(problem)
    pytest.skip(problem)


@contextlib.contextmanager
def private_slurm(**options):
    """A running cluster in a fresh directory (a short path: munge's socket name is
    limited), stopped and removed on exit."""
    require_slurm()
    directory = tempfile.mkdtemp(prefix="flotilla-slurm-")
    cluster = SlurmCluster(directory, **options)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's cluster: ``.env`` is what every Slurm command needs (SLURM_CONF)."""
    with private_slurm() as cluster:
        yield cluster
