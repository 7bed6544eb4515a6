"""A run owns its checkpoints: no new fit, debug run or re-run of a saved config replaces another run's."""

import os
import sys

import pytest
import yaml

from tests.helpers.paths import TINY
from tracer_pl.cli import build_cli, main
from tracer_pl.errors import CheckpointError
from tracer_pl.training import run_files

FIT = ["fit", "-c", TINY, "--model.engine=tracer_pl.engines.fake.FakeEngine", "--trainer.enable_progress_bar=false"]
LAST = "runs/tiny/checkpoints/last.ckpt"


def run(monkeypatch, capsys, argv):
    """``tracer-pl argv``: its exit code (0 when it returns) and its stderr."""
    monkeypatch.setattr(sys, "argv", ["tracer-pl", *argv])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("second", [
    [],  # a plain second fit
    ["--trainer.limit_train_batches=1", "--trainer.max_epochs=3"],  # a shorter one, other settings
    ["--ckpt_path=elsewhere/last.ckpt"],  # resuming another directory's checkpoint into this one
])
@pytest.mark.usefixtures("run_dir")
def test_a_new_fit_into_a_directory_holding_a_run_is_refused_and_the_run_kept(tmp_path, monkeypatch, capsys, second):
    build_cli([*FIT, "--trainer.limit_train_batches=2"])
    before = (tmp_path / LAST).read_bytes()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/last.ckpt").write_bytes(before)
    code, err = run(monkeypatch, capsys, [*FIT, *second])
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert "runs/tiny/checkpoints holds the checkpoints of another run (last.ckpt)" in line
    assert "pass --ckpt_path last to resume that run, or choose another --trainer.default_root_dir" in line
    assert (tmp_path / LAST).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs/tiny/logs").iterdir()) == ["version_0"]  # no new log folder


@pytest.mark.e2e
@pytest.mark.usefixtures("run_dir")
def test_a_debug_run_writes_no_checkpoint_and_leaves_the_run_alone(tmp_path):
    build_cli([*FIT, "--trainer.fast_dev_run=true", "--trainer.default_root_dir=runs/empty"])
    assert run_files.checkpoints_in(tmp_path / "runs/empty/checkpoints") == []
    assert not list((tmp_path / "runs/empty").rglob("adapters"))  # and exports no adapters
    build_cli([*FIT, "--trainer.limit_train_batches=2"])
    before = (tmp_path / LAST).read_bytes()
    build_cli([*FIT, "--trainer.fast_dev_run=2"])  # into the finished run's directory
    assert (tmp_path / LAST).read_bytes() == before
    assert [p.name for p in (tmp_path / "runs/tiny/checkpoints").iterdir() if p.suffix == ".ckpt"] == ["last.ckpt"]


@pytest.mark.e2e
@pytest.mark.usefixtures("run_dir")
def test_a_saved_config_run_again_with_another_root_writes_the_new_run_there(tmp_path):
    build_cli([*FIT, "--trainer.limit_train_batches=2"])
    before = (tmp_path / LAST).read_bytes()
    saved = tmp_path / "runs/tiny/logs/version_0/config.yaml"
    trainer = yaml.safe_load(saved.read_text())["trainer"]
    assert trainer["default_root_dir"] == "runs/tiny"
    assert trainer["callbacks"][0]["init_args"]["dirpath"] == "${trainer.default_root_dir}/checkpoints"
    build_cli(["fit", "-c", str(saved), "--trainer.default_root_dir=runs/again", "--trainer.limit_train_batches=1"])
    assert (tmp_path / "runs/again/checkpoints/last.ckpt").is_file()
    assert (tmp_path / "runs/again/logs/version_0/metrics.csv").is_file()  # the logs moved too
    assert (tmp_path / LAST).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs/tiny/logs").iterdir()) == ["version_0"]


def test_root_relative_rewrites_the_trainers_paths_under_the_root_only():
    config = {
        "trainer": {"default_root_dir": "runs/a", "callbacks": [{"init_args": {"dirpath": "runs/a/checkpoints"}}],
                    "logger": [{"init_args": {"save_dir": "runs/a/"}}, {"init_args": {"save_dir": "runs/ab"}}]},
        "data": {"train": "runs/a/train.jsonl"},
        "ckpt_path": "runs/a/checkpoints/last.ckpt",
    }
    relative = run_files.root_relative(config, "runs/a")
    assert relative["trainer"] == {
        "default_root_dir": "runs/a",
        "callbacks": [{"init_args": {"dirpath": "${trainer.default_root_dir}/checkpoints"}}],
        "logger": [{"init_args": {"save_dir": "${trainer.default_root_dir}"}}, {"init_args": {"save_dir": "runs/ab"}}],
    }
    assert relative["data"] == config["data"] and relative["ckpt_path"] == config["ckpt_path"]


def test_a_fit_may_write_where_it_resumes_from_by_any_name_of_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "run/checkpoints"
    run_files.check_owner(directory, None)  # nothing there yet
    directory.mkdir(parents=True)
    (directory / ".last.ckpt.tmp").write_bytes(b"")  # what a killed save leaves is no checkpoint
    run_files.check_owner(directory, None)
    (directory / "step-000002.ckpt").write_bytes(b"x")
    os.symlink(directory, tmp_path / "link")
    for resumed in ("run/checkpoints/step-000002.ckpt", "./run/checkpoints/../checkpoints/step-000002.ckpt",
                    str(directory / "step-000002.ckpt"), "link/step-000002.ckpt"):
        run_files.check_owner("run/checkpoints", resumed)
    with pytest.raises(CheckpointError, match="holds the checkpoints of another run \\(step-000002.ckpt\\)"):
        run_files.check_owner(directory, None)
    with pytest.raises(CheckpointError, match="this fit resumes from other.ckpt, another run's"):
        run_files.check_owner(directory, "other.ckpt")
