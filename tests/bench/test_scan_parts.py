"""The scan kernels' ablation (``python -m ovq.bench.scan_parts``): every variant's edit matches the kernel's source
exactly once and loads; in Triton's interpreter the unedited copies compute the op's results and the variants run."""
import pytest
import torch

from ovq.ops.triton_chunk import triton_available


@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_every_variant_edits_the_kernel_and_loads(kernel, tmp_path):
    from ovq.bench.scan_parts import EDITS, KERNEL_NAMES, edited_source, load_variant, main
    from ovq.ops import kernels

    assert main(["--check-edits", "--kernel", kernel])["variants"] == list(EDITS[kernel])
    full = edited_source(kernel, "full")
    real = getattr(kernels, KERNEL_NAMES[kernel])
    for variant in EDITS[kernel]:
        assert (edited_source(kernel, variant) == full) == (variant == "full"), variant
        assert load_variant(kernel, variant, tmp_path).arg_names == real.arg_names
    assert full.count("range(0, 0, BN)") + 1 == edited_source(kernel, "no_loop").count("range(0, 0, BN)")
    if kernel == "fwd":
        assert "tl.atomic_add(cnt_ptr + s_base + zs" not in edited_source(kernel, "no_scatter")
    else:
        for add in ("tl.atomic_add(gk_ptr + rows_k, dsk,", "tl.atomic_add(gv_ptr + rows_v, dsv,"):  # (_read_grads')
            assert full.count(add) == 1 and add not in edited_source(kernel, "no_g")


def test_an_edit_that_no_longer_matches_is_named(monkeypatch):
    import ovq.bench.scan_parts as parts

    monkeypatch.setitem(parts.EDITS["bwd"], "stale", [("a line the kernel does not have\n", "")])
    with pytest.raises(ValueError, match="'bwd_stale'.*matches 0 times in kernels.py"):
        parts.edited_source("bwd", "stale")
    # an indented literal is whole lines: the same text indented deeper (here inside an if) does not match
    deeper = "                    mu_hi = tl.load(chi_ptr + rows_d, cache_modifier=\".cg\")\n"
    assert parts.edited_source("fwd", "full").count(deeper) == 1
    monkeypatch.setitem(parts.EDITS["fwd"], "shallow", [(deeper[4:], "")])
    with pytest.raises(ValueError, match="matches 0 times"):
        parts.edited_source("fwd", "shallow")


@pytest.mark.skipif(not triton_available(), reason="needs Triton (a GPU or its interpreter)")
def test_variants_run_and_the_unedited_copies_are_the_kernels(tmp_path):
    from ovq.bench.common import relative_error as _rel
    from ovq.bench.scan_parts import forward, launching, load_variant

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 300, 2, 16, device=device, requires_grad=True) for _ in range(3))  # 2 chunks + 44
    beta = torch.full((2,), 4.0, device=device, requires_grad=True)
    out = forward(q, k, v, beta, 64)
    do = torch.randn_like(out)
    grads = {}
    for name in ("full", "no_g", "no_rewind"):
        with launching("bwd", load_variant("bwd", name, tmp_path)):
            grads[name] = torch.autograd.grad(out, (q, k, v, beta), do, retain_graph=True)
    grads["kernel"] = torch.autograd.grad(out, (q, k, v, beta), do)
    # (bitwise in the interpreter; on a GPU float atomics add in any order)
    tol = 1e-5 if device == "cuda" else 0.0
    assert all(_rel(x, y) <= tol for x, y in zip(grads["full"], grads["kernel"]))
    assert _rel(grads["no_g"][2], grads["kernel"][2]) > 1e-3  # dv lost the dictionary's part
    assert all(torch.isfinite(x).all() for x in grads["no_rewind"])
    with torch.no_grad():
        o = {}
        for name in ("full", "no_read", "no_scatter"):
            with launching("fwd", load_variant("fwd", name, tmp_path)):
                o[name] = forward(q, k, v, beta, 64)
    assert _rel(o["full"], out) <= tol
    for name in ("no_read", "no_scatter"):  # the first chunk reads no dictionary: only later rows change
        assert torch.isfinite(o[name]).all()
        assert _rel(o[name][:, :128], out[:, :128]) <= tol
        assert _rel(o[name][:, 128:], out[:, 128:]) > 1e-3, name


def test_bad_arguments_are_argparse_errors():
    from ovq.bench.scan_parts import main

    for bad in (["--variants", "nope"], ["--variants", ","], ["--kernel", "bwd", "--variants", "no_read"],
                ["--kernel", "local"], ["--configs", "1x"], ["--configs", "0x128"], ["--heads", "0"],
                ["--set", "NOT_A_SETTING=1"], ["--set", "BWD_CACHED_OPERANDS=yes"]):
        with pytest.raises(SystemExit):
            main([*bad, "--check-edits"])


def test_table_says_what_each_part_saved():
    from ovq.bench.scan_parts import table

    rows = [{"B": 1, "T": 65536, "kernel": "bwd", "variant": v, "ms": ms, "rel_err": {"dq": e}}
            for v, ms, e in (("kernel", 25.0, 0.0), ("no_g", 14.5, 0.3), ("kernel", 25.2, 0.0))]
    lines = table(rows).splitlines()
    assert "no_g" in lines[2] and "10.50" in lines[2] and "saves" in lines[0] and "dq 3.0e-01" in lines[2]
