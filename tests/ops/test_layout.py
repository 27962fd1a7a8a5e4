"""The kernels' boundary conversions (``ovq.ops.layout``) against the PyTorch they replace: values, the L2 norm's
backward, lead rows, the softmax backward's row term; odd widths, strided and half-precision inputs."""

import pytest
import torch

from ovq.ops.utils import l2norm

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rows(b, t, h, w, dtype, seed, strided):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, w + 3 if strided else w, generator=g).to(DEVICE, dtype)
    x = x[..., :w] if strided else x  # not contiguous: rows of w inside rows of w + 3
    if t > 2:
        x[0, 1, 0] = 0.0  # a zero row: its norm is clamped at eps
    return x


@pytest.mark.parametrize("shape", [(2, 37, 3, 12), (1, 130, 2, 64), (2, 1, 1, 16), (1, 0, 2, 8)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("lead", [0, 5])
def test_to_head_first_matches_torch(shape, normalize, dtype, strided, lead):
    from ovq.ops.layout import to_head_first

    b, t, h, w = shape
    x = _rows(b, t, h, w, dtype, seed=t, strided=strided)
    lead_rows = torch.randn(b, h, lead, w, device=DEVICE) if lead else 0
    o = torch.randn(b * h, lead + t, w, device=DEVICE)
    y, norm, delta = to_head_first(x, lead_rows, normalize, o=o)
    zeros_first, _, _ = to_head_first(x, lead, normalize)  # lead given as a count: zero rows
    assert torch.equal(zeros_first[:, lead:], y[:, lead:]) and not zeros_first[:, :lead].any()
    ref = x.transpose(1, 2).float()
    ref_norm = ref.norm(dim=-1)
    ref = l2norm(ref) if normalize else ref
    if lead:
        ref = torch.cat([lead_rows, ref], dim=2)
    ref = ref.reshape(b * h, lead + t, w)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(delta, (ref * o).sum(-1), rtol=1e-5, atol=1e-5)
    if normalize:
        torch.testing.assert_close(norm.view(b, h, lead + t)[:, :, lead:], ref_norm, rtol=1e-6, atol=1e-6)
    else:
        assert norm is None


@pytest.mark.parametrize("shape", [(2, 37, 3, 12), (1, 130, 2, 64), (2, 1, 1, 16), (1, 0, 2, 8)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead", [0, 5])
def test_from_head_first_is_the_output_layout(shape, dtype, lead):
    from ovq.ops.layout import from_head_first

    b, t, h, w = shape
    y = torch.randn(b * h, lead + t, w, device=DEVICE)
    out = from_head_first(y, b, h, lead, dtype)
    assert out.shape == (b, t, h, w) and out.dtype == dtype and out.is_contiguous()
    ref = y.view(b, h, lead + t, w)[:, :, lead:].transpose(1, 2)
    if dtype == torch.bfloat16 and DEVICE == "cpu":  # Triton's interpreter truncates to bfloat16, not rounds
        torch.testing.assert_close(out.float(), ref, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(out, ref.to(dtype))


@pytest.mark.parametrize("shape", [(2, 37, 3, 12), (1, 130, 2, 64)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead", [0, 5])
def test_from_head_first_is_the_l2norm_backward(shape, dtype, lead):
    """The gradient of x -> l2norm(x) head-first (autograd through the PyTorch path) from the unit rows and norms."""
    from ovq.ops.layout import from_head_first, to_head_first

    b, t, h, w = shape
    x = _rows(b, t, h, w, dtype, seed=t + 1, strided=False).requires_grad_()
    lead_rows = torch.randn(b, h, lead, w, device=DEVICE) if lead else 0
    unit, norm, _ = to_head_first(x.detach(), lead_rows, normalize=True)
    dy = torch.randn(b * h, lead + t, w, device=DEVICE)
    dy[0, lead + 1] *= 1e-3  # the zero row's gradient is dy / eps: within float16's range
    dx = from_head_first(dy, b, h, lead, dtype, unit, norm)
    ref_unit = l2norm(x.transpose(1, 2).float()).reshape(b * h, t, w)
    (ref_dx,) = torch.autograd.grad(ref_unit, x, dy[:, lead:])
    assert dx.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(dx.float(), ref_dx.float(), rtol=tol, atol=tol)
    assert torch.equal(dx[0, 1, 0].float(), (dy[0, lead + 1] / 1e-6).to(dtype).float())  # the clamped zero row
