"""The Gluon backward's ablation: every variant's edit still matches the kernel's source exactly once and the edited
module loads (timing needs a Hopper GPU: ``python -m ovq.bench.gluon_bwd_parts``)."""
import pytest

pytest.importorskip("triton.experimental.gluon")


def test_every_variant_edits_the_kernel_and_loads(tmp_path, capsys):
    from ovq.bench.gluon_bwd_parts import EDITS, edited_source, load_variant, main
    from ovq.ops import gluon_bwd

    assert main(["--check-edits"])["variants"] == list(EDITS)
    full = edited_source("full")
    for variant in EDITS:
        src = edited_source(variant)
        assert (src == full) == (variant == "full"), variant
        assert "ovq_bwd_dict_gluon_kernel" in src
        assert load_variant(variant, tmp_path).arg_names == gluon_bwd.ovq_bwd_dict_gluon_kernel.arg_names
    assert "_gather_own(gv_old" not in edited_source("no_gather") and "gk_ptr + (s_base + n_g)" not in \
        edited_source("no_gk")


def test_an_edit_that_no_longer_matches_is_named(monkeypatch):
    import ovq.bench.gluon_bwd_parts as parts

    monkeypatch.setitem(parts.EDITS, "stale", [("a line the kernel does not have\n", "")])
    with pytest.raises(ValueError, match="'stale'.*matches 0 times"):
        parts.edited_source("stale")


def test_bad_variants_are_argparse_errors():
    from ovq.bench.gluon_bwd_parts import main

    for bad in (["--variants", "nope"], ["--variants", ","], ["--repeats", "0"], ["--seq-len", "-1"]):
        with pytest.raises(SystemExit):
            main([*bad, "--check-edits"])
