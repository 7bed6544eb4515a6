"""Suite-wide settings and the fixtures several test folders share.

One thread per process: several tests start other processes (data-parallel ranks, a training run that is
killed, notebook kernels), and on a shared CPU torch processes that each use every core slow one another down
by an order of magnitude. Set before any test module imports torch; an explicit setting wins.

Helpers that are plain functions and classes (scripted agents, roles with reward signal, the one ``fit``, paths)
live in ``tests/helpers``; the fixtures here build on them.
"""

import os
import signal

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402

# Signals a fit handles in-process (Lightning's SignalConnector: SIGTERM, and SIGUSR1 on SLURM; tracer_pl's SIGTERM
# save). SIGALRM is left alone: pytest-timeout and math-verify's timeouts own it.
_HANDLED_SIGNALS = [s for s in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP") if hasattr(signal, s)]


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """Every test leaves the process's signal handlers as it found them (a fit, or a SIGTERM test, may not)."""
    saved = {name: signal.getsignal(getattr(signal, name)) for name in _HANDLED_SIGNALS}
    try:
        yield saved
    finally:
        for name, handler in saved.items():
            if signal.getsignal(getattr(signal, name)) is not handler and handler is not None:
                signal.signal(getattr(signal, name), handler)


TIERS = ("slow", "e2e", "subprocess", "ddp", "notebook")
"""The markers ``make test-fast`` deselects (the Makefile's ``FAST``; pyproject.toml describes each)."""


@pytest.fixture(autouse=True)
def fast_tier_runs_no_trainer_stage(request, monkeypatch):
    """A test without a tier marker fails if it completes a Lightning ``fit``, ``validate`` or ``test``.

    So the fast tier holds no end-to-end run: one that trains or evaluates through a ``Trainer`` (the CLI's too)
    must be marked ``e2e`` (or another tier). A stage that is refused before it runs (a configuration or data
    error raised in its setup) is fine. Lightning's ``Trainer._run`` is where every stage runs once set up.
    """
    if any(request.node.get_closest_marker(tier) for tier in TIERS):
        return
    from lightning.pytorch import Trainer

    run = getattr(Trainer, "_run", None)
    if run is None:  # another Lightning: nothing to guard
        return

    def guarded(trainer, *args, **kwargs):
        result = run(trainer, *args, **kwargs)
        pytest.fail(f"a whole Trainer stage ({trainer.state.fn}) ran in a test without a tier marker; mark it "
                    f"@pytest.mark.e2e (tiers: {', '.join(TIERS)})", pytrace=False)
        return result

    monkeypatch.setattr(Trainer, "_run", guarded)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fresh working directory for a run: configs that write under ``runs/<name>`` write here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sum_problems():
    """Eight problems "What is i + (4 - i)?" (gold 4): the fake engine's one-token answers are sometimes right."""
    from tests.helpers.problems import sums_to_four  # here, not at the top: conftest imports nothing of tracer_pl

    return sums_to_four(8)
