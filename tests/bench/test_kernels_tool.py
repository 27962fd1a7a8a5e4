"""``python -m ovq.bench.kernels`` plumbing on CPU (timing and compiled-kernel info stubbed): each forward
variant is checked against the default before it is timed, and the module's settings are restored after."""

import torch

import ovq.bench.kernels as bench
import ovq.ops.triton_chunk as tc


def test_forward_variants_check_each_variant_and_restore_the_defaults(monkeypatch):
    monkeypatch.setattr(bench, "_time", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setattr(bench, "_compiled_info", lambda kernel: {})
    q, k, v = (torch.randn(1, 130, 2, 16) for _ in range(3))

    def fwd():
        with torch.no_grad():
            bench.ovq_attention(q, k, v, 12.0, chunk_size=64, max_centroids=64)

    def fwd_bwd():
        bench.ovq_attention(q.clone().requires_grad_(), k, v, 12.0, chunk_size=64, max_centroids=64)[0].sum().backward()

    defaults = (tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS, tc.LAUNCH["fwd"])
    rows = bench._forward_variants(1, 130, fwd, fwd_bwd, q, k, v, 64, None)
    variants = [r for r in rows if r["kernel"] == "fwd_variant"]
    assert len({(r["BN"], r["cached"], r["two_pass"], r["warps"]) for r in variants}) == len(variants) >= 6
    assert all(r["max_abs_diff_o"] == 0 and r["count_slots_differing"] == 0 for r in variants)  # CPU: one op
    assert rows[-1]["kernel"] == "fwd+bwd_best_forward"
    assert (tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS, tc.LAUNCH["fwd"]) == defaults


def test_chunk_size_variants_time_each_launch_and_restore_it(monkeypatch):
    monkeypatch.setattr(bench, "_time", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setattr(bench, "_compiled_info", lambda kernel: {})
    q, k, v = (torch.randn(1, 600, 2, 16, requires_grad=True) for _ in range(3))
    before = dict(tc.LAUNCH)
    real = bench.ovq_attention  # the timed backward asks for the kernels; on CPU run the PyTorch op
    monkeypatch.setattr(bench, "ovq_attention", lambda *a, backend=None, **kw: real(*a, **kw))
    rows = bench._chunk_sizes(1, 600, q, k, v, 64, None)
    forward = [r for r in rows if r["kernel"] == "fwd_chunk"]
    assert [(r["L"], r["warps"]) for r in forward] == [(L, w) for L in (64, 128, 256, 512) for w in (4, 8)]
    other = [r for r in rows if r["kernel"] == "fwd_chunk_uncached"]  # the default keeps cached operands
    assert [(r["L"], r["warps"], r["count_slots_differing"]) for r in other] == [(64, 4, 0), (128, 8, 0), (256, 8, 0)]
    both = [r for r in rows if r["kernel"] == "fwd+bwd_chunk"]
    assert [(r["L"], r["bwd_warps"]) for r in both] == [(L, w) for L in (64, 128, 256) for w in (4, 8)]
    assert [r["fwd_warps"] for r in both][::2] == [4, 8, 8]  # the launcher's rule
    assert all(r["ms"] == 1.0 for r in rows) and q.grad is not None
    assert tc.LAUNCH == before and tc.FWD_CACHED_OPERANDS is True


def test_gluon_backward_rows_alternate_the_flag_say_whether_it_ran_and_restore_it(monkeypatch):
    """On the CPU the Gluon kernel cannot run: every row says so, the flag alternates, and it is restored after."""
    import os

    monkeypatch.setattr(bench, "_time", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setenv("OVQ_GLUON_BWD", "0")
    q, k, v = (torch.randn(1, 300, 2, 64, requires_grad=True) for _ in range(3))
    rows = []
    monkeypatch.setattr(bench, "_progress", rows.append)
    bench._gluon_backward(1, 300, q, k, v, 64, torch.randn(1, 300, 2, 64))
    assert [(r["gluon_bwd"], r["repeat"]) for r in rows] == [(f, i) for i in range(3) for f in (False, True)]
    assert not any(r["gluon_ran"] for r in rows) and all(r["chunk_size"] == 128 for r in rows)
    assert os.environ["OVQ_GLUON_BWD"] == "0"
    from ovq.ops import gluon_bwd
    assert gluon_bwd.launch.__name__ == "launch"  # the counting wrapper is gone
