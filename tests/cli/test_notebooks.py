"""The notebooks run top to bottom on the tiny config (a fresh kernel each), so they never rot."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.paths import ROOT

pytestmark = [pytest.mark.notebook, pytest.mark.subprocess, pytest.mark.timeout(900)]


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_custom_role.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_PL_ROOT", str(ROOT))
    monkeypatch.setenv("TRACER_PL_NOTEBOOK_CONFIG", "tiny.yaml")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   env=dict(os.environ)).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    if name.startswith("01"):
        shown = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(shown) == 2  # the regret and speak-rate plots
        text = "".join(o.get("text", "") for o in outputs)
        assert "question:" in text and "round 1 proposer" in text
    else:
        assert (tmp_path / "my_roles.py").exists() and (tmp_path / "runs/notebook_custom_role").is_dir()
        adapters = tmp_path / "runs/notebook_third_role/logs/version_0/adapters"
        assert sorted(p.name for p in adapters.iterdir() if p.is_dir()) == ["proposer", "reviewer", "verifier"]
        assert list((tmp_path / "runs/notebook_third_role/logs/version_1").glob("test_records_*.jsonl"))
