"""The notebooks run top to bottom on the tiny config (a fresh kernel each), so they never rot.

Each reads its config from ``TRACER_PL_NOTEBOOK_CONFIG`` and writes only into a temporary folder of its own, never
where it was opened (for a user, the repository's ``notebooks/``).
"""

import os
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from tests.helpers.paths import ROOT, TINY

pytestmark = [pytest.mark.notebook, pytest.mark.subprocess, pytest.mark.timeout(900)]


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_custom_role.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    config = tmp_path / "notebook.yaml"  # the tiny config with another seed: the runs show which config they read
    config.write_text(Path(TINY).read_text().replace("seed_everything: 42", "seed_everything: 7"))
    opened, scratch = tmp_path / "notebooks", tmp_path / "tmp"
    opened.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TRACER_PL_ROOT", str(ROOT))
    monkeypatch.setenv("TRACER_PL_NOTEBOOK_CONFIG", str(config))  # a path outside configs/ works too
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the kernel's tempfile makes the notebook's folder
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(opened)}},
                   env=dict(os.environ)).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert list(opened.iterdir()) == []  # nothing written where the notebook was opened
    (work,) = scratch.glob("tracer-pl-notebook-*")
    saved = sorted(work.glob("runs/*/logs/version_*/config.yaml"))
    assert saved and {yaml.safe_load(path.read_text())["seed_everything"] for path in saved} == {7}
    if name.startswith("01"):
        shown = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(shown) == 2  # the regret and speak-rate plots
        text = "".join(o.get("text", "") for o in outputs)
        assert "question:" in text and "round 1 proposer" in text
    else:
        assert (work / "my_roles.py").exists() and (work / "runs/notebook_custom_role").is_dir()
        adapters = work / "runs/notebook_third_role/logs/version_0/adapters"
        assert sorted(p.name for p in adapters.iterdir() if p.is_dir()) == ["proposer", "reviewer", "verifier"]
        assert list((work / "runs/notebook_third_role/logs/version_1").glob("test_records_*.jsonl"))
