"""A kernel with parts of its source taken out, loaded as a module of its own: how the ablation benchmarks
(``bench.scan_parts``, ``bench.gluon_bwd_parts``) find where a kernel's time goes.

An edit is ``(pattern, replacement)``: a literal (one that begins with indentation matches whole lines only), or a
compiled regular expression over one statement. Each must match the module's source exactly once, so a kernel change
that moves the edited lines is an error naming the edit, never a variant that silently times the full kernel. Triton
and Gluon read a kernel's source from its file, so every variant is written to a file of its own.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from types import ModuleType

Edit = tuple["str | re.Pattern", str]


def shown(pattern: str | re.Pattern) -> str:
    """An edit's pattern, short enough for an error or a results file."""
    return (pattern.pattern if isinstance(pattern, re.Pattern) else pattern).strip()[:60]


def edited_source(module: ModuleType, edits: list[Edit], label: str) -> str:
    """``module``'s source with ``edits`` applied in order; its package-relative imports made absolute so the copy
    loads from anywhere."""
    path = Path(module.__file__)
    src = path.read_text()
    for pattern, replacement in edits:
        if isinstance(pattern, str) and pattern[:1] == " ":  # indented: whole lines, never the tail of a deeper line
            pattern = re.compile("^" + re.escape(pattern), re.M)
        regex = isinstance(pattern, re.Pattern)
        hits = len(pattern.findall(src)) if regex else src.count(pattern)
        if hits != 1:
            raise ValueError(f"variant {label!r}: its edit {shown(pattern)!r} matches {hits} times in {path.name}")
        src = pattern.sub(lambda _: replacement, src) if regex else src.replace(pattern, replacement)
    return re.sub(r"\bfrom \.(?=\w)", f"from {module.__package__}.", src)


def load_edited(module: ModuleType, edits: list[Edit], label: str, folder: Path) -> ModuleType:
    """The edited copy of ``module``, written to ``folder`` and imported under a name of its own."""
    name = f"{module.__name__.rpartition('.')[2]}_{label}"
    path = Path(folder) / f"{name}.py"
    path.write_text(edited_source(module, edits, label))
    spec = importlib.util.spec_from_file_location(f"ovq_edited_{name}", path)
    edited = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edited)
    return edited


def chosen_variants(ap, text: str | None, known) -> list[str]:
    """``--variants``' comma-separated names (all of ``known`` when not given); unknown or none is an argparse error."""
    variants = list(known) if text is None else [x for x in text.split(",") if x]
    unknown = [x for x in variants if x not in known]
    if unknown or not variants:
        ap.error(f"--variants: unknown {unknown} (known: {', '.join(known)})")
    return variants


def check_edits(load, variants: list[str], label: str = "") -> None:
    """``--check-edits``: apply and load every variant (``load(variant, folder)``), saying so; no GPU needed."""
    with tempfile.TemporaryDirectory() as folder:
        for variant in variants:
            load(variant, Path(folder))
            print(f"{label}{variant}: edits apply, module loads")
