"""Committed notebooks carry no outputs and have a `parameters` cell with a `smoke` flag."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_parameterised(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: strip outputs (make strip)"
            assert cell.get("execution_count") is None, f"{path.name}: strip execution counts (make strip)"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    assert "smoke" in "".join(params[0]["source"]), f"{path.name}: the parameters cell needs `smoke`"
