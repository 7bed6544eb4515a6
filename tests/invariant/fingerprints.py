"""Fingerprints of seeded runs, shared by the check (``test_reproducibility.py``) and the recording (``record.py``).

A fingerprint is the SHA-256 of every test record file and of every controller's regret table after ``fit`` then
``test`` on a config. The pinned ones (``tests/data/reproducibility.json``) hold only for the package versions
that recorded them: random initialisation and sampling kernels differ across versions.
"""

import hashlib
import json
from importlib import metadata
from pathlib import Path

from tests.helpers.paths import CONFIGS, DATA, TINY

PIN = DATA / "reproducibility.json"
PINNED_PACKAGES = ("torch", "transformers", "peft", "lightning")
QUICKSTART = [str(CONFIGS / "quickstart.yaml"), "--trainer.limit_train_batches=1",
              "--model.dialogue.rounds=3", "--model.gspo.group_size=2", "--model.backbone.max_new_tokens=8",
              "--data.test_limit=2", "--data.eval_batch_size=2", "--model.evaluation.protocols=[sample]"]
RUNS = {
    # plain TRACER on the tiny model, whose random text is never parseable
    "tiny": [TINY],
    # a proposer whose reward varies on that text, so GSPO steps run
    "tiny_bytesum_proposer": [TINY, "--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer"],
    # the real SmolLM2-135M, shortened (one training batch, three rounds, short completions): answers are read
    "quickstart": QUICKSTART,
}
SLOW_RUNS = {"quickstart"}
"""Runs that take minutes (the real model): marked slow, and never run twice."""


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in PINNED_PACKAGES}


def read_pins(path: Path = PIN) -> dict:
    """The pinned file: ``{"versions": {...}, "runs": {run: fingerprint}}``; no versions and no runs without one."""
    return json.loads(path.read_text()) if path.exists() else {"versions": None, "runs": {}}


def fingerprint(root: Path, config: list[str]) -> str:
    """``fit`` then ``test`` the config into ``root``; the SHA-256 of its test records and controller tables."""
    from tracer_pl.cli import build_cli  # here: importing this module (the test's collection) loads no model code

    fitted = build_cli(["fit", "-c", *config, f"--trainer.default_root_dir={root}"])
    controllers = {c.name: c.matcher.state_dict() for c in fitted.model.controllers}
    build_cli(["test", "-c", *config, f"--trainer.default_root_dir={root}",
               f"--ckpt_path={root}/checkpoints/last.ckpt"])
    digest = hashlib.sha256()
    for path in sorted(root.rglob("test_records_*.jsonl")):
        digest.update(path.name.encode() + path.read_bytes())
    tables = {name: {str(k): [float(x) for x in v.tolist()] if hasattr(v, "tolist") else str(v)
                     for k, v in _flat(table)} for name, table in controllers.items()}
    digest.update(json.dumps(tables, sort_keys=True).encode())
    return digest.hexdigest()


def _flat(table, prefix=""):
    for key, value in (table.items() if isinstance(table, dict) else []):
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value
