"""Shared by the MoE tests: run a module's tests on one torch thread."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As each torchrun rank (OMP_NUM_THREADS=1): tiny matmuls run several times faster on one
    thread than on two on a shared 2-core machine (measured 6 s against 90 s for the stages test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
