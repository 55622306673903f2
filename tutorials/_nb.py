"""Writes the tutorial notebooks from their cell sources (``tutorials/src_*.py``) and runs
them with their outputs stored, so they read well where the code is hosted.

    python tutorials/_nb.py            # rebuild and execute every notebook (full mode)
    python tutorials/_nb.py 02_vae     # one notebook

A source file is Python with cells separated by lines ``# %%`` (code) or ``# %% [markdown]``
(markdown, each line starting with ``# ``), the "percent" format that editors understand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def parse(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    for kind, lines in cells:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(
                ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in text.splitlines()
            )
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(text))
    return nb


def build(name: str, execute: bool = True) -> Path:
    src = HERE / f"src_{name}.py"
    nb = parse(src.read_text())
    # `import pyro.infer` imports tqdm.auto, which warns in a kernel without ipywidgets (with
    # the author's file path); that is the build machine's state, not the tutorial's output
    os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
    if execute:
        NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        ).execute()
    out = HERE / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem[4:] for p in HERE.glob("src_*.py"))
    for name in names:
        print("wrote", build(name))
