"""Fixtures for the whole test suite."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs torch on one thread.

    The test models are tiny and gain nothing from a second thread, while OpenMP threads that wait for
    a core busy with another process make each step many times slower. Tests that spawn processes
    (notebook kernels, DDP workers, benchmark jobs) set their own thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
