"""The notebooks in ``notebooks/`` run top to bottom without error, and are stored without outputs.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, with the notebooks
directory as working directory (the notebooks put the repository root on ``sys.path``
themselves), 300 s per cell at most. A cell that raises fails the test with the cell's
traceback; the notebooks also assert their own invariants (every observed error within its
certified bound), so a soundness regression in the library fails here too.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_formats.ipynb", "02_dot_products.ipynb", "03_model_precision.ipynb",
            "04_choose_a_format.ipynb"}


def kernel_name() -> str:
    """``python3`` if a kernel spec (or ipykernel's built-in one) provides it; else install the
    ipykernel spec for this interpreter in the user's Jupyter directory (fresh CI images)."""
    from jupyter_client.kernelspec import NoSuchKernel, find_kernel_specs, get_kernel_spec
    try:
        get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        pass
    specs = find_kernel_specs()
    if specs:
        return "python3" if "python3" in specs else sorted(specs)[0]
    from ipykernel.kernelspec import install
    install(user=True)
    return "python3"


def test_all_notebooks_present():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel_name(),
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute()                       # raises CellExecutionError on the first failing cell
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert n_code and all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_markdown_before_every_code_cell(path: Path):
    cells = nbformat.read(path, as_version=4).cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code":
            assert i > 0 and cells[i - 1].cell_type == "markdown", \
                f"{path.name} cell {i}: code cell without an explanatory markdown cell before it"
