"""Two CPU processes (gloo) train with ``tracer_ddp``: both end with the same regret tables and adapters."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import child_env

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
pytestmark = [pytest.mark.ddp, pytest.mark.subprocess, pytest.mark.timeout(900)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["tiny", "fake"])
def ranks(request, tmp_path_factory):
    """The tiny model with TRACER's two seats, and the fake engine with a third seat (a verifier)."""
    out = tmp_path_factory.mktemp(f"ddp_{request.param}")
    env = child_env({**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, str(WORKER), str(out), request.param], env=env, cwd=out,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_ranks_trained_on_different_problems(ranks):
    assert ranks[0]["seen"] and ranks[1]["seen"] and not set(ranks[0]["seen"]) & set(ranks[1]["seen"])


def test_regret_tables_are_identical_and_hold_both_ranks_updates(ranks):
    assert ranks[0]["controllers"] == ranks[1]["controllers"]
    visits = sum(entry["visits"] for c in ranks[0]["controllers"].values() for entry in c["states"])
    assert ranks[0]["local_updates"] > 0 and ranks[1]["local_updates"] > 0
    assert visits == ranks[0]["local_updates"] + ranks[1]["local_updates"]


def test_adapters_are_identical_and_trained(ranks):
    a, b = ranks[0]["adapters"], ranks[1]["adapters"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # GSPO steps happened: LoRA B matrices (zero at the start) or the fake policy's logits (zero at the start)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k or "logits" in k)
    assert ranks[0]["steps"] == ranks[1]["steps"]  # every step was taken together


def test_every_seat_has_a_controller_and_an_adapter(ranks):
    seats = set(ranks[0]["controllers"])
    assert seats in ({"proposer", "reviewer"}, {"proposer", "reviewer", "verifier"})
    if "verifier" in seats:  # the fake engine's run: the third seat decided, and its adapter trained in step
        assert ranks[0]["controllers"]["verifier"]["states"]
        assert any("verifier" in k and float(v.abs().sum()) > 0 for k, v in ranks[0]["adapters"].items())
