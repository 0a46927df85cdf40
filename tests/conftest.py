import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # Tests share two cores with whatever else runs; one thread keeps them predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
