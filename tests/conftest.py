import pytest
import torch

# Two cores and `pytest -n 2`: one intra-op thread per test process. More threads than cores
# make OpenMP spin against the other worker and slow small convolutions down tenfold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
