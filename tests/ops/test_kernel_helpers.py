"""Device helpers of ovq.ops.kernels that the CPU cannot reach through the op: the forward's slices exchange
each key's best (similarity, slot) by one atomic max of a packed int64, but on CPU (Triton's interpreter runs
programs one after another, so a spin barrier would wait forever) the forward runs a single slice."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from ovq.ops.kernels import _pack_best, _unpack_best  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _best_over_rows(val_ptr, idx_ptr, packed_ptr, best_ptr, W: tl.constexpr):
    """Row r's pairs packed; their atomic max per column (as the slices do), unpacked."""
    r = tl.program_id(0)
    cols = tl.arange(0, W)
    packed = _pack_best(tl.load(val_ptr + r * W + cols), tl.load(idx_ptr + r * W + cols))
    tl.store(packed_ptr + r * W + cols, packed)
    tl.atomic_max(best_ptr + cols, packed, sem="relaxed")


@triton.jit
def _unpack(packed_ptr, val_out, idx_out, W: tl.constexpr):
    cols = tl.arange(0, W)
    val, idx = _unpack_best(tl.load(packed_ptr + cols))
    tl.store(val_out + cols, val)
    tl.store(idx_out + cols, idx)


def test_packed_pairs_take_the_highest_similarity_then_the_lowest_slot():
    """What the loop over the slices' stored pairs computed: per key the highest similarity, the lowest slot
    among equal ones (−0.0 equals +0.0), −inf with slot 0 where no slice had a centroid."""
    inf = float("inf")
    vals = torch.tensor([[0.5, -0.25, -inf, 0.0, -3.0, 1e-30, 7.0, -inf],
                         [0.5, -0.5, -inf, -0.0, -2.0, -1e-30, 7.0, 2.0],
                         [0.25, -0.25, -inf, 0.0, -2.0, 0.0, 7.0, -inf]], dtype=torch.float32)
    slots = torch.tensor([[9, 3, 0, 5, 1, 2, 30, 0],
                          [4, 1, 0, 2, 8, 1, 6, 11],
                          [1, 0, 0, 7, 3, 9, 2, 0]], dtype=torch.int32)
    rows, width = vals.shape
    packed = torch.empty(rows, width, dtype=torch.int64, device=DEVICE)
    best = torch.full((width,), torch.iinfo(torch.int64).min, dtype=torch.int64, device=DEVICE)
    _best_over_rows[(rows,)](vals.to(DEVICE), slots.to(DEVICE), packed, best, W=width)
    val, idx = torch.empty(width, device=DEVICE), torch.empty(width, dtype=torch.int32, device=DEVICE)
    _unpack[(1,)](best, val, idx, W=width)
    expected_val, expected_idx = [], []
    for j in range(width):  # the old loop: strictly higher similarity, or equal with a lower slot
        bv, bi = -inf, 0
        for r in range(rows):
            v, i = vals[r, j].item(), slots[r, j].item()
            if v > bv or (v == bv and i < bi):
                bv, bi = v, i
        expected_val.append(bv)
        expected_idx.append(bi)
    assert idx.cpu().tolist() == expected_idx
    assert val.cpu().tolist() == expected_val
    # and each pair comes back as it went in (−0.0 as +0.0)
    for r in range(rows):
        _unpack[(1,)](packed[r].contiguous(), val, idx, W=width)
        assert idx.cpu().tolist() == slots[r].tolist()
        assert val.cpu().tolist() == [0.0 if x == 0 else x for x in vals[r].tolist()]
