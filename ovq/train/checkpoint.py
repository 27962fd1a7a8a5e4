"""Checkpoints written atomically: a crash mid-save leaves the previous checkpoint loadable.

The file is written to a temporary name in the same folder, flushed and fsynced, then renamed over the
old one (``os.replace`` is atomic on POSIX), and the folder is fsynced so the rename itself survives.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..io import fsync_dir

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or from another format."""


def save_checkpoint(payload: dict, out_dir: str | os.PathLike, name: str = CHECKPOINT_NAME) -> Path:
    """Write ``payload`` (any torch-serializable dict) to ``out_dir/name`` atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(out_dir)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a folder means ``folder/checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): {e}") from e
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not an ovq checkpoint of format {FORMAT_VERSION}")
    return payload


def load_model_weights(model, path) -> dict:
    """Initialize ``model`` from the weights of the checkpoint at ``path`` (a run folder or file), leaving
    the optimizer, schedule and data to start fresh: the second stage of a curriculum (e.g. train at 256
    tokens, then continue at 4,096). Returns the source run's job config (``{}`` if it has none)."""
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches: another architecture
        raise CheckpointError(f"checkpoint {path} holds another model than this run builds "
                              f"(same --model, --size, --model-arg and task vocabulary needed): "
                              f"{weight_mismatch(model, state['model'])}") from e
    return state.get("extra", {}).get("job", {})


def weight_mismatch(model, weights: dict, show: int = 3) -> str:
    """A short account of how ``weights`` fail to fit ``model``: counts and the first few names."""
    own = model.state_dict()
    parts = []
    for what, names in (("missing", [k for k in own if k not in weights]),
                        ("unexpected", [k for k in weights if k not in own]),
                        ("of another shape", [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
                                              for k in own if k in weights and weights[k].shape != own[k].shape])):
        if names:
            parts.append(f"{len(names)} {what} ({', '.join(names[:show])}{', ...' if len(names) > show else ''})")
    return "; ".join(parts) or "the weights do not load"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
