"""Small helpers for the notebooks: strip outputs before commit, run a notebook with papermill.

What it does: ``strip(path)`` removes outputs and execution counts from a notebook in place (what
``make strip`` runs before a commit); ``run_notebook(path, out, **parameters)`` executes a notebook
headless with papermill using the current interpreter's kernel (what the notebook smoke tests do).

What it does not: no notebook logic; the notebooks call the library directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; return True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            cell["outputs"], cell["execution_count"] = [], None
            changed = True
        if "papermill" in cell.get("metadata", {}) or "execution" in cell.get("metadata", {}):
            cell["metadata"].pop("papermill", None)
            cell["metadata"].pop("execution", None)
            changed = True
    if "papermill" in nb.metadata:
        nb.metadata.pop("papermill")
        changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def run_notebook(path: str | Path, out: str | Path, *, cwd: str | Path | None = None, **parameters):
    """Execute ``path`` into ``out`` with papermill, injecting ``parameters`` (e.g. ``smoke=True``)."""
    import papermill as pm

    return pm.execute_notebook(
        str(path),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(cwd) if cwd else str(Path(path).resolve().parent.parent),
        progress_bar=False,
        log_output=False,
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "strip":
        print("usage: python -m mmsearch_r1.notebook_utils strip NOTEBOOK...", file=sys.stderr)
        return 2
    for p in argv[1:]:
        print(("stripped " if strip(p) else "clean    ") + p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
