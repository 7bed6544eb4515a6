"""Checkpoint integrity and compatibility: what a checkpoint file must be before a run uses it.

Integrity. Every checkpoint saved by :class:`~tracer_pl.training.module.TracerModule` carries ``tracer_checksum``, a
SHA-256 digest of everything else in it (tensor bytes, dtypes, shapes, keys and plain values, walked in a fixed
order), computed when it is saved. A file is read with ``torch.load(weights_only=True)`` and its digest recomputed:
a flipped bit either breaks the file's structure or changes the digest, and is refused either way.

Compatibility. Resuming ``fit`` from a checkpoint continues *that* experiment, so every training setting must be
the one it was saved with. The check is default-deny: each model hyperparameter stored in the checkpoint
(``model.gspo.group_size``, ``model.controllers.state_vote``, ...) and each setting of the training run
recorded beside it (``trainer.max_epochs``, the data settings and the data file's digest, see
:meth:`~tracer_pl.data.ReasoningDataModule.state_dict`) is compared with this run's, and a difference is refused
naming the flag -- except the settings in :data:`SAFE_TO_CHANGE`, which do not change what the checkpoint means.
A setting added to a config dataclass is therefore checked without any change here; making one safe to change is
one line in :data:`SAFE_TO_CHANGE`. ``test``/``validate`` only check what the adapters need to fit the backbone
(:data:`ADAPTER_SETTINGS`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import math
import os
import pickle
import stat
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from tracer_pl.errors import CheckpointError, ConfigError

CHECKSUM_KEY = "tracer_checksum"
RUN_KEY = "tracer_run"
"""Where the run-level settings (``trainer.max_epochs``) are recorded in a checkpoint."""

ADAPTER_SETTINGS = ("model.backbone.name", "model.backbone.lora_r", "model.backbone.lora_alpha",
                    "model.backbone.target_modules")
"""Settings a checkpoint's adapters depend on: checked for every use of a checkpoint (fit, validate, test)."""

STATE_SETTINGS = "model.controllers.state_"
"""The prefix of the settings that define the controllers' states (``state_vote``, ``state_time``, any ``state_*``
added later): a checkpoint's regret tables hold only the states its definition makes, so these are checked for
every use of a checkpoint too (a test with another definition would meet states the tables never had and play
uniform strategies there)."""

VOTE_CLIP = "model.controllers.vote_clip"
"""The vote clip is part of the state definition too: a state ``+3`` exists only without a clip of 2."""

SAFE_TO_CHANGE = (
    "model.evaluation",  # what validate/test run; never used in training
    "model.eval_seed",  # the RNG of evaluation only
    "model.dialogue.eval_greedy",  # decoding in evaluation only
    "model.controllers.argmax_tie",  # the argmax evaluation protocol only
    "model.engine",  # what generates: the adapters, optimizers and controllers mean the same under any engine
    "data.test", "data.val", "data.test_limit", "data.eval_batch_size",  # evaluation sets
    "data.on_bad_row",  # a bad row either stops the run or was never part of the stream
    # not recorded, so never compared: trainer.limit_train_batches (the data order does not depend on it),
    # logging and checkpoint frequency, devices' kind (accelerator)
)
"""Settings that may differ on resume; a prefix covers everything under it. One line per setting."""


# ---------------------------------------------------------------------- integrity
def state_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's content: tensors by dtype, shape and bytes, mappings in sorted key order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"M{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, float) and math.isnan(value):
        digest.update(b"Fnan")
    else:
        digest.update(f"{type(value).__name__}:{value!r}".encode())


def seal(checkpoint: dict[str, Any]) -> None:
    """Record the digest of everything in ``checkpoint`` under :data:`CHECKSUM_KEY` (the last step of a save)."""
    checkpoint.pop(CHECKSUM_KEY, None)
    checkpoint[CHECKSUM_KEY] = state_digest(checkpoint)


def verify(checkpoint: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose content does not match its recorded digest.

    A checkpoint without a digest (saved by another tool) is accepted: there is nothing to compare with.
    """
    recorded = checkpoint.get(CHECKSUM_KEY)
    if recorded is None:
        return
    actual = state_digest({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY})
    if actual != recorded:
        raise CheckpointError(f"{where}: damaged checkpoint: its content does not match the checksum recorded when "
                              "it was saved (a changed or corrupted file); use another checkpoint")


def shown(path: str | Path) -> str:
    """``path`` for a one-line message: a character that is not printable (a newline in a name) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(path))


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (``a named pipe (FIFO)``, ``a character device``, ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _refuse_kind(flag: str, path: Path, mode: int) -> CheckpointError:
    where = f"{flag} {shown(path)}"
    if stat.S_ISDIR(mode):
        return CheckpointError(f"{where}: is a directory; expected a .ckpt file (e.g. {shown(path / 'last.ckpt')})")
    return CheckpointError(f"{where}: is {file_kind(mode)}, not a checkpoint file; give the path of a .ckpt file "
                           "(reading this one could block or never end)")


@contextlib.contextmanager
def open_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> Iterator[BinaryIO]:
    """The checkpoint file at ``path``, open for reading, once it is known to be a non-empty ``torch.save`` archive.

    Only a regular file is opened for reading (symbolic links followed): a named pipe, a socket or a device
    (``/dev/zero``, ``/dev/stdin``) is refused by its kind, before anything reads from it, so nothing blocks. The
    file is opened without blocking and checked again on the open descriptor, so one swapped in meanwhile is
    refused too. Every refusal is a one-line :class:`CheckpointError` naming ``flag`` and what to give instead.
    """
    if not str(path):
        raise CheckpointError(f"{flag}: an empty path; give the path of a .ckpt file")
    path = Path(path)
    where = f"{flag} {shown(path)}"
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise CheckpointError(f"{where}: {_missing(path, error)}") from None
    if not stat.S_ISREG(mode):
        raise _refuse_kind(flag, path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise CheckpointError(f"{where}: cannot read ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse_kind(flag, path, info.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        try:
            first = handle.read(1)
            handle.seek(0)
        except OSError as error:
            raise CheckpointError(f"{where}: cannot read ({error.strerror or error})") from None
        if info.st_size == 0 or not first:
            raise CheckpointError(f"{where}: empty file, not a checkpoint")
        if not zipfile.is_zipfile(handle):
            raise CheckpointError(f"{where}: not a readable checkpoint (not a torch.save archive; damaged, "
                                  "truncated or another kind of file)")
        handle.seek(0)
        yield handle


def _missing(path: Path, error: OSError) -> str:
    """Why ``path`` cannot be found, in words."""
    if error.errno == errno.ELOOP:
        return "a symbolic link loop, not a checkpoint file"
    if isinstance(error, FileNotFoundError):
        return f"a broken symbolic link (to {shown(os.readlink(path))})" if path.is_symlink() else "no such file"
    return f"cannot read ({error.strerror or error})"


def check_file(path: str | Path, flag: str = "--ckpt_path") -> None:
    """Refuse a path that cannot hold a checkpoint (see :func:`open_checkpoint`), without loading it.

    Cheap, so a run can check its checkpoint before the model loads.
    """
    with open_checkpoint(path, flag):
        pass


def read(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """Load and verify a checkpoint file, with a one-line :class:`CheckpointError` for every way it can be unusable.

    The file is checked by :func:`open_checkpoint`, loaded with ``torch.load(weights_only=True)`` from the same
    open file, its checksum verified (:func:`verify`) and its parts checked to be what a module's
    ``on_load_checkpoint`` reads (:func:`check_structure`).
    """
    where = f"{flag} {shown(path)}"
    with open_checkpoint(path, flag) as handle:
        try:
            checkpoint = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(f"{where}: not a readable checkpoint (it holds objects other than tensors "
                                  "and plain data, which are refused: loading them could run code)") from None
        except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{where}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{where}: not a Lightning checkpoint (no 'state_dict')")
    verify(checkpoint, where)
    check_structure(checkpoint, where)
    return checkpoint


MAPPINGS = ("state_dict", "hyper_parameters", RUN_KEY, "tracer")
"""The parts of a checkpoint that are read as mappings when present (``state_dict`` always is)."""


def check_structure(checkpoint: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose parts are not of the types loading reads them as.

    Such a file was written by another tool, or edited and sealed again: ``state_dict`` must map names to
    tensors; the model's settings, the run's settings and TRACER's state must be mappings, and each of its
    controllers one mapping.
    """
    for key in MAPPINGS:
        if key in checkpoint and not isinstance(checkpoint[key], Mapping):
            raise CheckpointError(f"{where}: not a usable checkpoint ('{key}' is {type(checkpoint[key]).__name__}, "
                                  "expected a mapping); use a checkpoint saved by tracer-pl fit")
    wrong = next((k for k, v in checkpoint["state_dict"].items()
                  if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if wrong is not None:
        raise CheckpointError(f"{where}: not a usable checkpoint ('state_dict' entry {wrong!r} is not a named "
                              "tensor); use a checkpoint saved by tracer-pl fit")
    controllers = (checkpoint.get("tracer") or {}).get("controllers", {})
    if not isinstance(controllers, Mapping) or not all(isinstance(c, Mapping) for c in controllers.values()):
        raise CheckpointError(f"{where}: not a usable checkpoint ('tracer' holds no controller states); use a "
                              "checkpoint saved by tracer-pl fit")


def for_lightning(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """:func:`read`, and refuse what Lightning cannot restore: a checkpoint without ``pytorch-lightning_version``."""
    checkpoint = read(path, flag)
    if "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(f"{flag} {shown(path)}: not a Lightning checkpoint (no 'pytorch-lightning_version'); "
                              "use a checkpoint saved by tracer-pl fit")
    return checkpoint


KEYWORDS = ("best", "last", "hpc")
"""``ckpt_path`` values Lightning resolves itself (and ``registry``, ``registry:<name>``)."""


def is_local_file(ckpt_path: str | Path) -> bool:
    """Whether ``ckpt_path`` names a local file (not a Lightning keyword such as ``last``, nor a URL)."""
    if isinstance(ckpt_path, Path):
        return True
    text = str(ckpt_path)
    registry = text.lower() == "registry" or text.lower().startswith("registry:")
    return not (text in KEYWORDS or registry or "://" in text)


def guard_loading(trainer: Any) -> None:
    """Make every checkpoint ``trainer`` loads from a local file pass :func:`for_lightning` first.

    Lightning loads ``trainer.test(module, ckpt_path=...)`` (and ``fit``, ``validate``) with ``torch.load``
    before any hook of the module sees it, so a damaged, empty or foreign file would end in torch's exceptions
    (an ``UnpicklingError`` advising ``weights_only=False``, a bare ``EOFError``), and a named pipe would block.
    This routes the loading of the trainer's checkpoint plugin through :func:`for_lightning`, which gives the
    one-line :class:`CheckpointError` of the command line instead, and returns what it loaded (read once). A plugin that
    loads in its own way (not ``TorchCheckpointIO.load_checkpoint``) is left alone. Call it before the stage
    runs, or from a module's or callback's ``setup`` hook (which run before the checkpoint is restored).
    """
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    io = trainer.strategy.checkpoint_io
    if getattr(io, "_tracer_guarded", False) or type(io).load_checkpoint is not TorchCheckpointIO.load_checkpoint:
        return
    load = io.load_checkpoint

    def load_checkpoint(path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(path, (str, os.PathLike)) and is_local_file(path):
            return for_lightning(path)
        return load(path, *args, **kwargs)

    io.load_checkpoint = load_checkpoint
    io._tracer_guarded = True


# ---------------------------------------------------------------------- compatibility
def flatten(settings: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"dialogue": {"rounds": 5}}`` -> ``{"<prefix>.dialogue.rounds": 5}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def is_safe(flag: str) -> bool:
    """Whether ``flag`` (dotted, without ``--``) may change when resuming."""
    return any(flag == safe or flag.startswith(safe + ".") for safe in SAFE_TO_CHANGE)


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], flags: Iterable[str] | None = None
                ) -> list[tuple[str, Any, Any]]:
    """``(flag, saved, current)`` for every setting recorded in ``saved`` that ``current`` changes.

    Only ``flags`` are compared when given, else every recorded setting that is not :func:`is_safe`. A setting
    that only one side records is not compared: the checkpoint predates it, or this run derives it later (the
    model's ``sampling`` settings exist once the model is loaded, and are compared then).
    """
    names = list(flags) if flags is not None else [f for f in saved if not is_safe(f)]
    return [(f, saved[f], current[f]) for f in names if f in saved and f in current and saved[f] != current[f]]


RESUME_ADVICE = "use the checkpoint's setting, or start a new run in another --trainer.default_root_dir"
EVALUATION_ADVICE = "use the checkpoint's setting to evaluate it"


def refuse_differences(found: list[tuple[str, Any, Any]], what: str, advice: str = RESUME_ADVICE) -> None:
    """Raise one ConfigError naming the first changed flag, its old and new value (and how many others changed)."""
    if not found:
        return
    flag, saved, current = found[0]
    others = f" (and {len(found) - 1} more: {', '.join(f[0] for f in found[1:])})" if len(found) > 1 else ""
    raise ConfigError(f"--{flag}: the checkpoint was {what} with {_short(saved)}, this run has {_short(current)}"
                      f"{others}; {advice}")


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (a long system prompt stays readable)."""
    text = shown(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model(checkpoint: Mapping[str, Any], hparams: Mapping[str, Any], resuming: bool) -> None:
    """Refuse a checkpoint whose model settings differ from ``hparams`` (all of them when ``resuming``).

    Every use compares the adapters' settings (:data:`ADAPTER_SETTINGS`) and the controllers' state definition
    (:data:`STATE_SETTINGS`, :data:`VOTE_CLIP`); resuming ``fit`` compares every recorded setting that is not
    :data:`SAFE_TO_CHANGE`.
    """
    saved = flatten(checkpoint.get("hyper_parameters") or {}, "model")
    current = flatten(hparams, "model")
    always = [*ADAPTER_SETTINGS, VOTE_CLIP, *(flag for flag in saved if flag.startswith(STATE_SETTINGS))]
    refuse_differences(differences(saved, current, always), "trained", RESUME_ADVICE if resuming else
                       EVALUATION_ADVICE)
    if resuming:
        refuse_differences(differences(saved, current), "trained")


def role_settings(role: Any) -> dict[str, Any]:
    """What a role was built with, as plain data: its class and its init arguments, for the checkpoint to record.

    ``{"class_path": "tracer_pl.core.roles.Proposer", "init_args": {"system_prompt": ..., "reward_scale": 1.0,
    ...}}``. The init arguments are the parameters of the class's ``__init__`` (and of its bases' when it passes
    ``**kwargs`` on), read back from the role's attributes of the same names (so a default is recorded as the value
    in use); reward functions are recorded by their import path. A parameter the role keeps under no attribute of
    its name cannot be read back and is not recorded.
    """
    # a default role is jsonargparse's lazy instance, a class made at run time over the role's class: record that one
    mro = type(role).__mro__
    lazy = [i for i, k in enumerate(mro) if k.__module__.startswith("jsonargparse")]
    cls = mro[lazy[-1] + 1] if lazy else type(role)
    if lazy:  # its attributes exist once it is first used: read them from the instance it will become
        role = cls(**dict(role.lazy_get_init_args()))
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    init_args = {name: _plain(getattr(role, name)) for name in names if hasattr(role, name)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _plain(value: Any) -> Any:
    """``value`` as data a checkpoint holds under ``weights_only=True``: functions and classes by import path."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def run_settings(trainer: Any) -> dict[str, Any]:
    """The trainer settings that change what a resumed run computes."""
    return {"trainer.max_epochs": trainer.max_epochs}


def check_run(checkpoint: Mapping[str, Any], trainer: Any) -> None:
    """Refuse resuming with trainer settings other than the checkpoint's (see :func:`run_settings`)."""
    refuse_differences(differences(checkpoint.get(RUN_KEY) or {}, run_settings(trainer)), "saved")


TRAIN_FILE, TRAIN_DIGEST = "data.train", "data.train_file_sha256"


def check_data(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse resuming with data settings (or a data file) other than the checkpoint's.

    A local training file is the same file when its content is: with equal SHA-256 digests its path may be
    written another way (``./x.jsonl``, an absolute path, a link, a copy elsewhere).
    """
    found = differences(saved, current)
    if saved.get(TRAIN_DIGEST) is not None and saved.get(TRAIN_DIGEST) == current.get(TRAIN_DIGEST):
        found = [change for change in found if change[0] != TRAIN_FILE]
    refuse_differences(found, "saved")


# ---------------------------------------------------------------------- which file --ckpt_path names
def resolve(trainer: Any, ckpt_path: str | Path | None, fit: bool) -> str | Path | None:
    """The checkpoint file ``ckpt_path`` names: Lightning's keywords found here, or refused in one line.

    ``last``: the newest ``last*.ckpt`` in the directories of the trainer's checkpoint callbacks
    (:class:`~tracer_pl.training.callbacks.BatchCheckpoint`, or a ``ModelCheckpoint`` given a ``dirpath``); none yet
    is a fresh start for ``fit`` (None: a requeued job's first attempt) and an error otherwise; no such callback
    is an error (Lightning would train from scratch, or evaluate the untrained model). ``best``: the best model of
    the trainer's ``ModelCheckpoint``, an error without one. ``hpc``: the newest ``hpc_ckpt_<N>.ckpt`` of
    ``trainer.default_root_dir``, an error without one. Paths and ``registry`` are returned as they are.

    Raises:
        CheckpointError: naming ``--ckpt_path`` and what to give instead.
    """
    instead = "give the path of a checkpoint file"
    if ckpt_path == "last":
        directories = [Path(cb.dirpath) for cb in trainer.callbacks if getattr(cb, "dirpath", None)]
        found = [p for d in directories for p in checkpoints_named(d, "last*.ckpt")]
        if found:
            return str(max(found, key=lambda p: p.stat().st_mtime))
        if not directories:
            raise CheckpointError("--ckpt_path last: the trainer has no checkpoint callback to find the last "
                                  "checkpoint of (tracer_pl.training.callbacks.BatchCheckpoint in --trainer.callbacks, "
                                  f"as configs/tiny.yaml has); {instead}")
        if fit:
            return None
        raise CheckpointError(f"--ckpt_path last: no checkpoint in {shown(directories[0])} yet; {instead}")
    if ckpt_path == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", None)
        if not best:
            raise CheckpointError("--ckpt_path best: the trainer has no ModelCheckpoint that saved a best model in "
                                  f"this process; {instead}")
        return best
    if ckpt_path == "hpc":
        found = checkpoints_named(Path(trainer.default_root_dir), "hpc_ckpt_*.ckpt")
        numbered = [p for p in found if p.stem.removeprefix("hpc_ckpt_").isdigit()]
        if not numbered:
            raise CheckpointError(f"--ckpt_path hpc: no HPC checkpoint (hpc_ckpt_<N>.ckpt) in "
                                  f"{shown(trainer.default_root_dir)}; {instead}")
        return str(max(numbered, key=lambda p: int(p.stem.removeprefix("hpc_ckpt_"))))
    return ckpt_path


def checkpoints_named(directory: Path, pattern: str) -> list[Path]:
    """The regular files matching ``pattern`` in ``directory`` (none when it is not a directory)."""
    return [p for p in directory.glob(pattern) if p.is_file()] if directory.is_dir() else []
