"""Timing and provenance helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from ..io import atomic_write_json


def git_commit() -> str:
    """The commit of the working tree; $OVQ_COMMIT first, for copies of the tree whose .git is missing or lags it
    (a GPU machine's copy can carry the .git of the session's first commit: set OVQ_COMMIT=$(git rev-parse --short
    HEAD) here and pass it along)."""
    if os.environ.get("OVQ_COMMIT"):
        return os.environ["OVQ_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    """Where a figure was measured: machine, device, versions, commit and date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    switches = {k: v for k, v in os.environ.items() if k.startswith("OVQ_") and k != "OVQ_COMMIT"}
    if switches:  # kernel switches such as OVQ_GLUON_BWD or OVQ_DISABLE_TRITON change what was measured
        info["ovq_env"] = dict(sorted(switches.items()))
    return info


def time_cpu(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Median and spread of wall-clock seconds over ``repeats`` calls (CPU: no async work to wait for)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def save_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write a results file atomically (never half-written)."""
    return atomic_write_json(path, payload)


def save_unfinished(path: str | os.PathLike, payload: dict) -> Path:
    """Save what a benchmark has measured so far, marked unfinished (its final :func:`save_json` has no mark), so
    a run stopped at a time limit keeps it."""
    return save_json(path, payload | {"unfinished": True})


def saving_rows(path: str | os.PathLike, payload: dict, key: str):
    """A callback ``(rows) -> None`` for a benchmark to call after each measured row: it saves ``payload`` with
    the rows so far under ``key`` (:func:`save_unfinished`)."""
    return lambda rows: save_unfinished(path, payload | {key: list(rows)})


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """||x - y|| / ||y|| in float32 (fla's measure of a kernel against its reference), with ||y|| floored at 1e-6."""
    return ((x.float() - y.float()).norm() / y.float().norm().clamp_min(1e-6)).item()


def row_log(on_row=None):
    """``(rows, add)``: ``add(row)`` appends a measured row to ``rows``, prints it and calls ``on_row(rows)`` (e.g.
    :func:`saving_rows`), so a benchmark stopped at a time limit has shown and kept every row so far."""
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)
        if on_row is not None:
            on_row(rows)
    return rows, add


@contextlib.contextmanager
def kernel_settings_applied(values: dict):
    """:mod:`ovq.ops.triton_chunk`'s settings set to ``values`` (as :func:`kernel_settings` parses them) inside,
    restored after."""
    before = apply_kernel_settings(values)
    try:
        yield
    finally:
        apply_kernel_settings(before)


def apply_kernel_settings(values: dict) -> dict:
    """Set :mod:`ovq.ops.triton_chunk`'s settings to ``values`` for the rest of the process (a benchmark's main);
    returns the values they had."""
    from ..ops import triton_chunk as tc

    before = {name: getattr(tc, name) for name in values}
    for name, value in values.items():
        setattr(tc, name, value)
    return before


def kernel_settings(ap, items: list[str]) -> dict:
    """``--set NAME=VALUE`` items as settings of :mod:`ovq.ops.triton_chunk` (a forward variant, a block size);
    a bad name or value is an argparse error naming it."""
    import ast

    from ..ops import triton_chunk as tc

    settings = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value or not name.isupper() or not hasattr(tc, name):
            ap.error(f"--set must be NAME=VALUE with NAME a setting of ovq.ops.triton_chunk, got {item!r}")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            ap.error(f"--set {item!r}: the value must be a Python literal (e.g. True, 32)")
    return settings

