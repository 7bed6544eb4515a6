"""The adapters a ``fit`` exports: what their model cards say about the run, and an opt-in push to the Hub.

:func:`export_adapters` is what ``TracerModule.on_train_end`` runs: the policy saves each role's adapter to
``<log_dir>/adapters/<role>``, and a policy whose ``save_adapters`` takes a ``run`` (the Hugging Face one) also
gets the run's :func:`run_summary` for the model cards (:mod:`tracer_pl.engines.hf.export`).

:class:`PushAdapters` uploads those folders to the Hugging Face Hub when the fit ends, one repository per role.
It is off unless named among the trainer's callbacks::

    trainer:
      callbacks:
        - class_path: tracer_pl.training.export.PushAdapters
          init_args:
            repo_prefix: my-user/tracer-smollm2     # the proposer goes to my-user/tracer-smollm2-proposer
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

from tracer_pl.errors import ConfigError

if TYPE_CHECKING:
    from tracer_pl.engines.hf.export import RunSummary

_OFF = {"1", "ON", "YES", "TRUE"}
_TRAIN = ("accuracy", "tokens_per_problem", "calls_per_problem")
_EVAL = ("accuracy", "correction", "preservation", "tokens_per_problem", "calls_per_problem")


def export_adapters(module: Any, directory: str | Path) -> dict[str, Path]:
    """Save every role's adapter under ``directory``, with the run's :func:`run_summary` when the policy takes it."""
    save = module.policy.save_adapters
    if "run" in inspect.signature(save).parameters:
        return save(directory, run=run_summary(module))
    return save(directory)


def run_summary(module: Any) -> RunSummary:
    """What the model cards say about the run: roles, settings, steps, data and the metrics at the end of ``fit``."""
    from tracer_pl.engines.hf.export import RunSummary

    trainer = module.trainer
    gspo, dialogue, backbone = module.gspo_config, module.dialogue_config, module.backbone_config
    objective = "GSPO" if gspo.importance_level == "sequence" else "GRPO"
    method = "TRACER" if module.algorithm == "tracer" else f"single-agent {objective} (baseline)"
    settings: dict[str, Any] = {"group size G": gspo.group_size}
    if module.algorithm == "tracer":
        settings["rounds"] = dialogue.rounds
        if dialogue.schedule:
            settings["schedule"] = list(dialogue.schedule)
    datamodule = getattr(trainer, "datamodule", None)
    settings.update({
        "objective": f"{objective} ({gspo.importance_level}-level importance ratio)",
        "learning rate": gspo.lr,
        "optimizer steps per group": gspo.steps_per_group,
        "training batches": trainer.fit_loop.epoch_loop.batch_progress.total.processed,
        "problems per batch": getattr(datamodule, "batch_size", None),
        "processes": trainer.world_size,
        "sampling temperature": backbone.temperature,
        "max new tokens": backbone.max_new_tokens,
    })
    return RunSummary(
        base_model=backbone.name,
        method=method,
        roles={role.name: _role_text(role, module.algorithm) for role in module.roles},
        optimizer_steps=_optimizer_steps(module.trained_roles, trainer.optimizers),
        settings={label: value for label, value in settings.items() if value is not None},
        data=_data_sources(datamodule),
        metrics=_final_metrics(trainer.callback_metrics, [role.name for role in module.roles]),
    )


def _role_text(role: Any, algorithm: str) -> str:
    """The role class's summary line, and what its seat decides in the dialogue."""
    lazy = ("LazyInstance_", "_LazyInitBaseClass")  # jsonargparse's lazy_instance wraps the role's class
    cls = next(c for c in type(role).__mro__ if not c.__name__.startswith(lazy))
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`").strip()
    if algorithm != "tracer":
        return summary + (" In this run it answered alone (no dialogue, no controllers)." if role.proposes else "")
    if role.proposes:
        turn = ("In each of its rounds its controller decides whether to keep the pending answer or to refresh it "
                "with a new solution from this adapter.")
    else:
        turn = ("In each of its rounds its controller decides whether it stays silent or speaks; its verdict moves "
                "the vote on the pending answer.")
    return f"{summary} {turn}".strip()


def _optimizer_steps(trained: list[str], optimizers: list[Any]) -> dict[str, int]:
    """Adam's step count per trained role (its optimizers are in the order of ``trained``; resumed runs included)."""
    steps = {}
    for role, optimizer in zip(trained, optimizers):
        counts = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
        steps[role] = max(counts, default=0)
    return steps


def _data_sources(datamodule: Any) -> dict[str, list[str]]:
    sources = {"train": [datamodule.train] if getattr(datamodule, "train", None) else [],
               "val": list(getattr(datamodule, "val", None) or []),
               "test": list(getattr(datamodule, "test", None) or [])}
    return {split: [str(s) for s in items] for split, items in sources.items() if items}


def _final_metrics(logged: Mapping[str, Any], roles: list[str]) -> dict[str, float]:
    """The run's headline metrics: training accuracy and cost, each seat's controller, evaluations' accuracy."""
    kept = {}
    for key, value in logged.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] == "train":
            keep = parts[1] in _TRAIN
        elif len(parts) == 3 and parts[0] == "controller":
            keep = parts[1] in roles and (parts[2] == "avg_regret" or parts[2].startswith("p_"))
        elif len(parts) == 3 and parts[0] in ("val", "test"):
            keep = parts[2] == "accuracy" or ("@" not in parts[1] and parts[2] in _EVAL)
        else:
            keep = False
        if keep:
            kept[key] = float(value)
    return kept


class PushAdapters(L.Callback):
    """Push each role's exported adapter folder to the Hugging Face Hub when ``fit`` ends.

    Role ``R`` goes to the model repository ``<repo_prefix>-R`` (created when missing); the token is read from
    the environment variable ``token_env``. A missing token is refused when ``fit`` starts, before anything is
    trained. A run stopped by SIGTERM exports its adapters but does not push them; push later with
    :func:`tracer_pl.engines.hf.export.push_adapters`.

    Args:
        repo_prefix: ``<user or organisation>/<name>``.
        token_env: The environment variable that holds a Hugging Face token with write access.
        private: Create missing repositories as private.

    Raises:
        ConfigError: ``repo_prefix`` is not ``<owner>/<name>``; at the start of ``fit``, no token in
            ``token_env`` or ``HF_HUB_OFFLINE`` set.
    """

    def __init__(self, repo_prefix: str, token_env: str = "HF_TOKEN", private: bool = True) -> None:
        from tracer_pl.engines.hf.export import check_repo_prefix

        try:
            check_repo_prefix(repo_prefix)
        except ConfigError as error:
            raise ConfigError(f"PushAdapters: {error}") from None
        self.repo_prefix = repo_prefix
        self.token_env = token_env
        self.private = private
        self.pushed: dict[str, str] = {}  # role -> repository id, after fit

    def token(self) -> str:
        """The token from the environment.

        Raises:
            ConfigError: No token in ``token_env``, or the Hub is switched off (``HF_HUB_OFFLINE``).
        """
        if os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFF:
            raise ConfigError("PushAdapters: HF_HUB_OFFLINE is set, so the adapters cannot be pushed; unset it or "
                              "remove the callback")
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise ConfigError(f"PushAdapters: no Hugging Face token in ${self.token_env}; set it to a token with "
                              "write access, or remove the callback")
        return token

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.token()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After ``on_train_end`` exported the adapters: push them (process 0 only)."""
        folders = getattr(pl_module, "exported_adapters", None)
        if not trainer.is_global_zero or not folders:
            return
        from tracer_pl.engines.hf.export import push_adapters

        self.pushed = push_adapters(folders, self.repo_prefix, token=self.token(), private=self.private)
        for role, repo_id in self.pushed.items():
            print(f"tracer-pl: pushed the {role} adapter to https://huggingface.co/{repo_id}")


__all__ = ["PushAdapters", "export_adapters", "run_summary"]
