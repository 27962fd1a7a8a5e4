"""The forward's ablation (``python -m ovq.bench.fwd_parts``): every variant's edit matches the kernel's source exactly
once and loads; in Triton's interpreter the unedited copy computes the op's output and the variants run."""
import pytest
import torch

from ovq.ops.triton_chunk import triton_available


def test_every_variant_edits_the_kernel_and_loads(tmp_path):
    from ovq.bench.fwd_parts import EDITS, edited_source, load_variant, main
    from ovq.ops import kernels

    assert main(["--check-edits"])["variants"] == list(EDITS)
    full = edited_source("full")
    for variant in EDITS:
        assert (edited_source(variant) == full) == (variant == "full"), variant
        assert load_variant(variant, tmp_path).arg_names == kernels.ovq_fwd_kernel.arg_names
    assert "range(0, m_loc, BN)" in full and "range(0, 0, BN)" in edited_source("no_loop")
    assert "tl.atomic_add(cnt_ptr + s_base + zs" not in edited_source("no_scatter")


@pytest.mark.skipif(not triton_available(), reason="needs Triton (a GPU or its interpreter)")
def test_variants_run_and_the_unedited_copy_is_the_kernel(tmp_path):
    from ovq.bench.fwd_parts import forward_with, load_variant
    from ovq.bench.ops import _rel
    from ovq.ops import kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 300, 2, 16, device=device) for _ in range(3))  # two full chunks of 128 and a partial
    beta = torch.full((2,), 4.0, device=device)
    out = {name: forward_with(kernels.ovq_fwd_kernel if name == "kernel" else load_variant(name, tmp_path),
                              q, k, v, beta, 64)
           for name in ("kernel", "full", "no_read", "no_scatter")}
    # (bitwise in the interpreter; on a GPU the scatter's float atomics add in any order)
    assert torch.equal(out["full"], out["kernel"]) or (device == "cuda" and _rel(out["full"], out["kernel"]) < 1e-5)
    for name in ("no_read", "no_scatter"):  # the first chunk reads no dictionary: only later rows change
        assert torch.isfinite(out[name]).all()
        assert _rel(out[name][:, :128], out["kernel"][:, :128]) < 1e-5
        assert not torch.allclose(out[name][:, 128:], out["kernel"][:, 128:]), name


def test_bad_arguments_are_argparse_errors():
    from ovq.bench.fwd_parts import main

    for bad in (["--variants", "nope"], ["--variants", ","], ["--configs", "1x"], ["--configs", "0x128"],
                ["--heads", "0"]):
        with pytest.raises(SystemExit):
            main([*bad, "--check-edits"])


def test_table_says_what_each_part_saved():
    from ovq.bench.fwd_parts import table

    rows = [{"B": 1, "T": 65536, "variant": v, "fwd_ms": ms, "o_rel_err": e}
            for v, ms, e in (("kernel", 19.0, 0.0), ("no_read", 12.5, 0.3), ("kernel", 19.2, 0.0))]
    lines = table(rows).splitlines()
    assert "no_read" in lines[2] and "6.50" in lines[2] and "saves" in lines[0]
