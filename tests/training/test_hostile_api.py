"""The Python API as a hostile user would use it: ``evaluate`` and ``write_metrics`` with bad stages, checkpoints
and places to write."""

import contextlib
import fractions
import json
import os
import socket
import stat
import types

import lightning as L
import pytest
import torch

from tests.helpers.problems import ProblemList, sums_to_four
from tests.helpers.special_files import no_hang
from tests.helpers.training import fit
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.errors import CheckpointError, ConfigError, DataError
from tracer_pl.training import checkpoints
from tracer_pl.training.evaluation import evaluate, write_metrics
from tracer_pl.training.module import TracerModule


def module():
    return TracerModule(backbone=BackboneConfig(max_new_tokens=1), engine=FakeEngine())


def problems(tmp_path, n=4):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {4 - i}?", "answer": "#### 4"}) + "\n" for i in range(n)))
    return ReasoningDataModule(test=str(data), val=str(data), eval_batch_size=2)


def trainer(root, **settings):
    return L.Trainer(accelerator="cpu", logger=False, default_root_dir=root, enable_progress_bar=False,
                     enable_model_summary=False, **settings)


# ---------------------------------------------------------------------- the stage
@pytest.mark.parametrize("stage", ["train", "fit", "predict", "validate", "TEST", "", None, ["test"]])
def test_evaluate_refuses_a_stage_other_than_test_and_val(tmp_path, stage):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="^stage must be 'test' or 'val' \\(training runs with trainer.fit\\), got"):
        evaluate(module(), problems(tmp_path), trainer=trainer(out), stage=stage)
    assert not out.exists()  # refused before anything ran or was written


# ---------------------------------------------------------------------- the checkpoint
def sealed(**parts):
    checkpoint = {"state_dict": {}, "pytorch-lightning_version": L.__version__, **parts}
    checkpoints.seal(checkpoint)
    return checkpoint


def truncated(path):
    torch.save(sealed(state_dict={"policy.w": torch.zeros(1000)}), path)
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"garbage" * 10), "not a readable checkpoint \\(not a torch.save archive"),
        (lambda p: p.write_bytes(b""), "empty file, not a checkpoint"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory; expected a .ckpt file"),
        (truncated, "not a readable checkpoint"),
        (lambda p: torch.save({"state_dict": {}, "x": fractions.Fraction(1, 2)}, p),
         "not a readable checkpoint \\(it holds objects other than tensors"),
        (lambda p: torch.save(sealed(state_dict=5), p), "not a usable checkpoint"),
        (lambda p: torch.save({"state_dict": {}}, p), "not a Lightning checkpoint \\(no 'pytorch-lightning_version'"),
        (lambda p: os.symlink(p, p), "a symbolic link loop"),
        (lambda p: os.symlink("/dev/zero", p), "is a character device, not a checkpoint file"),
        (os.mkfifo, "is a named pipe \\(FIFO\\), not a checkpoint file"),
    ],
)
def test_evaluate_refuses_unusable_checkpoints_with_the_command_line_errors(tmp_path, make, message):
    path = tmp_path / "given.ckpt"
    make(path)
    with no_hang(path) if path.is_fifo() else contextlib.nullcontext(), \
            pytest.raises(CheckpointError, match=f"^--ckpt_path {path}: {message}") as error:
        evaluate(module(), problems(tmp_path), trainer=trainer(tmp_path / "out"), ckpt_path=str(path))
    text = str(error.value)
    assert "\n" not in text and "weights_only" not in text  # never torch's advice to load unsafely
    assert not (tmp_path / "out" / "test_metrics.json").exists()


def test_evaluate_refuses_a_socket_as_checkpoint(tmp_path):
    path = tmp_path / "given.ckpt"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        with pytest.raises(CheckpointError, match=f"--ckpt_path {path}: is a socket, not a checkpoint file"):
            evaluate(module(), problems(tmp_path), trainer=trainer(tmp_path / "out"), ckpt_path=path)
    finally:
        server.close()


@pytest.mark.parametrize(
    "ckpt_path, message",
    [
        ("last", "--ckpt_path last: the trainer has no checkpoint callback to find the last checkpoint of"),
        ("best", "--ckpt_path best: the trainer has no ModelCheckpoint that saved a best model"),
    ],
)
def test_evaluate_with_last_or_best_and_no_such_checkpoint_is_an_error_not_the_untrained_module(
        tmp_path, ckpt_path, message):
    with pytest.raises(CheckpointError, match=message):
        evaluate(module(), problems(tmp_path), trainer=trainer(tmp_path / "out"), ckpt_path=ckpt_path)


@pytest.mark.e2e
def test_evaluate_loads_a_good_checkpoint_by_path_and_as_last(tmp_path):
    from tracer_pl.training.callbacks import BatchCheckpoint

    fit(tmp_path / "fit", ProblemList(sums_to_four(4)), batches=2, seed=1, checkpoint_every=2,
        backbone=BackboneConfig(max_new_tokens=1), engine=FakeEngine())
    last = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    by_path = evaluate(module(), problems(tmp_path), trainer=trainer(tmp_path / "a"), ckpt_path=str(last))
    assert "test/sums/accuracy" in by_path
    assert json.loads((tmp_path / "a" / "test_metrics.json").read_text()) == pytest.approx(by_path)
    again = trainer(tmp_path / "b", callbacks=[BatchCheckpoint(str(last.parent), every_n_batches=2)])
    assert evaluate(module(), problems(tmp_path), trainer=again, ckpt_path="last") == pytest.approx(by_path)


# ---------------------------------------------------------------------- where results go
@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["test", "val"])
def test_an_evaluation_that_ran_no_batch_is_an_error_and_keeps_the_earlier_metrics(tmp_path, stage):
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{stage}_metrics.json").write_text('{"earlier": 1}\n')
    limits = {f"limit_{stage}_batches": 0}
    with pytest.raises(DataError, match=f"evaluate ran no {stage} batch, .* trainer.limit_{stage}_batches"):
        evaluate(module(), problems(tmp_path), trainer=trainer(out, **limits), stage=stage)
    assert (out / f"{stage}_metrics.json").read_text() == '{"earlier": 1}\n'


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_an_unwritable_results_directory_is_refused_before_the_evaluation_runs(tmp_path, where):
    (tmp_path / "blocker").write_text("a file")
    root = tmp_path / "blocker" / "sub" if where == "under a file" else tmp_path / "blocker"
    with pytest.raises(DataError, match=f"{root}: cannot write the evaluation's files there"):
        evaluate(module(), problems(tmp_path), trainer=trainer(root))


def stub_trainer(directory, metrics):
    return types.SimpleNamespace(log_dir=str(directory), default_root_dir=str(directory),
                                 callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})


def test_write_metrics_replaces_the_file_whole_and_never_writes_through_what_stands_there(tmp_path):
    os.mkfifo(tmp_path / "test_metrics.json")  # a plain write would block until someone reads the pipe
    with no_hang(tmp_path / "test_metrics.json"):
        path = write_metrics(stub_trainer(tmp_path, {"test/sums/accuracy": 0.5, "val/x": 1.0}), "test")
    assert path.is_file() and json.loads(path.read_text()) == {"test/sums/accuracy": 0.5}
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("keep")
    path.unlink()
    os.symlink(elsewhere, path)
    write_metrics(stub_trainer(tmp_path, {"test/sums/accuracy": 0.25}), "test")
    assert elsewhere.read_text() == "keep" and json.loads(path.read_text()) == {"test/sums/accuracy": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.json", "test_metrics.json"]  # no temporary
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable as a plain write leaves it


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "test_metrics.json").mkdir(parents=True), "test_metrics.json: cannot write the metrics"),
        (lambda d: d.write_text("a file"), "test_metrics.json: cannot write the metrics there"),
    ],
)
def test_write_metrics_where_it_cannot_write_is_one_line(tmp_path, make, message):
    directory = tmp_path / "logs"
    make(directory)
    with pytest.raises(DataError, match=message) as error:
        write_metrics(stub_trainer(directory, {"test/a/accuracy": 1.0}), "test")
    assert "\n" not in str(error.value)
