"""A module's settings read back from a checkpoint, for ``TracerModule.load_from_checkpoint``.

A checkpoint records its module's settings as plain data (``torch.load(weights_only=True)`` reads it): each config
dataclass as a dictionary, each role as its class path and init arguments (reward functions by import path), the
engine by class name. :func:`module_settings` turns them back into the objects ``TracerModule`` takes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tracer_pl.core.controllers import ControllerConfig
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.core.roles import Proposer, Reviewer, Role
from tracer_pl.engines.base import BackboneConfig, Engine
from tracer_pl.errors import CheckpointError
from tracer_pl.training.evaluation import EvaluationConfig

CONFIGS = {"backbone": BackboneConfig, "dialogue": DialogueConfig, "gspo": GSPOConfig,
           "controllers": ControllerConfig, "evaluation": EvaluationConfig}
"""The config dataclasses a checkpoint records as dictionaries, by ``TracerModule`` argument."""

PLAIN = ("train_proposer", "train_reviewer", "eval_seed", "algorithm")
"""Arguments a checkpoint records as they are."""

ENGINES = {"HFEngine": "tracer_pl.engines.hf.HFEngine", "FakeEngine": "tracer_pl.engines.fake.FakeEngine",
           "VLLMEngine": "tracer_pl.engines.vllm.VLLMEngine"}
"""The engines a checkpoint can name, by the class name it records."""


def module_settings(hparams: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``TracerModule``'s arguments from a checkpoint's ``hyper_parameters`` (``where`` names it in errors).

    Raises:
        CheckpointError: a recorded role or engine cannot be rebuilt (a checkpoint saved before roles' settings
            were recorded, with extra roles; an engine of your own: pass ``engine=`` yourself).
    """
    settings: dict[str, Any] = {}
    for name, config in CONFIGS.items():
        if isinstance(hparams.get(name), Mapping):
            known = {f.name for f in fields(config)}
            settings[name] = config(**{k: v for k, v in hparams[name].items() if k in known})
    settings.update({name: hparams[name] for name in PLAIN if name in hparams})
    settings["proposer"] = _role(hparams.get("proposer"), Proposer, where)
    settings["reviewer"] = _role(hparams.get("reviewer"), Reviewer, where)
    extra = hparams.get("extra_roles") or {}
    if not isinstance(extra, Mapping):  # class names only: saved before the roles' settings were recorded
        raise CheckpointError(f"{where}: records its extra roles {list(extra)} by class name only; build the "
                              "TracerModule with them and load the checkpoint with tracer-pl test, or trainer.test")
    settings["extra_roles"] = [_role(spec, None, where) for spec in extra.values()] or None
    settings["engine"] = _engine(str(hparams.get("engine", "HFEngine")), where)
    return settings


def _role(spec: Any, default: type[Role] | None, where: str) -> Role:
    """A role from its recorded class path and init arguments (a bare class name: the default class)."""
    if not isinstance(spec, Mapping):
        if default is None:
            raise CheckpointError(f"{where}: a role recorded as {spec!r} cannot be rebuilt")
        return default()
    cls = _imported(str(spec.get("class_path")), where)
    arguments = dict(spec.get("init_args") or {})
    if arguments.get("extra_rewards"):
        arguments["extra_rewards"] = [_imported(path, where) for path in arguments["extra_rewards"]]
    return cls(**arguments)


def _engine(name: str, where: str) -> Engine:
    if name not in ENGINES:
        raise CheckpointError(f"{where}: was trained with the engine {name}, which cannot be rebuilt from its name; "
                              "pass engine=... to load_from_checkpoint")
    return _imported(ENGINES[name], where)()


def _imported(path: str, where: str) -> Any:
    """The object at the import path ``package.module.Name``."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise CheckpointError(f"{where}: names {path}, which cannot be imported here") from None
