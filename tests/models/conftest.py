"""Fixtures shared by the model tests (tests/conftest.py has the session-wide ones)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a whole test module, the previous count restored after it.

    Not autouse: a module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``
    (its small tensors gain nothing from more threads, and a busy machine's contention costs
    less), and a module-scoped fixture that must build its network under it names it too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
