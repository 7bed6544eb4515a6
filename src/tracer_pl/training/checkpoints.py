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

import hashlib
import math
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from tracer_pl.errors import CheckpointError, ConfigError

CHECKSUM_KEY = "tracer_checksum"
RUN_KEY = "tracer_run"
"""Where the run-level settings (``trainer.max_epochs``) are recorded in a checkpoint."""

ADAPTER_SETTINGS = ("model.backbone.name", "model.backbone.lora_r", "model.backbone.lora_alpha",
                    "model.backbone.target_modules")
"""Settings a checkpoint's adapters depend on: checked for every use of a checkpoint (fit, validate, test)."""

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


def read(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint file, with a one-line :class:`CheckpointError` for every way it can be unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"--ckpt_path {path}: is a directory; expected a .ckpt file (e.g. {path}/last.ckpt)")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise CheckpointError(f"--ckpt_path {path}: cannot read ({error.strerror})") from None
    if size == 0:
        raise CheckpointError(f"--ckpt_path {path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"--ckpt_path {path}: not a readable checkpoint (not a torch.save archive; damaged, "
                              "truncated or another kind of file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"--ckpt_path {path}: not a readable checkpoint (it holds objects other than tensors and "
                              "plain data, which are refused: loading them could run code)") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"--ckpt_path {path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path}: not a Lightning checkpoint (no 'state_dict')")
    verify(checkpoint, f"--ckpt_path {path}")
    return checkpoint


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


def refuse_differences(found: list[tuple[str, Any, Any]], what: str) -> None:
    """Raise one ConfigError naming the first changed flag (and how many others changed)."""
    if not found:
        return
    flag, saved, current = found[0]
    others = f" (and {len(found) - 1} more: {', '.join(f[0] for f in found[1:])})" if len(found) > 1 else ""
    raise ConfigError(
        f"--{flag}: the checkpoint was {what} with {saved!r}, this run has {current!r}{others}; use the "
        "checkpoint's setting, or start a new run in another --trainer.default_root_dir"
    )


def check_model(checkpoint: Mapping[str, Any], hparams: Mapping[str, Any], resuming: bool) -> None:
    """Refuse a checkpoint whose model settings differ from ``hparams`` (all of them when ``resuming``)."""
    saved = flatten(checkpoint.get("hyper_parameters") or {}, "model")
    current = flatten(hparams, "model")
    refuse_differences(differences(saved, current, ADAPTER_SETTINGS), "trained")
    if resuming:
        refuse_differences(differences(saved, current), "trained")


def run_settings(trainer: Any) -> dict[str, Any]:
    """The trainer settings that change what a resumed run computes."""
    return {"trainer.max_epochs": trainer.max_epochs}


def check_run(checkpoint: Mapping[str, Any], trainer: Any) -> None:
    """Refuse resuming with trainer settings other than the checkpoint's (see :func:`run_settings`)."""
    refuse_differences(differences(checkpoint.get(RUN_KEY) or {}, run_settings(trainer)), "saved")


def check_data(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse resuming with data settings (or a data file) other than the checkpoint's."""
    refuse_differences(differences(saved, current), "saved")
