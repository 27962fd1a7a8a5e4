"""A readable, loop-based reference for OVQ attention, written line by line from the spec.

Slow on purpose (Python loops over batch, heads, chunks, tokens and picks; float64) and shares no code
with the vectorized op, so the tests can hold that op to it. Differentiable, for gradient checks.
"""

from __future__ import annotations

import math

import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp_min(1e-6)


def naive_ovq_attention(q, k, v, beta, *, chunk_size=64, max_centroids=1024, growth="saturating",
                        growth_rate=1.0, count_prior=True, detach_state=False):
    """Returns ``(o [B, T, H, Dv] float64, final)``, ``final`` a dict with the dictionary after the last
    full chunk: ``sum_k [B, H, m, D]``, ``sum_v [B, H, m, Dv]``, ``count [B, H, m]``, ``num_centroids``,
    ``num_absorbed``."""
    B, T, H, _ = q.shape
    L, N = chunk_size, max_centroids
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    finals = []
    for b in range(B):
        for h in range(H):
            beta_h = beta[h] if isinstance(beta, torch.Tensor) and beta.dim() == 1 else beta
            qs = [_unit(q[b, t, h]) for t in range(T)]
            ks = [_unit(k[b, t, h]) for t in range(T)]
            vs = [v[b, t, h] for t in range(T)]
            sum_k, sum_v, count = [], [], []  # one entry per centroid
            absorbed = 0
            for c0 in range(0, T, L):
                c1 = min(c0 + L, T)
                # ---- read: the dictionary after chunks < c, plus the causal keys of this chunk ----
                mu = [_unit(s) for s in sum_k]
                mu_v = [s / c for s, c in zip(sum_v, count)]
                for t in range(c0, c1):
                    logits = [beta_h * (qs[t] @ mu[n]) + (math.log(count[n]) if count_prior else 0.0)
                              for n in range(len(mu))]
                    logits += [beta_h * (qs[t] @ ks[s]) for s in range(c0, t + 1)]
                    w = torch.softmax(torch.stack(logits), dim=0)
                    values = mu_v + vs[c0:t + 1]
                    out[b, t, h] = sum(w[i] * values[i] for i in range(len(values)))
                if c1 - c0 < L:
                    break  # a partial final chunk stays in the buffer
                # ---- write: grow, pick farthest points, assign, update ----
                absorbed += L
                if growth == "saturating":
                    target = (N * absorbed) // (N + absorbed)
                else:
                    target = min(N, math.floor(growth_rate * absorbed))
                n_new = max(0, min(target - len(sum_k), L))
                kc = [x.detach() if detach_state else x for x in ks[c0:c1]]
                vc = [x.detach() if detach_state else x for x in vs[c0:c1]]
                kl = [x.tolist() for x in ks[c0:c1]]  # plain floats for the discrete decisions

                def dot(a, b_):
                    return sum(x * y for x, y in zip(a, b_))

                mu_l = [_unit(s.detach()).tolist() for s in sum_k]
                sim = [max((dot(kl[j], m_) for m_ in mu_l), default=-math.inf) for j in range(L)]
                picked = []
                for _ in range(n_new):
                    j = min((sim[i], i) for i in range(L) if i not in picked)[1]
                    picked.append(j)
                    sum_k.append(kc[j])
                    sum_v.append(vc[j])
                    count.append(1)
                    sim = [max(sim[i], dot(kl[i], kl[j])) for i in range(L)]
                if not sum_k:
                    continue  # no centroid to absorb into: the chunk is dropped
                mu_l = [_unit(s.detach()).tolist() for s in sum_k]
                assign = {}
                for j in range(L):
                    if j not in picked:
                        scores = [dot(kl[j], m_) for m_ in mu_l]
                        assign[j] = scores.index(max(scores))  # first maximum: lowest n on ties
                for j, n in assign.items():  # all at once: assignments above used the pre-update μ̂
                    sum_k[n] = sum_k[n] + kc[j]
                    sum_v[n] = sum_v[n] + vc[j]
                    count[n] += 1
            finals.append((sum_k, sum_v, count, absorbed))
    m = len(finals[0][0])

    def stack(i, empty_dim):
        rows = [torch.stack(f[i]) if m else torch.zeros(0, empty_dim, dtype=torch.float64) for f in finals]
        return torch.stack(rows).reshape(B, H, m, empty_dim)

    final = {"sum_k": stack(0, k.shape[-1]), "sum_v": stack(1, v.shape[-1]),
             "count": torch.tensor([f[2] for f in finals], dtype=torch.float64).reshape(B, H, m),
             "num_centroids": m, "num_absorbed": finals[0][3]}
    return out, final
