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
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    subprocess.run([sys.executable, "-m", "ovq.bench.resources", "--L", "512", "--stages", "1", "--kernels",
                    "ovq_fwd_kernel", "--ptxas-timeout", "0", "--json", str(out)],
                   check=True, env=env, capture_output=True, timeout=600)
    (row,) = json.loads(out.read_text())
    assert (row["kernel"], row["L"], row["num_stages"]) == ("ovq_fwd_kernel", 512, 1)
    constexprs = row["constexprs"]
    assert (constexprs["READ_PREC"], constexprs["ASSIGN_PREC"], constexprs["KB"]) == ("bf16", "bf16x3", 64)
    assert row["signature"]["q_ptr"] == "*fp32"
    assert 0 < row["shared"] <= 232_448 and row["fits"]
