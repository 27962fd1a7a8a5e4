"""Pure-PyTorch stand-ins for the Triton functions that flash-linear-attention's layers call, for CPU tests.

fla 0.6.0's ``GatedDeltaNet`` and ``Mamba2`` layers are used unchanged; only the functions below are swapped
(``patch_fla_for_cpu``), each written from fla's own contract (docstring, reference or kernel):

- ``causal_conv1d`` / ``causal_conv1d_update``: the depthwise causal short convolution, state ``[N, D, W]``
  holding the last W inputs (newest last), varlen through ``cu_seqlens``.
- ``chunk_gated_delta_rule`` / ``fused_recurrent_gated_delta_rule``: the gated delta rule as the token
  recurrence of fla's ``naive_recurrent_gated_delta_rule``, with the gate ``-exp(A_log)·softplus(a + dt_bias)``
  of fla's ``naive_gdn_gate``, L2-normalized q/k and sigmoid beta, state ``[N, H, V, K]`` (V-first).
- ``rms_norm_gated`` (GDN's output norm) and ``rmsnorm_fn`` (Mamba2's gated norm; fla's ``rms_norm_ref``).
- Mamba2's activation: ``ACT2FN["silu"]`` becomes ``torch.nn.functional.silu``. Mamba2 itself already runs
  its pure-torch path (``torch_forward``) when ``mamba_ssm`` is missing.

They compute in float32 or wider (float64 inputs stay float64), so tests can hold them to tight tolerances.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def _segments(total: int, cu_seqlens: torch.Tensor | None, batch: int):
    """(batch row, start, end) of every sequence: rows of a [B, T] batch, or varlen spans of row 0."""
    if cu_seqlens is None:
        return [(b, 0, total) for b in range(batch)]
    bounds = cu_seqlens.tolist()
    return [(0, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def torch_causal_conv1d(x, weight=None, bias=None, residual=None, initial_state=None, output_final_state=False,
                        activation=None, backend=None, cu_seqlens=None, **kwargs):
    """x: [B, T, D], weight: [D, W] -> (y [B, T, D], final state [N, D, W] or None)."""
    d, w = weight.shape
    ys, finals = [], []
    for n, (row, start, end) in enumerate(_segments(x.shape[1], cu_seqlens, x.shape[0])):
        history = initial_state[n] if initial_state is not None else x.new_zeros(d, w)
        xs = torch.cat([history.transpose(0, 1).to(x.dtype), x[row, start:end]], dim=0)  # [W + L, D]
        windows = xs.unfold(0, w, 1)[1:]  # [L, D, W]: output t sees inputs t-W+1 .. t
        y = (_wide(windows) * _wide(weight)).sum(-1)
        if bias is not None:
            y = y + bias
        if activation in ("silu", "swish"):
            y = F.silu(y)
        ys.append(y.to(x.dtype))
        finals.append(xs[-w:].transpose(0, 1))
    y = torch.cat(ys, dim=0).view_as(x) if cu_seqlens is not None else torch.stack(ys)
    if residual is not None:
        y = y + residual
    return y, (torch.stack(finals) if output_final_state else None)


def torch_causal_conv1d_update(x, cache, residual=None, weight=None, bias=None, activation=None):
    """One token per sequence (x: [N, D], [N, 1, D] or [1, N, D]); ``cache`` [N, D, W] is updated in place."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    cache.copy_(torch.cat([cache[..., 1:], x2.unsqueeze(-1).to(cache.dtype)], dim=-1))
    y = (_wide(cache) * _wide(weight)).sum(-1)
    if bias is not None:
        y = y + bias
    if activation in ("silu", "swish"):
        y = F.silu(y)
    y = y.to(x.dtype).view(shape)
    if residual is not None:
        y = y + residual
    return y, cache


def torch_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                           state_v_first=False, cu_seqlens=None, use_gate_in_kernel=False, A_log=None,
                           dt_bias=None, **kwargs):
    """The gated delta rule, token by token. q, k: [B, T, H, K]; v: [B, T, H, V]; g, beta: [B, T, H]."""
    if q.shape[2] != v.shape[2]:
        raise NotImplementedError("the CPU stand-in has no grouped value heads")
    dtype = q.dtype
    q, k, v, g, beta = (_wide(t) for t in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:  # fla's kernel: x / sqrt(sum x^2 + 1e-6)
        q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
    if use_gate_in_kernel:
        g = -A_log.to(g.dtype).exp() * F.softplus(g + (dt_bias.to(g.dtype) if dt_bias is not None else 0))
    if use_beta_sigmoid_in_kernel:
        beta = beta.sigmoid() * (2 if allow_neg_eigval else 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outputs, finals = [], []
    for n, (row, start, end) in enumerate(_segments(q.shape[1], cu_seqlens, q.shape[0])):
        h = q.new_zeros(q.shape[2], q.shape[3], v.shape[3])  # [H, K, V]
        if initial_state is not None:
            h0 = _wide(initial_state[n])
            h = h0.transpose(-1, -2) if state_v_first else h0
        o = []
        for t in range(start, end):
            h = h * g[row, t].exp()[:, None, None]
            kt = k[row, t]
            delta = (v[row, t] - torch.einsum("hk,hkv->hv", kt, h)) * beta[row, t][:, None]
            h = h + kt[:, :, None] * delta[:, None, :]
            o.append(torch.einsum("hk,hkv->hv", q[row, t] * scale, h))
        outputs.append(torch.stack(o) if o else v.new_zeros(0, *v.shape[2:]))
        finals.append(h.transpose(-1, -2) if state_v_first else h)
    o = torch.cat(outputs).unsqueeze(0) if cu_seqlens is not None else torch.stack(outputs)
    final = torch.stack(finals).to(_wide(q).dtype) if output_final_state else None  # fla keeps states in fp32
    return o.to(dtype), final


def torch_rms_norm_gated(x, g, weight, bias=None, activation="swish", residual=None, prenorm=False,
                         residual_in_fp32=False, eps=1e-6):
    """RMSNorm(x)·weight, then times silu(g) (``"swish"``/``"silu"``) or sigmoid(g)."""
    if residual is not None or prenorm:
        raise NotImplementedError("the CPU stand-in has no residual/prenorm path")
    xw = _wide(x)
    y = xw * torch.rsqrt(xw.square().mean(-1, keepdim=True) + eps) * weight
    if bias is not None:
        y = y + bias
    gw = _wide(g)
    y = y * (F.silu(gw) if activation in ("swish", "silu") else gw.sigmoid())
    return y.to(x.dtype)


def torch_rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """fla's own reference ``rms_norm_ref`` (upcasting to float32 unless the input is float64)."""
    from fla.modules.norm.layernorm_gated import rms_norm_ref

    return rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate,
                        upcast=x.dtype != torch.float64)


def patch_fla_for_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap fla's Triton entry points for the functions above (undone when the test ends)."""
    import fla.layers.gated_deltanet as gdn
    import fla.layers.mamba2 as mamba2
    import fla.modules.causal_conv1d.ops as conv_ops
    import fla.modules.norm.fused_norm_gate as fused_norm_gate
    import fla.modules.norm.layernorm_gated as layernorm_gated

    monkeypatch.setattr(gdn, "causal_conv1d", torch_causal_conv1d)
    monkeypatch.setattr(gdn, "chunk_gated_delta_rule", torch_gated_delta_rule)
    monkeypatch.setattr(gdn, "fused_recurrent_gated_delta_rule", torch_gated_delta_rule)
    monkeypatch.setattr(conv_ops, "causal_conv1d", torch_causal_conv1d)
    monkeypatch.setattr(conv_ops, "causal_conv1d_update", torch_causal_conv1d_update)
    monkeypatch.setattr(fused_norm_gate, "rms_norm_gated", torch_rms_norm_gated)
    monkeypatch.setattr(layernorm_gated, "rmsnorm_fn", torch_rmsnorm_fn)
    monkeypatch.setitem(mamba2.ACT2FN, "silu", F.silu)
