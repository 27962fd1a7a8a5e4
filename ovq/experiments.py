"""The paper's experiments from one command: synthetic tasks (issue 5) and language modeling (issue 6).

    python -m ovq.experiments recall --profile h200                       # every model, one GPU
    python -m ovq.experiments recall,positional_recall,linear_regression,lm --profile h200 \\
        --devices cuda:0,cuda:1,cuda:2,cuda:3 --slots 2                   # one queue over 4 GPUs, 2 jobs each
    python -m ovq.experiments recall --profile h200 --models swa-ovq-4096,swa-attn   # a subset
    python -m ovq.experiments recall --profile smoke                      # CPU, about a minute: the pipeline

A job is one (task, model): train at the profile's length (``runs/<task>/<model>``), evaluate (accuracy or
squared error across lengths for the synthetic tasks, loss by position on held-out books for ``lm``; the
budget model also at several dictionary sizes N, the deployment knob), and measure the model's cache at
two lengths to give its size at 64K tokens (caches are affine in length). Everything a job has finished is
skipped when it runs again, and SIGTERM stops training with a checkpoint, so the command resumes after a
crash, a deadline (``--deadline``) or a session's end. Last, per task: plots, ``table.md`` and
``summary.json`` in ``results/<task>/``, from whichever models have finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: label -> (preset, OVQLMConfig overrides): the paper's comparison on the synthetic tasks (slowest first,
#: so a shared queue starts them early).
MODELS: dict[str, tuple[str, dict]] = {
    "swa-ovq-4096": ("swa-ovq", {"max_centroids": 4096}),
    "swa-vq-4096": ("swa-vq", {"codebook_size": 4096}),
    "swa-ovq-1024": ("swa-ovq", {"max_centroids": 1024}),
    "swa-vq-1024": ("swa-vq", {"codebook_size": 1024}),
    "swa-attn": ("swa-attn", {}),
    "mamba2": ("mamba2", {}),
    "gdn": ("gdn", {}),
    "swa": ("swa", {}),
    # SWA/attention at half the depth: the findings' 2-layer model, which learns basic recall where the
    # 4-layer one did not in 3,000 steps (docs/experiments.md); a ceiling that trains.
    "swa-attn-2l": ("swa-attn", {"num_layers": 2}),
}
#: The models of the profiles published before swa-attn-2l existed.
BASE_MODELS = [m for m in MODELS if m != "swa-attn-2l"]
#: ... and on language modeling (issue 6).
LM_MODELS: dict[str, tuple[str, dict]] = {
    "swa-ovq-4096": ("swa-ovq", {"max_centroids": 4096}),
    "swa-attn": ("swa-attn", {}),
    "mamba2": ("mamba2", {}),
    "gdn": ("gdn", {}),
    "swa": ("swa", {}),
}

#: training task config and the evaluation overrides (sparse queries: every answer must come from the context)
TASK_ARGS = {
    "recall": ({"vocab_size": 8192, "num_pairs": 64}, {"num_queries": 64}),
    "positional_recall": ({"vocab_size": 8192, "num_pairs": 32, "num_occurrences": 2}, {"num_queries": 32}),
    "linear_regression": ({"dim": 20}, {}),
    "lm": ({}, {}),
}
TASKS = tuple(TASK_ARGS)


@dataclass
class Profile:
    size: str
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    eval_lengths: list[int]  # lm: the last is the loss-by-position length
    eval_batches: int
    eval_batch_size: int
    budget_model: str
    budgets: list[int]
    models: list[str]
    precision: str = "bf16"
    model_args: dict = field(default_factory=dict)
    task_args: dict = field(default_factory=dict)  # per-profile overrides of TASK_ARGS' training config
    eval_task_args: dict = field(default_factory=dict)
    state_length: int = 65536
    data: str | None = None  # lm: the prepared corpus (python -m ovq.data.prepare)
    block: int = 1024  # lm: loss-by-position block
    per_task: dict = field(default_factory=dict)  # task -> {field: value} for that task only
    # A first training stage: profile fields that differ from the main stage (e.g. shorter sequences, more
    # steps); the main stage then starts from its weights (`ovq train --init-from`). Empty: one stage.
    warm_start: dict = field(default_factory=dict)
    # Also evaluate models with OVQ/VQ layers at these chunk sizes L (a deployment knob like N):
    # results/<task>/<label>-chunk<L>.json. Shorthand for eval_variants {"chunk<L>": {"chunk_size": L}}.
    eval_chunk_sizes: list[int] = field(default_factory=list)
    # Also evaluate the models they apply to (variant_applies) with other model settings that keep the weights
    # (deployment knobs), name -> model args: results/<task>/<label>-<name>.json; e.g. {"linear16": {"growth": "linear",
    # "growth_rate": 1 / 16}}, a dictionary that grows evenly to N over 16·N tokens, or {"fill64k":
    # {"fill_length": 65536}}, linear growth that reaches each model's N at 64K (`ovq eval --fill-length`;
    # growth settings apply to OVQ layers only: VQ models have no row for them).
    eval_variants: dict = field(default_factory=dict)
    # Per model: evaluation settings that keep the weights. fla's Mamba2 without mamba_ssm runs a PyTorch
    # SSD whose inter-block step is quadratic in the number of blocks (513 GiB at 64K with 64-token blocks),
    # so it is evaluated with 256-token blocks, one sequence at a time (the same sequences in total).
    eval_overrides: dict = field(default_factory=lambda: {
        "mamba2": {"model_args": {"mamba2_chunk_size": 256}, "batch_size": 1}})
    # Per model: extra `ovq train` flags that do not change the recipe, e.g. {"mamba2": ["--compile"]}.
    train_flags: dict = field(default_factory=dict)
    # Also score every model with these task settings at ``sweep_lengths`` (results/<task>/<label>-sweep.json),
    # e.g. {"num_pairs": [16, 32, 64]}: the recall tasks' capacity axis, beside the length axis.
    eval_sweeps: dict = field(default_factory=dict)
    sweep_lengths: list[int] = field(default_factory=list)


PROFILES = {
    # Sized for one H200 per job: small models (d = 256, 4 layers) trained at 4K, evaluated to 64K. With the
    # old 0.02 init nothing learned recall in 1,000 steps; not rerun since (docs/experiments.md).
    "h200": Profile(size="small", seq_len=4096, batch_size=16, steps=1000, lr=1e-3, warmup=100,
                    eval_lengths=[4096, 8192, 16384, 32768, 65536], eval_batches=4, eval_batch_size=4,
                    budget_model="swa-ovq-4096", budgets=[256, 1024, 4096, 16384], models=BASE_MODELS),
    # Trained at 256 tokens (16x to 256x shorter than the evaluations), after the recipe of
    # shared/docs/findings.md; vocabulary 256. Recall needs a narrow window (16: with 64 nothing learned basic
    # recall); regression needs a small dimension (8: at 20 every SWA model stayed at predicting 0).
    # The published runs (2x H200, 2026-11-29, docs/experiments.md) used exactly these settings.
    "h200-t256": Profile(size="small", seq_len=256, batch_size=64, steps=3000, lr=2e-3, warmup=100,
                         eval_lengths=[256, 1024, 4096, 16384, 65536], eval_batches=4, eval_batch_size=4,
                         budget_model="swa-ovq-4096", budgets=[256, 1024, 4096, 16384], models=BASE_MODELS,
                         model_args={"window_size": 16},
                         per_task={"recall": {"task_args": {"vocab_size": 256, "num_pairs": 16},
                                              "eval_task_args": {"num_queries": 16}},
                                   "positional_recall": {"task_args": {"vocab_size": 256, "num_pairs": 8,
                                                                       "num_occurrences": 2},
                                                         "eval_task_args": {"num_queries": 16}},
                                   "linear_regression": {"task_args": {"dim": 8}, "steps": 5000,
                                                         "model_args": {"window_size": 64}}}),
    # Trained at 4,096 tokens: the h200-t256 recipe as a first stage, then 1,500 steps at 4K (from scratch at
    # 4K nothing learned recall: docs/experiments.md); OVQ/VQ also evaluated with 256-token chunks, and every
    # model with more key-value pairs than it was trained on (the capacity axis; 96 and 95 keys exist).
    "h200-t4096": Profile(size="small", seq_len=4096, batch_size=4, steps=1500, lr=5e-4, warmup=50,
                          eval_lengths=[4096, 8192, 16384, 32768, 65536], eval_batches=4, eval_batch_size=4,
                          budget_model="swa-ovq-4096", budgets=[256, 1024, 4096, 16384], models=list(MODELS),
                          model_args={"window_size": 16}, eval_chunk_sizes=[256],
                          # linear growth at r = N / 64K: every chunk to 64K opens N·L/64K centroids
                          # (the capacity probe keeps every item alone at 64K with it: docs/experiments.md;
                          # session 6 ran it as linear16, r = 1/16, which fills N = 1,024 by 16K)
                          eval_variants={"fill64k": {"fill_length": 65536}},
                          warm_start={"seq_len": 256, "batch_size": 64, "steps": 3000, "lr": 2e-3, "warmup": 100},
                          per_task={"recall": {"task_args": {"vocab_size": 256, "num_pairs": 16},
                                               "eval_task_args": {"num_queries": 16},
                                               "eval_sweeps": {"num_pairs": [16, 32, 64, 96]},
                                               "sweep_lengths": [4096, 16384]},
                                    "positional_recall": {"task_args": {"vocab_size": 256, "num_pairs": 8,
                                                                        "num_occurrences": 2},
                                                          "eval_task_args": {"num_queries": 16},
                                                          "eval_sweeps": {"num_pairs": [8, 16, 32, 64]},
                                                          "sweep_lengths": [4096, 16384]},
                                    # regression at the task's d = 20 (Garg et al.): the first stage with the
                                    # curriculum on d (d = 20 from step 4,000), which both SWA/attention and
                                    # OVQ needed to learn it (results/linear_regression-d20-curriculum)
                                    "linear_regression": {"task_args": {"dim": 20}, "model_args": {"window_size": 64},
                                                          "warm_start": {"seq_len": 256, "batch_size": 64,
                                                                         "steps": 6000, "lr": 2e-3, "warmup": 100,
                                                                         "task_args": {
                                                                             "dim": 20, "curriculum_start_dim": 4,
                                                                             "curriculum_batches_per_dim": 250}}}}),
    # A CPU check of the whole pipeline at toy size (no fla mixers: their kernels need a GPU).
    "smoke": Profile(size="tiny", seq_len=64, batch_size=16, steps=40, lr=3e-3, warmup=5, eval_lengths=[64, 128],
                     eval_batches=1, eval_batch_size=4, budget_model="swa-ovq-1024", budgets=[8, 32],
                     models=["swa-ovq-1024", "swa-attn", "swa-vq-1024", "swa"], precision="fp32",
                     model_args={"window_size": 8, "chunk_size": 8},
                     task_args={"vocab_size": 64, "num_pairs": 4, "num_filler_tokens": 8, "dim": 4},
                     eval_task_args={"num_queries": 4}, state_length=4096,
                     per_task={"recall": {"eval_sweeps": {"num_pairs": [4, 8]}, "sweep_lengths": [64, 128]}}),
}
LM_PROFILES = {
    # ~60M parameters trained at 4K on the offline books (5M training tokens: ~2.6 epochs), loss to 64K.
    "h200": Profile(size="60m", seq_len=4096, batch_size=8, steps=400, lr=1e-3, warmup=40, eval_lengths=[65536],
                    eval_batches=0, eval_batch_size=1, budget_model="swa-ovq-4096", budgets=[1024, 4096, 16384],
                    models=list(LM_MODELS), data="data/books",
                    eval_variants={"fill64k": {"fill_length": 65536}},
                    # d = 512 doubles the PyTorch SSD's heads: with 256-token blocks its (c, l, s, h, n) and
                    # (c, l, s, h, p) products hold 128 GiB at 64K (out of memory on an H200, session 17);
                    # 128-token blocks peak near 100 GiB (32 GiB of those, 64 GiB in the block recurrence)
                    eval_overrides={"mamba2": {"model_args": {"mamba2_chunk_size": 128}, "batch_size": 1}}),
    "smoke": Profile(size="tiny", seq_len=64, batch_size=4, steps=12, lr=3e-3, warmup=2, eval_lengths=[200],
                     eval_batches=1, eval_batch_size=1, budget_model="swa-ovq-4096", budgets=[8, 32],
                     models=["swa-ovq-4096", "swa-attn", "swa"], precision="fp32",
                     model_args={"window_size": 16, "chunk_size": 16}, state_length=4096, data="data/sample", block=64,
                     eval_variants={"linear": {"growth": "linear", "growth_rate": 0.25}}),
}


def profile_of(task: str, name: str, overrides: dict | None = None) -> Profile:
    """The named profile for ``task`` (its ``per_task`` entries applied), with ``overrides`` (field -> value,
    or task.field -> value) replacing fields."""
    profiles = LM_PROFILES if task == "lm" else PROFILES
    if name not in profiles:
        raise ValueError(f"profile must be one of {tuple(profiles)}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(Profile)}
    mine = {}
    for key, value in (overrides or {}).items():
        scope, _, field_name = key.rpartition(".")  # "recall.seq_len" applies to recall only
        if scope and scope not in TASKS:
            raise ValueError(f"unknown task {scope!r} in override {key!r}; tasks: {TASKS}")
        if field_name not in fields:
            raise ValueError(f"unknown profile field {field_name!r} in override {key!r}; fields: {sorted(fields)}")
        if scope in ("", task):
            mine[field_name] = value
    profile = profiles[name]
    profile = dataclasses.replace(profile, **(profile.per_task.get(task, {}) | mine))
    bad = sorted(set(profile.warm_start) - fields) or sorted({"warm_start", "per_task"} & set(profile.warm_start))
    if bad:
        raise ValueError(f"warm_start may set profile fields other than warm_start/per_task, got {bad}")
    for label, flags in profile.train_flags.items():
        if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise ValueError(f"train_flags[{label!r}] must be a list of ovq train arguments, got {flags!r}")
    if not all(isinstance(c, int) and c >= 1 for c in profile.eval_chunk_sizes):
        raise ValueError(f"eval_chunk_sizes must be chunk sizes >= 1, got {profile.eval_chunk_sizes!r}")
    for name, args in profile.eval_variants.items():
        if not (isinstance(name, str) and re.fullmatch(r"[a-z0-9_]+", name) and name not in RESULT_KINDS
                and isinstance(args, dict) and args):
            raise ValueError(f"eval_variants: {name!r}: {args!r} must be a lowercase name (letters, digits, _; not "
                             f"one of {RESULT_KINDS}) for a non-empty dict of model args (or fill_length)")
        fill = args.get("fill_length", 1)
        if isinstance(fill, bool) or not isinstance(fill, int) or fill < 1:
            raise ValueError(f"eval_variants: {name!r}: fill_length must be a number of tokens >= 1, got {fill!r}")
    if bool(profile.eval_sweeps) != bool(profile.sweep_lengths) or not all(
            isinstance(v, list) and v for v in profile.eval_sweeps.values()):
        raise ValueError(f"eval_sweeps ({profile.eval_sweeps!r}) needs sweep_lengths ({profile.sweep_lengths!r}) "
                         "and a non-empty list of values per task setting")
    sequences = profile.eval_batches * profile.eval_batch_size
    for label, special in profile.eval_overrides.items():
        if set(special) - {"model_args", "batch_size"} or sequences % special.get("batch_size", 1):
            raise ValueError(f"eval_overrides[{label!r}] = {special}: it may set model_args and a batch_size that "
                             f"divides the {sequences} evaluation sequences")
    return profile


def models_of(task: str) -> dict[str, tuple[str, dict]]:
    return LM_MODELS if task == "lm" else MODELS


def _args(d: dict, flag: str) -> list[str]:
    return [x for k, v in d.items() for x in (flag, f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")]


def _task_config(task: str, profile: Profile) -> tuple[dict, dict]:
    train, evaluation = TASK_ARGS[task]
    if task == "lm":
        return {}, {}
    from .tasks.registry import TASKS as TASK_CLASSES
    fields = {f.name for f in dataclasses.fields(TASK_CLASSES[task].config_class)}
    train = {k: v for k, v in (train | profile.task_args).items() if k in fields}
    evaluation = {k: v for k, v in (evaluation | profile.eval_task_args).items() if k in fields}
    return train, evaluation


def _finished(run: Path, steps: int) -> bool:
    from .train import load_checkpoint
    try:
        return load_checkpoint(run)["step"] >= steps
    except (FileNotFoundError, ValueError):
        return False


@torch.no_grad()
def cache_bytes_at(run: Path, length: int, device) -> dict:
    """The model's cache at ``length`` tokens, from its measured size after two short prefills (affine)."""
    from .train.evaluate import load_run
    from .train.jobs import backbone_of
    model, _ = load_run(run, device)
    backbone = backbone_of(model)
    config = backbone.config
    sizes = []
    for n in (256, 512):
        if hasattr(backbone, "model"):  # OVQForCausalLM
            out = backbone(input_ids=torch.randint(0, config.vocab_size, (1, n), device=device), use_cache=True)
        else:  # OVQModel behind a regression read-in
            out = backbone(inputs_embeds=torch.randn(1, n, config.hidden_size, device=device), use_cache=True)
        sizes.append(out.past_key_values.nbytes())
    slope = (sizes[1] - sizes[0]) / 256
    return {"length": length, "cache_bytes": int(sizes[0] + slope * (length - 256)), "bytes_per_token": slope,
            "measured": {"256": sizes[0], "512": sizes[1]}}


GROWTH_SETTINGS = {"fill_length", "growth", "growth_rate"}  # eval-variant settings of OVQ's growth: VQ has none


def variant_applies(task: str, label: str, settings: dict) -> bool:
    """Whether an eval variant's settings change the model: growth settings need OVQ layers, the others
    (a chunk size) OVQ or VQ layers."""
    from .models.presets import PRESET_PATTERNS
    layers = set(PRESET_PATTERNS[models_of(task)[label][0]])
    return bool(({"ovq"} if GROWTH_SETTINGS & set(settings) else {"ovq", "vq"}) & layers)


RESULT_KINDS = ("lengths", "state", "budgets", "sweep")  # a job's result files besides its eval variants


def eval_variants(profile: Profile) -> dict[str, dict]:
    """Evaluation-time model settings for the models they apply to (:func:`variant_applies`): name -> model args."""
    return {f"chunk{c}": {"chunk_size": c} for c in profile.eval_chunk_sizes} | profile.eval_variants


def result_files(out_dir: Path, label: str, profile: Profile, task: str) -> dict[str, Path]:
    """A job's result files: scores across lengths, the budget sweep (budget model only), the cache size,
    scores with each eval variant that applies to the model and the task-setting sweep, when the profile asks."""
    files = {"lengths": out_dir / f"{label}.json", "state": out_dir / f"{label}-state.json"}
    if label == profile.budget_model:
        files["budgets"] = out_dir / f"{label}-budgets.json"
    for name, settings in eval_variants(profile).items():
        if variant_applies(task, label, settings):
            files[name] = out_dir / f"{label}-{name}.json"
    if task != "lm" and profile.eval_sweeps:
        files["sweep"] = out_dir / f"{label}-sweep.json"
    return files


def _train(task: str, label: str, profile: Profile, run_dir: Path, device: str, data: str | None,
           init_from: Path | None = None) -> None:
    """One training stage of a job (``ovq train``); raises :class:`JobInterrupted` if it stops early."""
    from .cli.main import main as cli
    train_args, _ = _task_config(task, profile)
    preset, model_overrides = models_of(task)[label]
    model_args, flags = profile.model_args | model_overrides, profile.train_flags.get(label, [])
    if _finished(run_dir, profile.steps):
        return
    cli(["train", "--task", task, "--model", preset, "--size", profile.size, "--seq-len", str(profile.seq_len),
         "--batch-size", str(profile.batch_size), "--steps", str(profile.steps), "--lr", str(profile.lr),
         "--warmup", str(profile.warmup), "--precision", profile.precision, "--log-every", "25",
         "--ckpt-every", "100", "--device", device, "--no-progress", "--out", str(run_dir),
         *(["--data", data] if task == "lm" else []), *(["--init-from", str(init_from)] if init_from else []),
         *_args(train_args, "--task-arg"), *_args(model_args, "--model-arg"), *flags])
    if not _finished(run_dir, profile.steps):
        raise JobInterrupted(f"{run_dir}: training stopped early; rerun to continue")


class JobInterrupted(RuntimeError):
    """Training stopped before its last step (SIGTERM); its checkpoint is kept and a rerun continues."""


def run_job(task: str, label: str, profile_name: str, runs_root: str = "runs", results_root: str = "results",
            device: str | None = None, data: str | None = None, overrides: dict | None = None) -> dict:
    """Train, evaluate and size one model on one task; every finished part is skipped. Returns its files."""
    from .cli.main import main as cli
    from .io import atomic_write_json

    profile = profile_of(task, profile_name, overrides)
    data = data or profile.data
    device = device or _default_device()
    _, eval_args = _task_config(task, profile)
    run_dir, out_dir = Path(runs_root) / task / label, Path(results_root) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    first_stage = None
    if profile.warm_start and not _finished(run_dir, profile.steps):
        first_stage = Path(runs_root) / task / f"{label}-stage1"
        # the first stage's own fields, model_args included (e.g. another chunk size)
        _train(task, label, dataclasses.replace(profile, **profile.warm_start), first_stage, device, data)
    _train(task, label, profile, run_dir, device, data, init_from=first_stage)
    files = result_files(out_dir, label, profile, task)
    state = files.pop("state")
    special = profile.eval_overrides.get(label, {})
    batch_size = special.get("batch_size", profile.eval_batch_size)
    batches = profile.eval_batches * profile.eval_batch_size // batch_size  # as many sequences as the others
    for kind, path in files.items():
        if path.exists():
            continue
        extra = ["--max-centroids", ",".join(map(str, profile.budgets))] if kind == "budgets" else []
        variant = dict(eval_variants(profile).get(kind, {}))
        if "fill_length" in variant:  # not a model arg: the growth rate that fills each N by that length
            extra += ["--fill-length", str(variant.pop("fill_length"))]
        extra += _args(special.get("model_args", {}) | variant, "--model-arg")
        if task == "lm":  # one forward per document: the training path, for every mixer
            length = str(profile.eval_lengths[-1])
            cli(["eval", str(run_dir), "--loss-by-position", "--max-len", length, "--prefill", length,
                 "--block", str(profile.block), "--data", data, "--device", device, "--out", str(path),
                 *extra])
        else:
            lengths = profile.eval_lengths
            if kind == "sweep":
                lengths = profile.sweep_lengths
                extra += [f for name, values in profile.eval_sweeps.items()
                          for f in ("--task-sweep", f"{name}={','.join(map(str, values))}")]
            cli(["eval", str(run_dir), "--lengths", ",".join(map(str, lengths)),
                 "--batches", str(batches), "--batch-size", str(batch_size),
                 "--device", device, "--out", str(path), *_args(eval_args, "--task-arg"), *extra])
    if not state.exists():
        atomic_write_json(state, cache_bytes_at(run_dir, profile.state_length, device))
    return {"run": str(run_dir), **{k: str(v) for k, v in files.items()}, "state": str(state)}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _job_argv(task, label, profile_name, runs_root, results_root, device, data, overrides) -> list[str]:
    return [sys.executable, "-m", "ovq.experiments", task, "--profile", profile_name, "--models", label,
            "--runs", runs_root, "--results", results_root, "--device", device, "--no-report",
            *(["--data", data] if data else []), *_args(overrides or {}, "--set")]


def _job_device(device: str) -> tuple[dict, str]:
    """(environment additions, --device) for a job on ``device``: ``cuda:i`` becomes GPU i made the only
    visible one, addressed as cuda:0 (Triton launches on the current device, and the trainer wants an index)."""
    if device.startswith("cuda:"):
        return {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1]}, "cuda:0"
    return {}, device


def run_parallel(jobs: list[tuple[str, str]], profile_name: str, devices: list[str], slots: int = 1,
                 runs_root: str = "runs", results_root: str = "results", deadline: float | None = None,
                 data: str | None = None, overrides: dict | None = None) -> dict:
    """Run jobs as subprocesses from one queue, ``slots`` at a time per device; returns {job: exit code}.

    Each job's output goes to ``runs/<task>/<label>.log``. At ``deadline`` seconds (or on SIGTERM/SIGINT to
    this process) no new job starts and running ones get SIGTERM: training saves a checkpoint and stops. A job
    that ran out of GPU memory (a neighbour's 64K evaluation can crowd it out) goes once more to the end of the
    queue; it resumes from what it finished.
    """
    queue, lock, procs, codes, retried = list(jobs), threading.Lock(), {}, {}, set()
    stop = threading.Event()
    start = time.monotonic()

    def worker(device: str) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            task, label = job
            log_path = Path(runs_root) / task / f"{label}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            visible, dev = _job_device(device)
            env = os.environ | visible
            with open(log_path, "a") as log:
                argv = _job_argv(task, label, profile_name, runs_root, results_root, dev, data, overrides)
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                with lock:
                    procs[job] = proc
                codes[job] = proc.wait()
            again = codes[job] != 0 and not stop.is_set() and job not in retried and _ran_out_of_memory(log_path)
            if again:
                with lock:
                    retried.add(job)
                    queue.append(job)
            print(f"[{time.monotonic() - start:6.0f}s] {task}/{label} on {device}: "
                  f"{'done' if codes[job] == 0 else f'exit {codes[job]} (see {log_path})'}"
                  f"{'; out of GPU memory: queued once more' if again else ''}", flush=True)

    def request_stop(*_):
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices for _ in range(slots)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if deadline is not None and time.monotonic() - start > deadline:
                stop.set()
            if stop.is_set():
                with lock:
                    running = [p for p in procs.values() if p.poll() is None]
                for p in running:
                    p.send_signal(signal.SIGTERM)
                for p in running:
                    try:
                        p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
            for t in threads:
                t.join(timeout=1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for job in queue:
        codes.setdefault(job, None)  # never started
    return codes


def _ran_out_of_memory(log_path: Path) -> bool:
    """Whether a job's log ends with a GPU out-of-memory error (PyTorch's or a Triton launch's)."""
    with open(log_path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        tail = f.read().decode(errors="replace")
    return "out of memory" in tail.lower()


def report(task: str, profile_name: str, labels: list[str], results_root: str = "results",
           overrides: dict | None = None) -> dict:
    """Plots, ``table.md`` and ``summary.json`` for one task from the models whose results exist. A model with its
    scores across lengths and its cache size is reported; an evaluation it lacks (a variant, budget or sweep the
    profile gained after it ran) is left out of that table and named under ``incomplete``."""
    from .cli.main import main as cli
    from .io import atomic_write_json

    profile = profile_of(task, profile_name, overrides)
    out_dir = Path(results_root) / task
    summary = {"task": task, "profile": dataclasses.asdict(profile), "models": {}, "missing": [], "incomplete": {}}
    for label in labels:
        files = result_files(out_dir, label, profile, task)
        if not (files["lengths"].exists() and files["state"].exists()):
            summary["missing"].append(label)
            continue
        if absent := [name for name, path in files.items() if not path.exists()]:
            summary["incomplete"][label] = absent
        summary["models"][label] = {k: str(v) for k, v in files.items() if v.exists()}
        summary["models"][label]["state_at"] = json.loads(files["state"].read_text())
        # where and when it was measured (results written before this field existed have none)
        summary["models"][label]["environment"] = json.loads(files["lengths"].read_text()).get("environment")
    if not summary["models"]:
        print(f"{task}: no finished model to report", flush=True)
        return summary
    variants = [m[name] for m in summary["models"].values() for name in eval_variants(profile) if name in m]
    cli(["plot", *[m["lengths"] for m in summary["models"].values()], *variants,
         "--out", str(out_dir / ("loss_by_position.png" if task == "lm" else "accuracy_vs_length.png"))])
    if "budgets" in summary["models"].get(profile.budget_model, {}):
        cli(["plot", summary["models"][profile.budget_model]["budgets"], "--out", str(out_dir / "budget_sweep.png")])
    text = lm_table(summary) if task == "lm" else table(summary)
    for name, args in eval_variants(profile).items():
        if any(name in info for info in summary["models"].values()):
            settings = ", ".join(f"{k} = {v}" for k, v in args.items())
            text += (f"\nEvaluated with {settings} (`{name}`; the models it applies to, trained with their own):"
                     "\n\n" + (lm_table(summary, name) if task == "lm" else table(summary, name)))
    if any("sweep" in info for info in summary["models"].values()):
        sweep = next(iter(profile.eval_sweeps))
        cli(["plot", *[m["sweep"] for m in summary["models"].values() if "sweep" in m], "--x", sweep,
             "--out", str(out_dir / f"accuracy_vs_{sweep}.png")])
        text += f"\nThe same models with other task settings ({profile.eval_sweeps}):\n\n" + sweep_table(summary)
    if summary["missing"]:
        text += f"\nNot finished: {', '.join(summary['missing'])}.\n"
    if summary["incomplete"]:
        text += "\nNot evaluated: " + "; ".join(f"{label} ({', '.join(names)})"
                                                 for label, names in summary["incomplete"].items()) + ".\n"
    (out_dir / "table.md").write_text(text)
    atomic_write_json(out_dir / "summary.json", summary)
    print(text, flush=True)
    return summary


def _cache_mib(info: dict) -> str:
    return f"{info['state_at']['cache_bytes'] / 2**20:,.1f}"


def _metric(rows: list[dict]) -> tuple[str, str]:
    """(score name, number format) of task results: accuracy, or squared error (spanning orders of magnitude)."""
    from .train.evaluate import score_name
    name = score_name(rows)
    return name, ".3f" if name == "accuracy" else ".3g"


def table(summary: dict, kind: str = "lengths") -> str:
    """Markdown: score per model and length, and each model's cache at the profile's state length; ``kind``
    picks the result file (``"chunk256"``: the evaluation at another chunk size, for the models that have it)."""
    models = {label: info for label, info in summary["models"].items() if kind in info}
    first = json.loads(Path(next(iter(models.values()))["lengths"]).read_text())["results"]
    metric, fmt = _metric(first)
    lengths = [r["length"] for r in first]
    state_len = summary["profile"]["state_length"]
    lines = ["| model | " + " | ".join(f"{metric} @ {n:,}" for n in lengths) + f" | cache MiB @ {state_len:,} |",
             "| --- |" + " --- |" * (len(lengths) + 1)]
    for label, info in models.items():
        rows = {r["length"]: r[metric] for r in json.loads(Path(info[kind]).read_text())["results"]}
        lines.append(f"| {label} | " + " | ".join(f"{rows[n]:{fmt}}" for n in lengths) + f" | {_cache_mib(info)} |")
    return "\n".join(lines) + "\n"


def sweep_table(summary: dict) -> str:
    """Markdown: score per model at each (length, swept task settings) of the ``-sweep.json`` results."""
    models = {label: info for label, info in summary["models"].items() if "sweep" in info}
    first = json.loads(Path(next(iter(models.values()))["sweep"]).read_text())["results"]
    metric, fmt = _metric(first)
    swept = list(summary["profile"]["eval_sweeps"])

    def column(row):
        return (row["length"], *(row["task_args"][k] for k in swept))

    columns = list(dict.fromkeys(column(r) for r in first))
    heads = [" ".join([f"{k}={v}" for k, v in zip(swept, col[1:])] + [f"@ {col[0]:,}"]) for col in columns]
    lines = ["| model | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(columns)]
    for label, info in models.items():
        scores = {column(r): r[metric] for r in json.loads(Path(info["sweep"]).read_text())["results"]}
        lines.append(f"| {label} | " + " | ".join(f"{scores[c]:{fmt}}" if c in scores else "—" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _span_means(row: dict, edges: list[int]) -> list[float]:
    """Token-weighted mean loss over position spans [edges[i], edges[i+1])."""
    block, out = row["block"], []
    for lo, hi in zip(edges, edges[1:]):
        sel = [(l, n) for i, (l, n) in enumerate(zip(row["loss"], row["tokens"])) if lo <= i * block < hi and n > 0]
        out.append(sum(l * n for l, n in sel) / sum(n for _, n in sel) if sel else float("nan"))
    return out


def lm_table(summary: dict, kind: str = "lengths") -> str:
    """Markdown: held-out loss per position span (training length marked), relative to swa-attn (its plain
    evaluation), and cache; ``kind`` picks the result file (an eval variant, for the models that have it)."""
    profile = summary["profile"]
    train, end = profile["seq_len"], profile["eval_lengths"][-1]
    edges = sorted({0, train, *[e for e in (4 * train, 8 * train) if train < e < end], end})
    names = [f"[{lo // 1024}K, {hi // 1024}K)" if lo >= 1024 else f"[{lo}, {hi})" for lo, hi in zip(edges, edges[1:])]
    models = {label: info for label, info in summary["models"].items() if kind in info}
    means = {label: _span_means(json.loads(Path(info[kind]).read_text())["results"][0], edges)
             for label, info in models.items()}
    attn = summary["models"].get("swa-attn")
    ref = None if attn is None else _span_means(json.loads(Path(attn["lengths"]).read_text())["results"][0], edges)
    lines = ["| model | " + " | ".join(f"loss {n}" for n in names) + " | vs swa-attn beyond training | "
             f"cache MiB @ {profile['state_length']:,} |", "| --- |" + " --- |" * (len(names) + 2)]
    for label, info in models.items():
        rel = "" if ref is None else f"{100 * (sum(means[label][1:]) / sum(ref[1:]) - 1):+.2f}%"
        cells = " | ".join(f"{x:.4f}" for x in means[label])
        lines.append(f"| {label} | {cells} | {rel} | {_cache_mib(info)} |")
    return "\n".join(lines) + "\n"


def run(tasks: str | list[str], profile_name: str = "h200", models: list[str] | None = None,
        runs_root: str = "runs", results_root: str = "results", device: str | None = None,
        devices: list[str] | None = None, slots: int = 1, deadline: float | None = None, skip=(),
        report_only: bool = False, jobs_only: bool = False, data: str | None = None,
        overrides: dict | None = None) -> dict:
    """Run every (task, model) job, in this process or over ``devices``; then report each task.
    ``overrides`` replace profile fields (``--set seq_len=1024``)."""
    tasks = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    labels = {}
    for task in tasks:
        profile = profile_of(task, profile_name, overrides)
        chosen = [m for m in (models or profile.models) if m not in skip]
        unknown = [m for m in chosen if m not in models_of(task)]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} for {task}; known: {tuple(models_of(task))}")
        labels[task] = chosen
    # round robin over tasks, each task's slowest models first
    jobs = [(t, labels[t][i]) for i in range(max(map(len, labels.values()))) for t in tasks if i < len(labels[t])]
    failed = []
    if not report_only:
        # A deadline needs jobs in subprocesses (SIGTERM checkpoints training and stops an evaluation), also
        # on one device: in this process an evaluation at 64K would run on past it.
        if deadline is not None or (devices and (len(devices) > 1 or slots > 1)):
            queue_devices = devices or [device or _default_device()]
            codes = run_parallel(jobs, profile_name, queue_devices, slots, runs_root, results_root, deadline, data,
                                 overrides)
            failed = [job for job, code in codes.items() if code != 0]
        else:
            for task, label in jobs:
                run_job(task, label, profile_name, runs_root, results_root, device or (devices or [None])[0], data,
                        overrides)
    summaries = {} if jobs_only else {t: report(t, profile_name, labels[t], results_root, overrides) for t in tasks}
    if failed:
        print(f"unfinished jobs: {', '.join(f'{t}/{m}' for t, m in failed)} (rerun the same command to continue)")
    return summaries


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ovq.experiments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tasks", help=f"comma-separated, from {', '.join(TASKS)}")
    ap.add_argument("--profile", default="h200", choices=tuple(PROFILES))
    ap.add_argument("--models", help=f"comma-separated subset; tasks: {', '.join(MODELS)}; lm: {', '.join(LM_MODELS)}")
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE",
                    help="override a profile field for every task (steps=500) or for one "
                         "(\"recall.task_args={'num_pairs': 16}\")")
    ap.add_argument("--skip", default="", help="comma-separated models to leave out")
    ap.add_argument("--data", help="lm: prepared corpus (default: the profile's, data/books on h200)")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--results", default="results")
    ap.add_argument("--device", help="one device for every job (default: cuda if available)")
    ap.add_argument("--devices", help="comma-separated devices for a parallel queue, e.g. cuda:0,cuda:1")
    ap.add_argument("--slots", type=int, default=1, help="jobs at once per device (parallel queue)")
    ap.add_argument("--deadline", type=float, help="seconds: then stop (checkpointed) and report what finished")
    ap.add_argument("--no-report", dest="jobs_only", action="store_true", help="run the jobs only")
    ap.add_argument("--report-only", action="store_true", help="only rebuild plots and tables from results")
    args = ap.parse_args(argv)
    if args.slots < 1:
        ap.error("--slots must be >= 1")
    from .cli.main import _kv
    overrides = _kv(args.set, "--set")
    try:
        return run(args.tasks, args.profile, args.models.split(",") if args.models else None, args.runs,
                   args.results, args.device, args.devices.split(",") if args.devices else None, args.slots,
                   args.deadline, [m for m in args.skip.split(",") if m], args.report_only, args.jobs_only, args.data,
                   overrides)
    except JobInterrupted as err:
        print(err, file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
