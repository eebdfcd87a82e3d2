import os

import pytest

# Small thread counts keep the CPU tests stable on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight FramePrompt pipeline saved with save_pretrained (a --model folder)."""
    from frameprompt.testing import tiny_pipeline_dir

    return tiny_pipeline_dir(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine a second one only spins."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
