"""Where the tests find the repository's configs and the vendored data, wherever the test file sits."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the directory holding ``configs/`` and ``tests/``)."""
TESTS = ROOT / "tests"
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
DATA = TESTS / "data"
"""Vendored benchmark samples (tests/data/README.md) and the pinned fingerprints."""
GSM = DATA / "gsm8k" / "test_sample64.jsonl"
MATH = DATA / "math500" / "test_sample64.jsonl"
CORPUS = TESTS / "corpus"
"""Model-style outputs with the answers they mean (tests/corpus/README.md)."""


def child_env(environ):
    """``environ`` for a child Python process that imports ``tests.helpers`` (the repository root on its path)."""
    path = [str(ROOT), *([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])]
    return {**environ, "PYTHONPATH": os.pathsep.join(path)}
