"""The README's Hugging Face quick start runs as written: build a preset, train a step, save, load, generate."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart_code() -> str:
    text = README.read_text()
    match = re.search(r"<!-- readme-quickstart -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its quick-start block"
    return match.group(1)


def test_readme_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block saves to ./ovq-tiny
    namespace: dict = {}
    exec(compile(_quickstart_code(), str(README), "exec"), namespace)
    assert (tmp_path / "ovq-tiny" / "model.safetensors").is_file()
    model, out = namespace["model"], namespace["out"]
    assert type(model).__name__ == "OVQForCausalLM" and model.config.max_centroids == 256
    assert out.shape == (2, 50) and torch.equal(out[:, :20], namespace["prompt"])


def test_readme_use_block_runs_as_written():
    """The README's "Use" block (the op, a decode step, a layer with its inference knobs, state sizes)."""
    match = re.search(r"## Use\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its Use block"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    layer = namespace["layer"]
    assert (layer.max_centroids, layer.growth, layer.growth_rate) == (4096, "linear", 4096 / 65536)
    assert namespace["o"].shape == (1, 1000, 4, 64) and namespace["o1"].shape == (1, 1, 4, 64)
