"""``python -m ovq.bench.resources`` on CPU: a kernel compiled for the H200 (sm_90a) without a GPU, and its
shared memory read back. It also holds the forward to loading at chunk size 512 with one pipeline stage (the
launcher's retry), so that L = 512 evaluates on the kernels; with L x L tiles it took minutes to compile there."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_forward_at_chunk_512_fits_the_h200_with_one_stage(tmp_path):
    from ovq.bench.resources import numpy_breaks_interpreter
    if numpy_breaks_interpreter():  # (the tool says so and stops)
        pytest.skip("the tool records launches in Triton 3.6's interpreter, which needs numpy < 2.4")
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    proc = subprocess.run([sys.executable, "-m", "ovq.bench.resources", "--L", "512", "--stages", "1", "--kernels",
                           "ovq_fwd_kernel", "--ptxas-timeout", "0", "--json", str(out), "--keep",
                           str(tmp_path / "ptx")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ptx" / "ovq_fwd_kernel_L512_w8_s1.ptx").read_text().startswith("//")  # --keep kept it
    (row,) = json.loads(out.read_text())
    assert (row["kernel"], row["L"], row["num_stages"]) == ("ovq_fwd_kernel", 512, 1)
    constexprs = row["constexprs"]
    assert (constexprs["READ_PREC"], constexprs["ASSIGN_PREC"], constexprs["NB"]) == ("bf16", "bf16x3", 8)
    assert row["signature"]["q_ptr"] == "*fp32"
    assert 0 < row["shared"] <= 232_448 and row["fits"]


LISTING = """\
ovq_fwd_kernel:
	//## File "/x/ovq/ops/kernels.py", line 10
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_1:
	//## File "/x/ovq/ops/kernels.py", line 20
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
.L_x_2:
	//## File "/x/ovq/ops/kernels.py", line 30
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0040*/                   MUFU.EX2 R3, R3 ;
        /*0050*/              @!P0 BRA `(.L_x_2) ;
	//## File "/x/ovq/ops/kernels.py", line 40
        /*0060*/                   REDG.E.ADD.F32x4.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R8 ;
        /*0070*/                   STL [R1], R9 ;
        /*0080*/               @P1 BRA `(.L_x_1) ;
        /*0090*/                   @P2 BRA `(.L_x_3) ;
.L_x_3:
        /*00a0*/                   EXIT ;
"""


def test_the_loops_of_a_disassembly_are_found_with_their_instruction_classes():
    """Two nested loops (backward branches to .L_x_1 and .L_x_2); a forward branch closes none."""
    from ovq.bench.resources import sass_loops

    inner, outer = sass_loops(LISTING)
    assert (inner["start"], inner["end"], inner["instructions"], inner["head"]) == ("0x20", "0x50", 4, "kernels.py:30")
    assert (inner["mma"], inner["barrier"], inner["special_math"], inner["global_load"]) == (1, 1, 1, 0)
    assert inner["innermost"] and not outer["innermost"]
    assert (outer["start"], outer["end"], outer["instructions"], outer["head"]) == ("0x10", "0x80", 8, "kernels.py:20")
    assert (outer["global_load"], outer["global_atomic"], outer["spill_store"], outer["mma"]) == (1, 1, 1, 1)
    assert inner["lines"] == [["kernels.py:30", 4]]
    assert outer["lines"] == [["kernels.py:30", 4], ["kernels.py:40", 3], ["kernels.py:20", 1]]
    # the outer loop's own work, without the inner loop's four instructions
    assert outer["outside_nested"]["instructions"] == 4 and outer["outside_nested"]["barrier"] == 0
    assert (outer["outside_nested"]["global_atomic"], inner["outside_nested"]["instructions"]) == (1, 4)


@pytest.mark.parametrize("args, message", [
    (["--kernels", "ovq_nope_kernel"], "--kernels: unknown ['ovq_nope_kernel']; the kernels are ovq_fwd_kernel"),
    (["--loops", "--ptxas-timeout", "0"], "--loops reads the cubins ptxas makes: it needs --ptxas-timeout > 0"),
])
def test_bad_arguments_are_named_before_anything_compiles(args, message):
    proc = subprocess.run([sys.executable, "-m", "ovq.bench.resources", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
