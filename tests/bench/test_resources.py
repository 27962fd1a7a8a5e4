"""``python -m ovq.bench.resources`` on CPU: a kernel compiled for the H200 (sm_90a) without a GPU, and its
shared memory read back. It also holds the in-chunk backward to having no L x L tile: at L = 512 it asked
655,360 bytes before (the H200 allows 232,448)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_in_chunk_backward_at_chunk_512_fits_the_h200(tmp_path):
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    subprocess.run([sys.executable, "-m", "ovq.bench.resources", "--L", "512", "--stages", "1", "--kernels",
                    "ovq_bwd_local_kernel", "--ptxas-timeout", "0", "--json", str(out)],
                   check=True, env=env, capture_output=True, timeout=600)
    (row,) = json.loads(out.read_text())
    assert (row["kernel"], row["L"], row["num_stages"]) == ("ovq_bwd_local_kernel", 512, 1)
    assert row["constexprs"]["READ_PREC"] == "bf16" and row["signature"]["q_ptr"] == "*fp32"
    assert 0 < row["shared"] <= 232_448 and row["fits"]
