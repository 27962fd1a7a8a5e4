import os

# Triton kernels run on CPU tensors through its interpreter; it must be set before triton is imported.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist every worker is a process: one intra-op thread each keeps two workers from
# oversubscribing two cores (the tests' tensors are small; OpenMP spinning then dominates).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def random_qkv(B, T, H, D, Dv=None, dtype=torch.float64, seed=0, device="cpu", requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q, k, v = (torch.randn(B, T, H, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
               for d in (D, D, Dv))
    if requires_grad:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    return q, k, v


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test: tiny ops run ~3x faster than on two threads fighting over a
    busy machine (or an xdist peer), and one summation order makes CPU results reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    """ovq.data's built-in sample, prepared once per test module (small shards: several per split)."""
    from data_helpers import prepare_sample

    out = tmp_path_factory.mktemp("prepared") / "sample"
    prepare_sample(out, shard_tokens=2000)
    return out


@pytest.fixture
def build(monkeypatch):
    """build(mixers, **config overrides) -> a tiny OVQForCausalLM (see tests/model_helpers.py)."""
    import functools

    from model_helpers import build_tiny_model

    return functools.partial(build_tiny_model, monkeypatch)
