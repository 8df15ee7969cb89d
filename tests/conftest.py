import os

import pytest
import torch

os.environ.setdefault("EXPERTISE_PROGRESS", "0")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield
