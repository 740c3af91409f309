"""Process groups shared by the executor tests: one gloo group per world size for the whole session,
so many schedules run for the price of one start-up (``backends.torch_exec.launch.WorkerGroup``)."""

import pytest

from backends.torch_exec.launch import WorkerGroup

# Seconds any single wait inside a rank may take; the runs here take well under a second.
TIMEOUT = 30.0


def _group(request, nproc: int):
    group = WorkerGroup(nproc, timeout=TIMEOUT, threads=1)
    request.addfinalizer(group.close)
    return group


@pytest.fixture(scope="session")
def group2(request):
    return _group(request, 2)


@pytest.fixture(scope="session")
def group4(request):
    return _group(request, 4)
