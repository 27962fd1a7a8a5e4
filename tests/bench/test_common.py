"""The benchmarks' shared helpers: ``--set NAME=VALUE`` parsing (settings of ``ovq.ops.triton_chunk``), the row log."""

import argparse
import os

import pytest

from ovq.bench.common import kernel_settings, row_log


def _parser():
    ap = argparse.ArgumentParser(prog="bench")
    ap.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # raise instead of exiting
    return ap


def test_settings_are_parsed_as_python_literals():
    assert kernel_settings(_parser(), ["FWD_CACHED_OPERANDS=True", "LOCAL_BLOCK=32"]) == {
        "FWD_CACHED_OPERANDS": True, "LOCAL_BLOCK": 32}


@pytest.mark.parametrize("item, message", [
    ("NOT_A_SETTING=1", "a setting of ovq.ops.triton_chunk"),
    ("use_triton=1", "a setting of ovq.ops.triton_chunk"),      # functions are not settings
    ("LOCAL_BLOCK", "a setting of ovq.ops.triton_chunk"),       # no value
    ("FWD_TWO_PASS=maybe", "must be a Python literal"),
])
def test_a_bad_setting_is_an_error_naming_it(item, message):
    with pytest.raises(ValueError, match=message):
        kernel_settings(_parser(), [item])


def test_the_environment_records_the_kernel_switches_set(monkeypatch):
    from ovq.bench.common import environment

    for name in [k for k in os.environ if k.startswith("OVQ_")]:
        monkeypatch.delenv(name)
    assert "ovq_env" not in environment()
    monkeypatch.setenv("OVQ_GLUON_BWD", "1")
    monkeypatch.setenv("OVQ_COMMIT", "abc1234")  # recorded as the commit, not as a switch
    info = environment()
    assert info["ovq_env"] == {"OVQ_GLUON_BWD": "1"} and info["commit"] == "abc1234"


def test_row_log_shows_and_hands_on_every_row_so_far(capsys):
    seen = []
    rows, add = row_log(lambda rows_so_far: seen.append(len(rows_so_far)))
    add({"T": 1})
    add({"T": 2})
    assert rows == [{"T": 1}, {"T": 2}] and seen == [1, 2]
    assert capsys.readouterr().out.splitlines() == ["{'T': 1}", "{'T': 2}"]
