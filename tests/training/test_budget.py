"""TokenBudget stops training at the step whose generated tokens reach the budget, and counts across resumes."""

import lightning as L
import pytest

from tests.helpers.problems import ProblemList, sums_to_four
from tests.helpers.training import fit
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.errors import ConfigError
from tracer_pl.training.budget import TokenBudget

pytestmark = pytest.mark.e2e


class StepTokens(L.Callback):
    """The completion tokens of every training step, read from the step's records."""

    def __init__(self):
        self.per_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.per_step.append(sum(r.completion_tokens for r in outputs["records"]))


def run(tmp_path, name, *callbacks, batches=4):
    module, trainer = fit(tmp_path / name, ProblemList(sums_to_four(8)), batches=batches, seed=3,
                          callbacks=callbacks, backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=6))
    return module, trainer


def test_training_stops_after_the_step_that_reaches_the_budget(tmp_path):
    free = StepTokens()
    run(tmp_path, "free", free)
    tokens = free.per_step
    assert len(tokens) == 4 and all(t > 0 for t in tokens)

    exact = TokenBudget(tokens[0] + tokens[1])  # reached exactly at the second step
    seen = StepTokens()
    _, trainer = run(tmp_path, "exact", exact, seen)
    assert seen.per_step == tokens[:2] and exact.generated == tokens[0] + tokens[1]
    assert trainer.callback_metrics["train/generated_tokens_total"] == tokens[0] + tokens[1]

    over = TokenBudget(tokens[0] + 1)  # crossed during the second step, which completes
    seen = StepTokens()
    run(tmp_path, "over", over, seen)
    assert seen.per_step == tokens[:2]

    never = TokenBudget(sum(tokens) + 1)  # the epoch ends first
    seen = StepTokens()
    run(tmp_path, "never", never, seen)
    assert seen.per_step == tokens and never.generated == sum(tokens)


def test_the_count_is_saved_and_restored():
    budget = TokenBudget(100)
    budget.generated = 37
    other = TokenBudget(100)
    other.load_state_dict(budget.state_dict())
    assert other.generated == 37


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100"])
def test_a_budget_must_be_a_positive_whole_number(bad):
    with pytest.raises(ConfigError, match="max_completion_tokens"):
        TokenBudget(bad)
