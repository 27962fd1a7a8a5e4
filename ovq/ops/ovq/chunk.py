"""``ovq_attention``: the OVQ op over a whole sequence (training and prefill)."""

from __future__ import annotations

import torch

from ..common import check_inputs, check_state, finish_output, head_first_units, state_for_compute
from ..dictionary import OnlineDictionary
from ..scan import chunk_scan
from ..state import OVQState
from ..triton_chunk import kernel_scan_or_fallback, use_triton
from ..utils import check_backend, check_bool, check_growth, check_int


def check_ovq_config(chunk_size, max_centroids, growth, growth_rate, count_prior) -> None:
    check_int("chunk_size", chunk_size)
    check_int("max_centroids", max_centroids)
    check_growth(growth, growth_rate)
    check_bool("count_prior", count_prior)


def initial_ovq_state(q, v, initial_state, chunk_size, max_centroids, growth, growth_rate, dtype,
                      writable: bool = False) -> OVQState:
    """The caller's state (checked and in the compute dtype), or an empty one.

    Unless ``writable`` (decoding fills its state in place and returns it), the empty one's tensors are read-only
    broadcast zeros: ``ovq_attention`` reads a state's active rows and buffered tokens only, and an empty state has
    none, so allocating and zero-filling N rows per (batch, head) bought nothing (at B = 16, H = 16, N = 4,096,
    D = 64: 0.56 GB of zeros a call)."""
    if initial_state is None:
        b, _, h, d = q.shape
        dv = v.shape[-1]
        if writable:
            return OVQState.empty(b, h, d, dv, chunk_size=chunk_size, max_centroids=max_centroids, growth=growth,
                                  growth_rate=growth_rate, dtype=dtype, device=q.device)
        zeros = torch.zeros((), dtype=dtype, device=q.device).expand
        return OVQState(sum_k=zeros(b, h, max_centroids, d), sum_v=zeros(b, h, max_centroids, dv),
                        count=zeros(b, h, max_centroids), buffer_k=zeros(b, h, chunk_size, d),
                        buffer_v=zeros(b, h, chunk_size, dv), growth=growth, growth_rate=float(growth_rate))
    rule = {"growth": growth} | ({"growth_rate": float(growth_rate)} if growth == "linear" else {})
    check_state(initial_state, OVQState, q, v, chunk_size, max_centroids, "max_centroids", **rule)
    return state_for_compute(initial_state, dtype)


def ovq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float | torch.Tensor, *,
                  chunk_size: int = 64, max_centroids: int = 1024, growth: str = "saturating",
                  growth_rate: float = 1.0, count_prior: bool = True, detach_state: bool = False,
                  initial_state: OVQState | None = None, output_final_state: bool = False,
                  backend: str = "auto") -> tuple[torch.Tensor, OVQState | None]:
    r"""Online Vector-Quantized attention (the function fixed in ``shared/docs/ovq-spec.md``).

    The sequence is cut into chunks of ``chunk_size`` tokens. Each query attends, in one softmax, to the
    dictionary built from all earlier chunks (logit ``beta * q̂·μ̂_n + log count_n``, value ``μ_v[n]``)
    and to the keys of its own chunk up to itself (logit ``beta * q̂·k̂_s``). Each full chunk is then
    written: the dictionary grows toward ``max_centroids`` by farthest-point picks, and every other token
    joins its nearest centroid (a running mean). q and k are L2-normalized inside.

    Args:
        q, k: ``[B, T, H, D]`` queries and keys (any float dtype; normalized inside).
        v: ``[B, T, H, Dv]`` values.
        beta: inverse temperature, a positive float or a positive tensor of shape ``[H]``.
        chunk_size: L, tokens per chunk (the read/write granularity).
        max_centroids: N, the hard cap on the dictionary (the memory budget).
        growth: ``"saturating"`` (target ``floor(N t / (N + t))``) or ``"linear"`` (``min(N, floor(r t))``).
        growth_rate: r for linear growth.
        count_prior: add ``log count`` to centroid logits (the mixture-weight reading).
        detach_state: stop gradients through the dictionary (local attention still gets them).
        initial_state: an :class:`OVQState` to continue from (e.g. the last call's final state).
        output_final_state: also return the state after the last token.
        backend: ``"auto"`` (Triton kernels for CUDA tensors of 16/32-bit floats, PyTorch otherwise),
            ``"torch"`` or ``"triton"`` (also on CPU under ``TRITON_INTERPRET=1``).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, Dv]`` in the input dtype; ``final_state`` is an
        :class:`OVQState` (float32, float64 for float64 inputs) or ``None``.

    Gradients reach q, k, v and beta (and a differentiable ``initial_state``) through the local
    attention and through every later read of the centroids they were merged into; picks, assignments
    and counts are piecewise constant.

    On CUDA the kernels add tokens to the sums with float atomics, so the sums' last bits vary between runs and
    near-tied assignments can flip; over long sequences two runs then drift apart. Under
    ``torch.use_deterministic_algorithms(True)`` the forward adds in a fixed order and is bitwise reproducible
    (slower; ``docs/kernels.md``).
    """
    dtype, beta_ = check_inputs(q, k, v, beta)
    check_ovq_config(chunk_size, max_centroids, growth, growth_rate, count_prior)
    check_bool("detach_state", detach_state)
    check_bool("output_final_state", output_final_state)
    check_backend(backend)
    state = initial_ovq_state(q, v, initial_state, chunk_size, max_centroids, growth, growth_rate, dtype)
    if backend == "triton" or (backend == "auto" and use_triton(q)):
        result = kernel_scan_or_fallback(backend, q, k, v, beta_, state, count_prior=count_prior,
                                         detach_state=detach_state, output_final_state=output_final_state)
        if result is not None:  # None: the kernels do not fit this configuration on the GPU
            return result
    qhat, khat, vv = head_first_units(q, k, v, dtype)
    dictionary = OnlineDictionary.from_state(state, detach_state)
    p = state.buffer_len
    o, final_state = chunk_scan(qhat, khat, vv, beta_, dictionary, state.buffer_k[:, :, :p], state.buffer_v[:, :, :p],
                                state.num_absorbed, chunk_size, count_prior, output_final_state)
    return finish_output(o, q), final_state
