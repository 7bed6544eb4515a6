"""Checkpoint files a run must refuse, by what they are: special files, foreign structures, damaged archives."""

import contextlib
import json
import os
import socket
import sys

import lightning as L
import pytest
import torch

from tests.helpers.paths import TINY
from tests.helpers.special_files import no_hang
from tracer_pl.cli import build_cli, main
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.errors import CheckpointError
from tracer_pl.training import checkpoints
from tracer_pl.training.module import TracerModule


@contextlib.contextmanager
def special_file(tmp_path, kind):
    """A path that is not a regular file, of ``kind``; yields the path and the message expected after it."""
    path = tmp_path / "last.ckpt"
    if kind == "fifo":
        os.mkfifo(path)
        with no_hang(path):
            yield path, r"is a named pipe \(FIFO\), not a checkpoint file; give the path of a .ckpt file"
    elif kind == "pipe":  # what /dev/stdin is when a pipe feeds the process: held open by a writer, never ending
        read_end, write_end = os.pipe()
        try:
            yield f"/proc/self/fd/{read_end}", r"is a named pipe \(FIFO\), not a checkpoint file"
        finally:
            os.close(read_end)
            os.close(write_end)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        try:
            yield path, r"is a socket, not a checkpoint file"
        finally:
            server.close()
    elif kind in ("/dev/zero", "/dev/null"):
        yield kind, r"is a character device, not a checkpoint file"
    elif kind == "link to /dev/zero":
        os.symlink("/dev/zero", path)
        yield path, r"is a character device, not a checkpoint file"
    elif kind == "link loop":
        os.symlink(path, path)
        yield path, r"a symbolic link loop, not a checkpoint file"
    elif kind == "broken link":
        os.symlink(tmp_path / "moved.ckpt", path)
        yield path, r"a broken symbolic link \(to .*moved.ckpt\)"
    elif kind == "directory":
        path.mkdir()
        yield path, r"is a directory; expected a .ckpt file"
    elif kind == "empty path":
        yield "", r"an empty path; give the path of a .ckpt file"


SPECIAL = ["fifo", "pipe", "socket", "/dev/zero", "/dev/null", "link to /dev/zero", "link loop", "broken link",
           "directory"]


@pytest.mark.parametrize("check", ["read", "check_file", "for_lightning"])
@pytest.mark.parametrize("kind", [*SPECIAL, "empty path"])
def test_what_is_not_a_regular_file_is_refused_before_anything_reads_it(tmp_path, check, kind):
    with special_file(tmp_path, kind) as (path, message), \
            pytest.raises(CheckpointError, match=f"^--ckpt_path( {path})?: {message}") as error:
        getattr(checkpoints, check)(path)
    assert "\n" not in str(error.value)


def sealed(**parts):
    checkpoint = {"state_dict": {"policy.w": torch.zeros(2)}, "pytorch-lightning_version": L.__version__, **parts}
    checkpoints.seal(checkpoint)  # the checksum holds: whoever edited the file sealed it again
    return checkpoint


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        (sealed(state_dict=5), r"'state_dict' is int, expected a mapping"),
        (sealed(state_dict=[torch.zeros(1)]), r"'state_dict' is list, expected a mapping"),
        (sealed(state_dict={"policy.w": "text"}), r"'state_dict' entry 'policy.w' is not a named tensor"),
        (sealed(state_dict={1: torch.zeros(1)}), r"'state_dict' entry 1 is not a named tensor"),
        (sealed(hyper_parameters=[1, 2]), r"'hyper_parameters' is list, expected a mapping"),
        (sealed(tracer_run=["trainer.max_epochs"]), r"'tracer_run' is list, expected a mapping"),
        (sealed(tracer=5), r"'tracer' is int, expected a mapping"),
        (sealed(tracer={"controllers": 5}), r"'tracer' holds no controller states"),
        (sealed(tracer={"controllers": {"proposer": [1]}}), r"'tracer' holds no controller states"),
    ],
)
def test_a_checkpoint_whose_parts_are_not_what_loading_reads_is_refused(tmp_path, checkpoint, message):
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=f"--ckpt_path {path}: not a usable checkpoint \\({message}"):
        checkpoints.read(path)


def test_a_checkpoint_lightning_cannot_restore_is_refused_where_lightning_loads(tmp_path):
    path = tmp_path / "foreign.ckpt"
    checkpoint = {"state_dict": {"policy.w": torch.zeros(2)}}
    checkpoints.seal(checkpoint)
    torch.save(checkpoint, path)
    assert checkpoints.read(path)["state_dict"].keys() == {"policy.w"}  # readable, and verified
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint \\(no 'pytorch-lightning_version'\\)"):
        checkpoints.for_lightning(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "not a readable checkpoint \\(not a torch.save archive"),
        (lambda data: data[:-22], "not a readable checkpoint \\(not a torch.save archive"),  # no end of directory
        (lambda data: b"\x00" * 64 + data, "not a readable checkpoint"),
        (lambda data: data.replace(torch.ones(64).numpy().tobytes(), torch.zeros(64).numpy().tobytes()),
         "damaged checkpoint: its content does not match the checksum"),
    ],
)
def test_damaged_archives_are_refused_in_one_line(tmp_path, damage, message):
    path = tmp_path / "damaged.ckpt"
    torch.save(sealed(state_dict={"policy.w": torch.ones(64)}), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"--ckpt_path {path}: {message}") as error:
        checkpoints.read(path)
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


@pytest.mark.parametrize("command", ["fit", "test", "validate"])
@pytest.mark.usefixtures("run_dir")
def test_a_named_pipe_given_as_ckpt_path_ends_the_command_instead_of_blocking(tmp_path, command):
    os.mkfifo(tmp_path / "pipe.ckpt")
    refused = "--ckpt_path pipe.ckpt: is a named pipe \\(FIFO\\), not a checkpoint file"
    with no_hang(tmp_path / "pipe.ckpt"), pytest.raises(CheckpointError, match=refused):
        build_cli([command, "-c", TINY, "--trainer.logger=false", "--trainer.limit_val_batches=1.0",
                   "--ckpt_path=pipe.ckpt"])


@pytest.mark.usefixtures("run_dir")
def test_a_device_given_as_ckpt_path_is_one_line_on_the_console(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tracer-pl", "test", "-c", TINY, "--trainer.logger=false",
                                      "--ckpt_path=/dev/zero"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tracer-pl")]
    assert exit_info.value.code == 2
    assert err == ["tracer-pl: error: --ckpt_path /dev/zero: is a character device, not a checkpoint file; give "
                   "the path of a .ckpt file (reading this one could block or never end)"]


# ---------------------------------------------------------------------- Lightning's own loading, guarded
class GuardedModule(TracerModule):
    """A module that guards its trainer's loading from its ``setup`` hook, which runs before a checkpoint loads."""

    def setup(self, stage):
        checkpoints.guard_loading(self.trainer)


def fake_module(cls=TracerModule):
    return cls(backbone=BackboneConfig(max_new_tokens=1), engine=FakeEngine())


def problems(tmp_path):
    from tracer_pl.data.datamodule import ReasoningDataModule

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {4 - i}?", "answer": "#### 4"}) + "\n" for i in range(2)))
    return ReasoningDataModule(test=str(data), eval_batch_size=2)


def trainer(tmp_path):
    return L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "out", enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file, not a checkpoint"),
        (lambda p: p.write_bytes(b"garbage" * 10), "not a readable checkpoint"),
        (lambda p: torch.save({"state_dict": {}}, p), "not a Lightning checkpoint \\(no 'pytorch-lightning_version'"),
        (lambda p: torch.save(sealed(tracer=5), p), "not a usable checkpoint"),
        (os.mkfifo, "is a named pipe"),
    ],
)
def test_guarded_loading_gives_direct_trainer_calls_the_command_line_errors(tmp_path, make, message):
    path = tmp_path / "given.ckpt"
    make(path)
    with no_hang(path) if path.is_fifo() else contextlib.nullcontext(), \
            pytest.raises(CheckpointError, match=f"--ckpt_path {path}: {message}") as error:
        trainer(tmp_path).test(fake_module(GuardedModule), datamodule=problems(tmp_path), ckpt_path=str(path))
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_guard_loading_is_applied_once_and_leaves_other_plugins_alone(tmp_path):
    from lightning.pytorch.plugins.io import CheckpointIO

    guarded = trainer(tmp_path)
    checkpoints.guard_loading(guarded)
    first = guarded.strategy.checkpoint_io.load_checkpoint
    checkpoints.guard_loading(guarded)
    assert guarded.strategy.checkpoint_io.load_checkpoint is first

    class OwnFormat(CheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            pass

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return {"mine": path}

        def remove_checkpoint(self, path):
            pass

    own = L.Trainer(accelerator="cpu", logger=False, plugins=[OwnFormat()], enable_progress_bar=False)
    checkpoints.guard_loading(own)
    assert own.strategy.checkpoint_io.load_checkpoint("x") == {"mine": "x"}


def test_a_file_name_with_a_line_break_stays_on_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"--ckpt_path .*two\\nlines.ckpt: no such file") as error:
        checkpoints.read(tmp_path / "two\nlines.ckpt")
    assert "\n" not in str(error.value)
