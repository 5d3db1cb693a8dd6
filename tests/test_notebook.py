"""examples/quickstart.ipynb runs end to end, headless (nbclient), on the session's quick
pipeline outputs; it is stored without outputs."""
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")


def _with_parameters(nb, **values):
  """papermill's convention: a cell after the one tagged `parameters` overrides it."""
  at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(at) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  src = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  nb.cells.insert(at[0] + 1, nbformat.v4.new_code_cell(src))
  return nb


def _text(nb):
  out = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      out.append(o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values()))
  return "\n".join(out)


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_runs_on_the_quick_pipeline(pipeline_run):
  workdir, _ = pipeline_run
  nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), WORKDIR=workdir)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()   # raises on any error
  text = _text(nb)
  summary = json.load(open(os.path.join(workdir, "pipeline.json")))
  assert f"{summary['n_universal']} of {summary['n_neurons']} neurons universal" in text
  assert f"report: {summary['report']}" in text and os.path.isfile(summary["report"])
  assert "next-token loss" in text and "best partner per seed" in text
  assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
