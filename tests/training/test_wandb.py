"""Weights & Biases: the logger overlay logs the CSV logger's metric names and a table of sampled dialogues.

The run uses the real ``wandb`` package in offline mode; the test records what the logger hands to the W&B run
and reads back the table files W&B wrote.
"""

import csv
import glob
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers.paths import CONFIGS, TINY
from tracer_pl.cli import build_cli
from tracer_pl.core.dialogue import DialogueRecord, Turn
from tracer_pl.core.problem import Problem
from tracer_pl.training.callbacks import DIALOGUE_COLUMNS, DialogueTable, dialogue_rows

OVERLAY = CONFIGS / "loggers" / "wandb.yaml"


def test_dialogue_rows_give_question_turns_actions_and_rewards():
    problem = Problem(question="What is 2 + 3?", gold="5", dataset="gsm8k")
    record = DialogueRecord(problem=problem, pending_answer="5", pending_correct=True, turns=[
        Turn(round=1, role="proposer", action="refresh", forced=True, state=None, text="2 + 3 = 5", reward=1.0),
        Turn(round=2, role="reviewer", action="skip", forced=False, state=("+0", "not_last")),
        Turn(round=3, role="proposer", action="keep", forced=False, state=("+0", "last")),
    ])
    other = DialogueRecord(problem=Problem(question="q", gold="1", dataset="gsm8k"))
    (row,) = dialogue_rows([record, other], batch=7, max_rows=1)  # max_rows keeps the first dialogue only
    assert dict(zip(DIALOGUE_COLUMNS, row)) == {
        "batch": 7, "question": "What is 2 + 3?", "gold": "5",
        "turns": "round 1 proposer refresh:\n2 + 3 = 5\n\nround 2 reviewer skip\n\nround 3 proposer keep",
        "actions": "refresh skip keep",
        "rewards": "1 - -",  # a silent round has no reward
        "final_answer": "5", "correct": True,
    }


def test_dialogue_table_without_a_wandb_logger_warns_and_logs_nothing():
    trainer = SimpleNamespace(loggers=[], global_step=0, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
        batch_progress=SimpleNamespace(total=SimpleNamespace(processed=1)))))
    table = DialogueTable(every_n_batches=1)
    with pytest.warns(UserWarning, match="no WandbLogger"):
        table.on_fit_start(trainer, None)
    table.on_train_batch_end(trainer, None, {"records": ["not read without a logger"]}, None, 0)
    with pytest.raises(ValueError, match="every_n_batches must be at least 1"):
        DialogueTable(every_n_batches=0)


@pytest.mark.parametrize("every, batches, logged", [
    (10, 6, [6]),  # the shipped overlay's example: fewer batches than the period still log one table, at the end
    (1, 2, [1, 2]),  # the last batch was just logged: not twice
    (2, 5, [2, 4, 5]),
    (3, 6, [3, 6]),
])
def test_dialogue_table_logs_every_n_batches_and_at_the_end_of_training(tmp_path, every, batches, logged):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))  # no run starts until something is logged
    tables = []
    logger.log_table = lambda key, columns, data, step: tables.append((key, data[0][0], step))
    progress = SimpleNamespace(processed=0)
    trainer = SimpleNamespace(loggers=[logger], global_step=0, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
        batch_progress=SimpleNamespace(total=progress))))
    callback = DialogueTable(every_n_batches=every)
    record = DialogueRecord(problem=Problem(question="q", gold="1", dataset="gsm8k"))
    for batch in range(1, batches + 1):
        progress.processed, trainer.global_step = batch, 10 * batch
        callback.on_train_batch_end(trainer, None, {"records": [record]}, None, batch - 1)
    callback.on_train_end(trainer, None)
    assert tables == [("train/dialogues", batch, 10 * batch) for batch in logged]


@pytest.mark.e2e
@pytest.mark.usefixtures("run_dir")
def test_the_shipped_overlay_logs_a_table_at_the_end_and_w_and_b_warns_nothing(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    warned = []
    monkeypatch.setattr(wandb, "termwarn", lambda message, *args, **kwargs: warned.append(message))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        build_cli(["fit", "-c", TINY, "-c", str(OVERLAY), "--trainer.limit_train_batches=3",
                   "--model.engine=tracer_pl.engines.fake.FakeEngine", "--trainer.enable_progress_bar=false"])
        wandb.finish()
    finally:
        wandb.teardown()  # stop W&B's service, set up with this test's directories, before another test starts one
    (run,) = glob.glob(str(tmp_path / "runs/tiny/wandb/offline-run-*"))
    tables = list(Path(run).glob("files/media/table/train/dialogues_*.table.json"))
    assert len(tables) == 1  # 3 batches, one table every 10: the last batch's, at the end of training
    assert {row[0] for row in json.loads(tables[0].read_text())["data"]} == {3}
    assert not [message for message in warned if "anonymous" in message]


@pytest.mark.e2e
@pytest.mark.usefixtures("run_dir")
def test_offline_run_logs_the_csv_metric_names_and_dialogue_tables(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    logged = []  # what the logger hands to the real (offline) W&B run
    real_log = wandb.sdk.wandb_run.Run.log

    def log(run, data, *args, **kwargs):
        logged.append(set(data))
        return real_log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overlay = yaml.safe_load(OVERLAY.read_text())
    overlay["trainer"]["callbacks+"][0]["init_args"]["every_n_batches"] = 1  # the shipped overlay, every batch
    (tmp_path / "wandb.yaml").write_text(yaml.safe_dump(overlay))
    build_cli(["fit", "-c", TINY, "-c", "wandb.yaml", "--trainer.limit_train_batches=2",
               "--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer", "--trainer.enable_progress_bar=false"])
    wandb.finish()  # the logger leaves the run open; finishing it writes everything to the run's files

    rows = list(csv.DictReader((tmp_path / "runs/tiny/logs/version_0/metrics.csv").open()))
    csv_names = set(rows[0]) - {"step"}
    (run,) = glob.glob(str(tmp_path / "runs/tiny/wandb/offline-run-*"))
    assert list(Path(run).glob("run-*.wandb"))  # the offline run's data file, for `wandb sync`
    wandb_names = set().union(*logged)
    assert csv_names <= wandb_names  # every metric under the same name
    assert wandb_names - csv_names == {"trainer/global_step", "train/dialogues"}  # and the tables

    tables = sorted(Path(run).glob("files/media/table/train/dialogues_*.table.json"))
    assert len(tables) == 2  # one per batch
    by_batch = {}
    for path in tables:
        table = json.loads(path.read_text())
        assert table["columns"] == list(DIALOGUE_COLUMNS)
        (batch,) = {row[0] for row in table["data"]}
        by_batch[batch] = [dict(zip(DIALOGUE_COLUMNS, row)) for row in table["data"]]
    assert sorted(by_batch) == [1, 2]
    speak_rate = [float(r["controller/reviewer/p_speak"]) for r in rows if r.get("controller/reviewer/p_speak")]
    for batch, dialogues in by_batch.items():
        assert len(dialogues) == 2  # batch_size 2, max_rows 4: every dialogue of the batch
        for dialogue in dialogues:
            assert len(dialogue["actions"].split()) == len(dialogue["rewards"].split()) == 5  # one per round
            assert dialogue["turns"].startswith("round 1 proposer refresh")  # the forced first proposal
            assert dialogue["question"] and dialogue["gold"]
        # the table's dialogues are the ones the metrics were computed from: rounds 2 and 4 are the reviewer's
        reviews = [d["actions"].split()[i] for d in dialogues for i in (1, 3)]
        assert reviews.count("speak") / len(reviews) == pytest.approx(speak_rate[batch - 1])
