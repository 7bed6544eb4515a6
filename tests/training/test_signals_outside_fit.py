"""Signals and faults around a run: SIGTERM or Ctrl-C during a test, Ctrl-C during fit, a full disk, a read-only
run directory. Each ends in one line and a non-zero exit, with nothing half-written."""

import errno
import os
import signal
import sys

import lightning as L
import pytest
import torch

from tests.helpers.paths import TINY
from tracer_pl.cli import build_cli, main

FAKE = "--model.engine=tracer_pl.engines.fake.FakeEngine"
FIT = ["fit", "-c", TINY, FAKE, "--trainer.enable_progress_bar=false"]
TEST = ["test", "-c", TINY, FAKE, "--trainer.enable_progress_bar=false", "--data.eval_batch_size=1"]


def run(monkeypatch, capsys, argv):
    """``tracer-pl argv``: its exit code and its stderr (no traceback in it)."""
    monkeypatch.setattr(sys, "argv", ["tracer-pl", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return stop.value.code, err


class SignalAtBatch2(L.Callback):
    """Sends this process ``SIGNAL`` when the second training or test batch starts."""

    SIGNAL = signal.SIGTERM

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == 2:
            os.kill(os.getpid(), self.SIGNAL)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            os.kill(os.getpid(), self.SIGNAL)


class CtrlCAtBatch2(SignalAtBatch2):
    SIGNAL = signal.SIGINT


def stage_files(log_dir):
    return sorted(p.name for p in log_dir.iterdir() if p.name.startswith(("test_", ".test_")))


@pytest.mark.e2e
@pytest.mark.parametrize("callback, name", [(SignalAtBatch2, "SIGTERM"), (CtrlCAtBatch2, r"Ctrl-C (SIGINT)")])
@pytest.mark.usefixtures("run_dir")
def test_a_signal_during_test_stops_it_in_one_line_with_exit_143_and_writes_nothing(
        tmp_path, monkeypatch, capsys, restore_signal_handlers, callback, name):
    build_cli([*FIT, "--trainer.limit_train_batches=1"])
    code, err = run(monkeypatch, capsys, [*TEST, "--ckpt_path=last",
                                          f"--trainer.callbacks+={__name__}.{callback.__name__}"])
    assert code == 143
    line = err.strip().splitlines()[-1]
    assert line == (f"tracer-pl: stopped by {name} during test after 2 batches: no metrics or records were written; "
                    "run the test again (exit code 143)")
    assert stage_files(tmp_path / "runs/tiny/logs/version_1") == []  # no test_metrics.json, no records
    build_cli([*TEST, "--ckpt_path=last"])  # the next test runs whole
    assert stage_files(tmp_path / "runs/tiny/logs/version_2") == [
        "test_metrics.json", "test_records_basic_arithmetic.jsonl", "test_records_basic_arithmetic@argmax.jsonl"]


@pytest.mark.e2e
@pytest.mark.usefixtures("run_dir")
def test_ctrl_c_during_fit_finishes_the_batch_saves_and_exports_as_sigterm_does(
        tmp_path, monkeypatch, capsys, restore_signal_handlers):
    code, err = run(monkeypatch, capsys, [*FIT, f"--trainer.callbacks+={__name__}.CtrlCAtBatch2"])
    assert code == 143
    assert ("tracer-pl: stopped by Ctrl-C (SIGINT): saved runs/tiny/checkpoints/last.ckpt after batch 2; resume "
            "with the same command and --ckpt_path last") in err
    saved = torch.load(tmp_path / "runs/tiny/checkpoints/last.ckpt", weights_only=True)
    assert saved["ReasoningDataModule"]["consumed"] == 4  # batch 2 (of 2 problems) finished and was saved
    assert (tmp_path / "runs/tiny/logs/version_0/adapters/proposer").is_dir()
    assert signal.getsignal(signal.SIGINT) is restore_signal_handlers["SIGINT"]  # Ctrl-C is Ctrl-C again


def fail_writes_under(directory, monkeypatch, after=0, name=""):
    """Make ``os.write`` to a file under ``directory`` whose name holds ``name`` fail with ENOSPC after ``after``
    bytes: the disk filling up while that file is written."""
    real = os.write
    written = {}

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(directory)) and name in os.path.basename(target):
            allowed = max(after - written.get(target, 0), 0)
            if allowed < len(data):
                if allowed:
                    written[target] = written.get(target, 0) + real(fd, bytes(data[:allowed]))
                    return allowed
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the written file by /proc/self/fd")
@pytest.mark.usefixtures("run_dir")
def test_a_full_disk_during_test_is_one_line_and_leaves_no_cut_off_records(tmp_path, monkeypatch, capsys):
    build_cli([*FIT, "--trainer.limit_train_batches=1"])
    fail_writes_under(tmp_path / "runs/tiny/logs", monkeypatch, after=100, name="test_records")
    code, err = run(monkeypatch, capsys, [*TEST, "--ckpt_path=last"])
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert "test_records_basic_arithmetic.jsonl: cannot write the records (No space left on device)" in line
    assert stage_files(tmp_path / "runs/tiny/logs/version_1") == []  # neither a cut-off file nor a temporary


def test_an_os_error_where_a_library_writes_is_one_line(monkeypatch, capsys):
    from tracer_pl.cli import TracerCLI

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/tiny/logs/version_1/metrics.csv")

    monkeypatch.setattr(TracerCLI, "test", full)
    code, err = run(monkeypatch, capsys, [*TEST, "--trainer.logger=false"])
    assert code == 2 and err.strip().splitlines()[-1] == (
        "tracer-pl: error: runs/tiny/logs/version_1/metrics.csv: cannot write or read (No space left on device); "
        "free space or choose another --trainer.default_root_dir")


def read_only(directory, monkeypatch):
    """Make ``directory`` read-only as a read-only mount is, for every user (root included)."""
    real_mkdir, real_open = os.mkdir, os.open

    def refused(path):
        return os.path.abspath(path).startswith(str(directory))

    def mkdir(path, *args, **kwargs):
        if refused(path) and not os.path.isdir(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("argv, where", [
    (FIT, "runs/tiny/checkpoints: cannot write checkpoints there"),
    ([*FIT, "--trainer.callbacks=null"], "runs/tiny: cannot write the run's files there"),
    (TEST, "runs/tiny: cannot write the run's files there"),
])
@pytest.mark.usefixtures("run_dir")
def test_a_read_only_run_directory_is_one_line_naming_it_before_the_model_loads(tmp_path, monkeypatch, capsys, argv,
                                                                                 where):
    from tracer_pl.training.module import TracerModule

    def load(self):
        raise AssertionError("the model was loaded before the run directory was checked")

    monkeypatch.setattr(TracerModule, "configure_model", load)
    (tmp_path / "runs").mkdir()
    read_only(tmp_path / "runs", monkeypatch)
    code, err = run(monkeypatch, capsys, argv)
    (line,) = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert code == 2 and where in line and "(Read-only file system)" in line
    assert "choose another --trainer.default_root_dir" in line


def test_ctrl_c_before_the_stage_runs_is_one_line_with_exit_130(monkeypatch, capsys):
    from tracer_pl.cli import TracerCLI

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the model loads, before the trainer handles signals

    monkeypatch.setattr(TracerCLI, "fit", interrupted)
    code, err = run(monkeypatch, capsys, [*FIT, "--trainer.logger=false"])
    assert code == 130 and err.strip().splitlines()[-1] == (
        "tracer-pl: stopped by Ctrl-C before the run started; nothing was trained or written")
