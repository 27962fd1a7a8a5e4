"""The resident dictionary backward (``ovq_bwd_resident_kernel``: each program's slots, counts and gradient
accumulators on chip for the whole reverse scan) against the PyTorch op, on the cases of test_triton.

Its forward is the default one: the backward does not depend on the forward's variant.
"""

import pytest
import test_triton
from test_triton import CASES, _kernels_match_torch

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def resident_backward(monkeypatch):
    """``BWD_RESIDENT`` in blocks of 16 slots, so that these small cases run several programs per (b, h) (N = 100:
    7, whose slots interleave: slot n is program n % 7's)."""
    import ovq.ops.kernels as kernels
    import ovq.ops.triton_chunk as tc
    monkeypatch.setattr(tc, "BWD_RESIDENT", True)
    monkeypatch.setattr(tc, "RESIDENT_BLOCK", 16)
    monkeypatch.setattr(kernels, "ovq_bwd_dict_kernel", None)  # the sliced kernel must not be what ran


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-L{c[1]}-N{c[2]}-D{c[3]}-{c[5]}")
@pytest.mark.parametrize("count_prior", [True, False])
def test_resident_backward_matches_torch(case, count_prior):
    _kernels_match_torch(case, seed=case[0] + 2, count_prior=count_prior)


def test_vq():
    test_triton.test_vq_kernels_match_torch()


def test_detached_and_carried_states():
    test_triton.test_detach_state_and_carried_state_match_torch()


def test_one_block_holds_a_whole_small_dictionary(monkeypatch):
    """RESIDENT_BLOCK above N: one program per (b, h), its block's rows past N masked."""
    import ovq.ops.triton_chunk as tc
    monkeypatch.setattr(tc, "RESIDENT_BLOCK", 64)
    _kernels_match_torch(CASES[0], seed=9)


def test_resident_slices():
    import ovq.ops.triton_chunk as tc
    assert tc.resident_slices(4096) == 4096 // tc.RESIDENT_BLOCK
    assert tc.resident_slices(tc.RESIDENT_BLOCK + 1) == 2
    assert tc.resident_slices(1) == 1
