"""A loop-based reference for the static-codebook (VQ) op, written from the spec; float64."""

from __future__ import annotations

import math

import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp_min(1e-6)


def naive_vq_attention(q, k, v, beta, codebook, *, chunk_size=64, count_prior=True):
    """Returns ``(o [B, T, H, Dv] float64, final)`` with ``final = {"sum_v" [B, H, S, Dv], "count" [B, H, S]}``."""
    B, T, H, _ = q.shape
    L, S = chunk_size, codebook.shape[1]
    q, k, v, codebook = q.double(), k.double(), v.double(), codebook.double()
    out = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    sums = torch.zeros(B, H, S, v.shape[-1], dtype=torch.float64)
    counts = torch.zeros(B, H, S, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            beta_h = beta[h] if isinstance(beta, torch.Tensor) and beta.dim() == 1 else beta
            codes = [_unit(codebook[h, n]) for n in range(S)]
            sum_v = [torch.zeros(v.shape[-1], dtype=torch.float64) for _ in range(S)]
            count = [0] * S
            for c0 in range(0, T, L):
                c1 = min(c0 + L, T)
                used = [n for n in range(S) if count[n] > 0]
                for t in range(c0, c1):
                    qt = _unit(q[b, t, h])
                    logits = [beta_h * (qt @ codes[n]) + (math.log(count[n]) if count_prior else 0.0) for n in used]
                    logits += [beta_h * (qt @ _unit(k[b, s, h])) for s in range(c0, t + 1)]
                    w = torch.softmax(torch.stack(logits), dim=0)
                    values = [sum_v[n] / count[n] for n in used] + [v[b, s, h] for s in range(c0, t + 1)]
                    out[b, t, h] = sum(w[i] * values[i] for i in range(len(values)))
                if c1 - c0 < L:
                    break
                code_l = [c.tolist() for c in codes]
                for s in range(c0, c1):
                    kl = _unit(k[b, s, h]).tolist()
                    scores = [sum(x * y for x, y in zip(kl, c)) for c in code_l]
                    n = scores.index(max(scores))
                    sum_v[n] = sum_v[n] + v[b, s, h]
                    count[n] += 1
            sums[b, h] = torch.stack(sum_v).detach()
            counts[b, h] = torch.tensor(count, dtype=torch.float64)
    return out, {"sum_v": sums, "count": counts}
