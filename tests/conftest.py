"""Shared test fixtures."""

from __future__ import annotations

import pytest

from fl_strategies.flwr_compat import set_task_identity


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages built outside a Flower runtime need a sender identity."""
    set_task_identity(run_id=1, node_id=1, task_id=1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one thread is faster and steadier on shared CPUs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Tests use a cache directory of their own (clients.cache), never the user's."""
    import os

    from clients.cache import CACHE_DIR_ENV

    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("fedlean-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous
