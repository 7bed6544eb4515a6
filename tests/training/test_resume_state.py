"""What a checkpoint records so that it is resumed or tested with the state it was trained with.

Role settings, the controllers' state definition, the keywords ``last``/``best``/``hpc``, the training file by
another name, and a run resumed within its first of two epochs.
"""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tests.helpers.paths import CONFIGS, GSM, TINY, child_env
from tests.helpers.training import unrun_checkpoint
from tracer_pl.cli import build_cli, main
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.errors import CheckpointError, ConfigError
from tracer_pl.training import checkpoints
from tracer_pl.training.module import TracerModule

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]
FAKE = "--model.engine=tracer_pl.engines.fake.FakeEngine"
VERIFIER = str(CONFIGS / "examples" / "third_role.yaml")


def saved_checkpoint(path, *args):
    """What a tiny-config fit with ``args`` saves, built without training, written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(unrun_checkpoint(["-c", TINY, *QUIET, *args]), path)
    return path


def one_line_error(monkeypatch, capsys, argv):
    """Run ``tracer-pl argv``; return its exit code and its one ``tracer-pl: error:`` line."""
    monkeypatch.setattr(sys, "argv", ["tracer-pl", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert len(lines) == 1, err[-2000:]
    return stop.value.code, lines[0]


# ---------------------------------------------------------------------- role settings
@pytest.mark.parametrize(
    "base, change, flag, old, new",
    [
        ([], "--model.proposer.reward_scale=2.0", "model.proposer.init_args.reward_scale", "1.0", "2.0"),
        ([], "--model.reviewer.reward_scale=0.5", "model.reviewer.init_args.reward_scale", "1.0", "0.5"),
        ([], "--model.proposer.system_prompt=Be brief.", "model.proposer.init_args.system_prompt",
         "'You are a careful problem solver. Reason step by step, briefly.'", "'Be brief.'"),
        (["-c", VERIFIER], "--model.extra_roles=[{class_path: tracer_pl.examples.Verifier, init_args: "
         "{confirm_reward: 0.25}}]", "model.extra_roles.verifier.init_args.confirm_reward", "0.5", "0.25"),
        (["--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer"], "--model.proposer=tracer_pl.Proposer",
         "model.proposer.class_path", "'tests.helpers.roles_for_tests.ByteSumProposer'",
         "'tracer_pl.core.roles.Proposer'"),
    ],
)
@pytest.mark.usefixtures("run_dir")
def test_resuming_with_other_role_settings_is_refused_naming_the_setting_and_both_values(
        tmp_path, monkeypatch, capsys, base, change, flag, old, new):
    saved_checkpoint(tmp_path / "runs/tiny/checkpoints/last.ckpt", *base)
    code, line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, *QUIET, *base, change, "--ckpt_path=last"])
    assert code == 2
    assert line.startswith(f"tracer-pl: error: --{flag}: the checkpoint was trained with {old}, this run has {new}")


def test_role_settings_are_the_init_arguments_read_back_from_the_role():
    from tracer_pl.core.roles import Proposer
    from tracer_pl.examples import Verifier

    def bonus(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    settings = checkpoints.role_settings(Verifier(confirm_reward=0.25, reward_scale=3.0, extra_rewards=[bonus]))
    assert settings["class_path"] == "tracer_pl.examples.Verifier"
    expected = {  # the Verifier's own argument and Role's, with the defaults in use
        "confirm_reward": 0.25, "system_prompt": Verifier.default_system_prompt, "reward_scale": 3.0,
        "extra_rewards": [f"{__name__}.{bonus.__qualname__}"], "extra_reward_weights": [1.0],
        "extra_reward_format": "auto",
    }
    assert {key: settings["init_args"].get(key) for key in expected} == expected
    assert checkpoints.role_settings(Proposer())["init_args"]["system_prompt"] == Proposer.default_system_prompt


# ---------------------------------------------------------------------- the controllers' state definition
@pytest.mark.parametrize("command", ["test", "validate"])
@pytest.mark.parametrize(
    "trained, used, flag",
    [
        (["-c", str(CONFIGS / "ablations/no_vote_state.yaml")], [], "model.controllers.state_vote"),
        ([], ["--model.controllers.state_time=false"], "model.controllers.state_time"),
        ([], ["--model.controllers.vote_clip=null"], "model.controllers.vote_clip"),
    ],
)
@pytest.mark.usefixtures("run_dir")
def test_evaluating_with_another_state_definition_is_refused(tmp_path, monkeypatch, capsys, command, trained, used,
                                                              flag):
    checkpoint = saved_checkpoint(tmp_path / "trained.ckpt", *trained)
    argv = [command, "-c", TINY, *QUIET, *used, "--data.val=reasoning_gym:basic_arithmetic?size=2",
            "--trainer.limit_val_batches=1.0",
            f"--ckpt_path={checkpoint}"]
    code, line = one_line_error(monkeypatch, capsys, argv)
    assert code == 2 and line.startswith(f"tracer-pl: error: --{flag}: the checkpoint was trained with ")
    assert "use the checkpoint's setting to evaluate it" in line


def test_a_state_definition_unchanged_and_settings_safe_at_test_are_accepted(tmp_path):
    saved = torch.load(saved_checkpoint(tmp_path / "a.ckpt", "--model.controllers.state_vote=false"),
                       weights_only=True)
    same = build_cli(["-c", TINY, *QUIET, "--model.controllers.state_vote=false", "--model.proposer.reward_scale=3",
                      "--model.controllers.argmax_tie=speaking"], run=False)
    checkpoints.check_model(saved, same.model.hparams, resuming=False)  # no error: only evaluation is checked
    explicit = build_cli(["-c", TINY, *QUIET, "--model.controllers.state_vote=false",
                          "--model.reviewer.extra_reward_weights=[]", "--model.proposer.reward_scale=1.0"], run=False)
    checkpoints.check_model(saved, explicit.model.hparams, resuming=True)  # defaults given explicitly: the same run


# ---------------------------------------------------------------------- last, best, hpc
@pytest.mark.parametrize("command", ["fit", "test", "validate"])
@pytest.mark.usefixtures("run_dir")
def test_last_without_a_checkpoint_callback_is_an_error_not_an_untrained_run(monkeypatch, capsys, command):
    argv = [command, "-c", TINY, *QUIET, "--trainer.callbacks=null", "--data.val=reasoning_gym:basic_arithmetic",
            "--trainer.limit_val_batches=1.0",
            "--ckpt_path=last"]
    code, line = one_line_error(monkeypatch, capsys, argv)
    assert code == 2 and "--ckpt_path last: the trainer has no checkpoint callback" in line


@pytest.mark.parametrize("keyword, message", [
    ("best", "--ckpt_path best: the trainer has no ModelCheckpoint that saved a best model"),
    ("hpc", "--ckpt_path hpc: no HPC checkpoint (hpc_ckpt_<N>.ckpt) in runs/tiny"),
])
@pytest.mark.parametrize("command", ["fit", "test"])
@pytest.mark.usefixtures("run_dir")
def test_best_and_hpc_without_such_a_checkpoint_are_one_line_errors(monkeypatch, capsys, command, keyword, message):
    code, line = one_line_error(monkeypatch, capsys, [command, "-c", TINY, *QUIET, f"--ckpt_path={keyword}"])
    assert code == 2 and message in line


def test_hpc_and_last_name_the_newest_checkpoint(tmp_path):
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "hpc_ckpt_x.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.ckpt").write_bytes(b"x")
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), checkpoint_callback=None,
                              callbacks=[SimpleNamespace(dirpath=str(tmp_path / "checkpoints"))])
    assert checkpoints.resolve(trainer, "hpc", fit=False) == str(tmp_path / "hpc_ckpt_10.ckpt")
    assert checkpoints.resolve(trainer, "last", fit=False) == str(tmp_path / "checkpoints/last.ckpt")
    (tmp_path / "checkpoints/last.ckpt").unlink()
    assert checkpoints.resolve(trainer, "last", fit=True) is None  # a requeued job's first attempt starts
    with pytest.raises(CheckpointError, match="--ckpt_path last: no checkpoint in .*checkpoints yet"):
        checkpoints.resolve(trainer, "last", fit=False)


@pytest.mark.usefixtures("run_dir")
def test_a_checkpoint_without_a_lightning_version_is_one_line_at_the_command_line(tmp_path, monkeypatch, capsys):
    path = saved_checkpoint(tmp_path / "x.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["pytorch-lightning_version"]
    checkpoints.seal(checkpoint)
    torch.save(checkpoint, path)
    code, line = one_line_error(monkeypatch, capsys, ["test", "-c", TINY, *QUIET, f"--ckpt_path={path}"])
    assert code == 2 and "not a Lightning checkpoint (no 'pytorch-lightning_version')" in line


# ---------------------------------------------------------------------- load_from_checkpoint, Lightning's own loading
@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"garbage"), "not a readable checkpoint"),
    (lambda p: p.write_bytes(b""), "empty file, not a checkpoint"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: os.mkfifo(p), r"is a named pipe \(FIFO\)"),
    (lambda p: None, "no such file"),
])
def test_load_from_checkpoint_refuses_unusable_files_in_one_line(tmp_path, make, message):
    path = tmp_path / "x.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=f"checkpoint_path {path}: {message}"):
        TracerModule.load_from_checkpoint(str(path))


@pytest.mark.e2e
def test_a_trainer_never_given_to_guard_loading_refuses_a_damaged_file_in_one_line(tmp_path):
    module = TracerModule(engine=__import__("tracer_pl.engines.fake", fromlist=["FakeEngine"]).FakeEngine())
    data = ReasoningDataModule(test="reasoning_gym:basic_arithmetic?size=2", batch_size=2)
    (tmp_path / "bad.ckpt").write_bytes(b"")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointError, match="bad.ckpt: empty file, not a checkpoint"):
        trainer.test(module, data, ckpt_path=str(tmp_path / "bad.ckpt"))


# ---------------------------------------------------------------------- the training file by another name
@pytest.mark.parametrize("name", ["link", "dot", "absolute", "copy"])
def test_the_same_training_file_by_another_name_is_the_same_data(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_bytes(GSM.read_bytes())
    saved = ReasoningDataModule(train="train.jsonl", batch_size=2).resume_settings()
    other = {"link": "link.jsonl", "dot": "./train.jsonl", "absolute": str(tmp_path / "train.jsonl"),
             "copy": "elsewhere/train.jsonl"}[name]
    if name == "link":
        os.symlink("train.jsonl", "link.jsonl")
    if name == "copy":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere/train.jsonl").write_bytes(GSM.read_bytes())
    checkpoints.check_data(saved, ReasoningDataModule(train=other, batch_size=2).resume_settings())  # no error
    (tmp_path / "train.jsonl").write_bytes(GSM.read_bytes()[: -200])  # now another content under any name
    if name == "copy":
        (tmp_path / "elsewhere/train.jsonl").write_bytes(b"")
    with pytest.raises(ConfigError, match="^--data.train(_file_sha256)?: the checkpoint was saved with"):
        checkpoints.check_data(saved, ReasoningDataModule(train=other, batch_size=2).resume_settings())


# ---------------------------------------------------------------------- exact resume within the first of two epochs
class SigkillDuringBatch3(L.Callback):
    """Kills this process with SIGKILL when the third training batch starts (after the checkpoint of batch 2)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == 3:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.e2e
@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_a_run_killed_in_its_first_epoch_resumes_exactly_over_two_epochs(tmp_path, monkeypatch):
    from tests.training.test_reliability import ARGS, assert_same_training_state, final_state

    run = ["fit", "-c", TINY, *ARGS, "--trainer.logger=false", "--trainer.max_epochs=2",
           "--trainer.limit_train_batches=3"]
    (tmp_path / "straight").mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    build_cli(run)
    straight = final_state(tmp_path / "straight")
    assert straight["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 2

    killed = tmp_path / "killed"
    killed.mkdir()
    child = subprocess.run([sys.executable, "-m", "tracer_pl.cli", *run,
                            f"--trainer.callbacks+={__name__}.SigkillDuringBatch3"],
                           cwd=killed, env=child_env({**os.environ, "OMP_NUM_THREADS": "1"}),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert final_state(killed)["ReasoningDataModule"]["consumed"] == 4  # batch 2 of epoch 1 was saved

    monkeypatch.chdir(killed)
    build_cli([*run, "--ckpt_path=last"])
    assert_same_training_state(straight, final_state(killed))
