"""The progress display: seconds per step, and how far a running step has come (rounds, problems, model calls)."""

import re

import lightning as L
import pytest
import torch

from tests.helpers.problems import ProblemList
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.training.callbacks import Pace, RoundProgressBar, StepProgress, _Bar
from tracer_pl.training.module import BackboneConfig, TracerModule


@pytest.mark.parametrize("progress, text", [
    (StepProgress(rounds=5), "round 1/5"),  # the round being played
    (StepProgress(rounds_done=2, rounds=5), "round 3/5"),
    (StepProgress(rounds_done=5, rounds=5), "round 5/5"),  # the last one has ended: the step is closing
    (StepProgress(problems=16), "problems 0/16"),
    (StepProgress(problems_done=8, problems=16, calls=1), "problems 8/16, 1 model call"),
    (StepProgress(problems_done=8, problems=16, calls=6), "problems 8/16, 6 model calls"),
    (StepProgress(), ""),  # a step without rounds (the single-agent baseline) shows nothing
])
def test_step_progress_says_where_the_step_is(progress, text):
    assert progress.describe() == text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("events, rate, left", [
    ([], "? s/step", "?"),  # nothing finished: no pace yet
    ([("start", 0), ("finish", 36)], "36 s/step", "03:00"),  # 5 of 6 steps left at 36 s
    ([("start", 0), ("finish", 36), ("start", 0), ("finish", 40)], "38 s/step", "02:32"),  # the mean of both
    ([("start", 0), ("finish", 36), ("start", 0), ("wait", 30)], "36 s/step", "02:30"),  # running: counts down
    ([("start", 0), ("finish", 250)], "250 s/step", "20:50"),  # slow steps in whole seconds
    ([("start", 0), ("finish", 0.26)], "0.26 s/step", "00:01"),
])
def test_pace_is_seconds_per_finished_step_and_the_time_left(events, rate, left):
    clock = Clock()
    pace = Pace("step", clock=clock)
    done = 0
    for event, seconds in events:
        clock.now += seconds
        if event != "wait":
            getattr(pace, event)()
        done += event == "finish"
    assert pace.rate_text() == rate
    assert pace.left_text(done, 6) == left


def test_the_bar_shows_seconds_per_step_and_the_round_after_its_name(capsys):
    bar = _Bar(desc="Epoch 0", noun="step", total=6, bar_format=RoundProgressBar.BAR_FORMAT, file=None, ncols=100)
    bar.set_description("Epoch 0")  # tqdm adds ": ", as Lightning's description does
    clock = Clock()
    bar.pace.clock = clock
    bar.pace.start()
    clock.now += 36
    bar.pace.finish()
    bar.n = 1
    bar.within = StepProgress(rounds_done=2, rounds=5).describe()
    text = str(bar)
    assert text.startswith("Epoch 0, round 3/5:  17%")
    assert "36 s/step" in text and "it/s" not in text and "<03:00" in text
    bar.close()


class Recorder(L.Callback):
    """Records every StepProgress the module reports, with the stage it came in."""

    def __init__(self):
        self.seen = []

    def on_step_progress(self, trainer, pl_module, progress):
        self.seen.append(("train" if trainer.training else "test", progress))


def run(tmp_path, problems, callbacks, progress_bar):
    """Fit the fake engine for 2 batches of 2 problems (3 rounds), then test it on 2 problems."""
    L.seed_everything(5)
    module = TracerModule(backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=FakeEngine(),
                          dialogue=DialogueConfig(rounds=3), gspo=GSPOConfig(group_size=4, lr=0.5))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress_bar,
                        callbacks=callbacks)
    trainer.fit(module, ProblemList(problems))
    trainer.test(module, dataloaders=torch.utils.data.DataLoader(problems[:2], batch_size=2, collate_fn=list),
                 verbose=False)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


@pytest.mark.e2e
def test_the_module_reports_rounds_and_problems_and_the_bar_changes_no_result(tmp_path, sum_problems, capsys):
    recorder = Recorder()
    shown, shown_metrics = run(tmp_path / "a", sum_problems, [RoundProgressBar(), recorder], True)
    out = capsys.readouterr().out
    plain, plain_metrics = run(tmp_path / "b", sum_problems, [], False)

    train = [p for stage, p in recorder.seen if stage == "train"]
    step = [StepProgress(rounds_done=r, rounds=3) for r in range(4)]  # reported at the start and after each round
    assert train == step + step
    test = [p for stage, p in recorder.seen if stage == "test"]
    assert test[0] == StepProgress(problems=4)  # 2 problems x 2 protocols (sample, argmax)
    done = [p.problems_done for p in test]
    assert done == sorted(done) and set(done) == {0, 2, 4}  # moves within the batch, protocol by protocol
    calls = [p.calls for p in test]
    assert calls == sorted(calls) and calls[-1] >= 2  # and with each model call (round 1 of each protocol at least)

    for text in ("round 1/3", "round 3/3", "s/step", "problems 2/4", "model call", "s/batch"):
        assert text in out, text
    assert not re.search(r"\d(it/s|s/it)", out)

    # the display draws no random numbers: the same adapters, controllers and test metrics as without it
    for role in shown.policy.roles:
        assert torch.equal(shown.policy.logits[role], plain.policy.logits[role]), role
    for a, b in zip(shown.controllers, plain.controllers):
        assert a.matcher.state_dict() == b.matcher.state_dict()
    assert shown_metrics == plain_metrics and "test/set0/accuracy" in shown_metrics


@pytest.mark.e2e
def test_evaluating_one_protocol_at_a_time_gives_the_records_of_one_call(tmp_path, sum_problems):
    from tracer_pl.training.evaluation import Evaluator

    module = TracerModule(backbone=BackboneConfig(max_new_tokens=2), engine=FakeEngine(),
                          dialogue=DialogueConfig(rounds=3))  # untrained controllers: the sample protocol varies
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(module, dataloaders=torch.utils.data.DataLoader(sum_problems, batch_size=4, collate_fn=list),
                 verbose=False)
    reference = Evaluator(module.evaluation, module.eval_seed)  # every protocol in one call, as before
    for start in (0, 4):
        batch = sum_problems[start : start + 4]
        for suffix, records in reference.play(batch, module.policy, module.seats, module.dialogue_config):
            reference.add("test", "set0" + suffix, records, module.controllers)
    assert list(module.evaluator.records) == ["set0", "set0@argmax"]
    assert module.evaluator.records == reference.records
    assert module.evaluator.state_counts == reference.state_counts
