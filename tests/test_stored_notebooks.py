"""The notebooks as stored in the repository read well where they are hosted: built from their
sources, executed (every code cell has run), and free of warnings and of the author's paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9]*.ipynb"))
LOCAL_PATH = re.compile(r"(/work/|/root/|/home/|/tmp/|/Users/|[A-Z]:\\\\)")


def test_every_tutorial_source_has_its_notebook():
    sources = {p.stem.removeprefix("src_") for p in TUTORIALS.glob("src_*.py")}
    assert sources == {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_matches_its_source_and_is_clean(path):
    import sys

    sys.path.insert(0, str(TUTORIALS))
    try:
        from _nb import parse
    finally:
        sys.path.pop(0)
    nb = json.loads(path.read_text())
    source = parse((TUTORIALS / f"src_{path.stem}.py").read_text())
    stored = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert stored == [(c.cell_type, c.source) for c in source.cells], "rebuild: tutorials/_nb.py"
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        assert cell["execution_count"] is not None, "a cell that never ran"
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + json.dumps(
                out.get("data", {}).get("text/plain", "")
            )
            assert out.get("output_type") != "error"
            assert out.get("name") != "stderr" or "Warning" not in text, text[:300]
            assert not LOCAL_PATH.search(text), text[:300]
