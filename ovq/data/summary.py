"""Print a prepared folder's manifest as Markdown tables (the corpus summary in docs/data.md).

    python -m ovq.data.summary data/books
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import read_json
from .shards import load_meta


def summary_markdown(root: str | Path) -> str:
    root = Path(root)
    meta = load_meta(root)
    docs = read_json(root / meta["manifest"]["file"], "manifest")["documents"]
    tot, long_tokens = meta["totals"], meta["totals"]["long_doc_tokens"]
    lines = [f"{tot['documents']} documents, {tot['chars']:,} characters, {tot['tokens']:,} tokens "
             f"(vocabulary {meta['tokenizer']['vocab_size']:,}, {meta['dtype']}); prepared {meta['created']} "
             f"in {meta['seconds']} s.", "",
             f"| split | documents | characters | tokens | documents >= {long_tokens:,} tokens |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in meta["splits"].items():
        lines.append(f"| {name} | {s['documents']} | {s['chars']:,} | {s['tokens']:,} | {s['long_documents']} |")
    by_package: dict[str, list[dict]] = {}
    for d in docs:
        by_package.setdefault(d.get("package", meta["settings"]["source"]["source"]), []).append(d)
    lines += ["", "| source (version) | package license | text license | documents | characters | tokens |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for pkg, ds in by_package.items():
        d0 = ds[0]
        version = f" {d0['package_version']}" if "package_version" in d0 else ""
        lines.append(f"| {d0.get('package_manager', '')} `{pkg}`{version} | {d0.get('package_license', '')} | "
                     f"{d0.get('text_license', '')} | {len(ds)} | {sum(d['chars'] for d in ds):,} | "
                     f"{sum(d['tokens'] for d in ds):,} |")
    lines += ["", "| document | title | split | characters | tokens | sha256 (first 12) |",
              "| --- | --- | --- | ---: | ---: | --- |"]
    for d in sorted(docs, key=lambda d: (d["split"] != "heldout", -d["tokens"])):
        lines.append(f"| `{d['id']}` | {d['title']} | {d['split']} | {d['chars']:,} | {d['tokens']:,} | "
                     f"`{d['sha256'][:12]}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m ovq.data.summary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a prepared-data folder")
    text = summary_markdown(ap.parse_args(argv).root)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
