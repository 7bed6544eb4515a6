"""``TracerModule``: the Lightning layer that wires the dialogue, the controllers and GSPO to one backbone.

The dialogue's seats are the proposer, the reviewer and any ``extra_roles``: each gets its own adapter,
controller, optimizer and metric keys. Manual optimization, one Adam per trained role adapter. A training step
plays the dialogues of a batch of problems; inside it, every speaking turn of a trained role runs that role's
GSPO step (``gspo_step``) before the fresh utterance is sampled, and the controllers are updated from the
values of both actions -- the order of TRACER §3. Validation and test play the dialogues without any update.
"""

from __future__ import annotations

import importlib.util
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.strategies import ParallelStrategy
from torchmetrics.aggregation import MeanMetric

from tracer_pl.baselines import single_agent_rollouts
from tracer_pl.core.agent import Agent, Completion, Messages
from tracer_pl.core.controllers import Controller, ControllerConfig
from tracer_pl.core.dialogue import Dialogue, DialogueConfig, DialogueResult, play
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer, Reviewer, Role
from tracer_pl.core.seats import Seat, agent_bundles, turn_order
from tracer_pl.engines.base import BackboneConfig, Engine
from tracer_pl.engines.hf import HFEngine
from tracer_pl.errors import ConfigError
from tracer_pl.keys import SKIPPED_NONFINITE, seat_key
from tracer_pl.training import checkpoints
from tracer_pl.training.callbacks import StepProgress
from tracer_pl.training.distributed import TracerDDPStrategy, gather_objects, is_distributed
from tracer_pl.training.evaluation import EvaluationConfig, Evaluator, evaluate
from tracer_pl.training.export import export_adapters
from tracer_pl.training.gspo_update import GSPOUpdate
from tracer_pl.training.metrics import decision_metrics, group_metrics, regret_bound_terms, worst_average_regret
from tracer_pl.training.rebuild import module_settings


class TracerModule(L.LightningModule):
    """TRACER: a proposer and a reviewer LoRA adapter on one frozen base, regret-matching controllers, GSPO.

    Args:
        backbone: The base model and adapters.
        proposer: The proposing role (any :class:`~tracer_pl.core.roles.Proposer` subclass, by ``class_path``).
        reviewer: The reviewing role (any :class:`~tracer_pl.core.roles.Reviewer` subclass, by ``class_path``).
        extra_roles: Further seats, each a role with a name of its own (a :class:`~tracer_pl.core.roles.Proposer` or
            :class:`~tracer_pl.core.roles.Reviewer` subclass, by ``class_path``): each gets its own adapter,
            controller (``controllers.seats``), GSPO step and metrics. ``dialogue.schedule`` gives them rounds.
        dialogue: Rounds, schedule, counterfactual values and evaluation decoding.
        gspo: The group size G, the learning rate and the clipped objective of each role's GSPO step.
        controllers: Regret-matching variant, state parts and the fixed/frozen ablations.
        train_proposer: Train the proposer adapter with GSPO (``false``: the "no proposer GSPO" ablation).
        train_reviewer: Train the reviewer adapter with GSPO.
        eval_seed: Seed of the RNG that samples the average strategies in validation and test.
        evaluation: The method ``validate``/``test`` run: TRACER or a baseline on the same adapters and problems.
        engine: What builds, runs and trains the model (:mod:`tracer_pl.engines.base`): ``HFEngine`` (transformers and
            peft, the default) or any :class:`~tracer_pl.engines.base.Engine` subclass, by ``class_path``.
        algorithm: ``tracer`` trains the dialogue; ``single_agent`` is the single-agent baseline: the proposer
            alone samples ``gspo.group_size`` answers per problem in one call and takes one policy step on
            them -- GSPO, or GRPO with ``gspo.importance_level: token``. No reviewer, no controllers.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008 - frozen-in-practice config defaults
        proposer: Proposer = lazy_instance(Proposer),  # noqa: B008
        reviewer: Reviewer = lazy_instance(Reviewer),  # noqa: B008
        extra_roles: list[Role] | None = None,
        dialogue: DialogueConfig = DialogueConfig(),  # noqa: B008
        gspo: GSPOConfig = GSPOConfig(),  # noqa: B008
        controllers: ControllerConfig = ControllerConfig(),  # noqa: B008
        train_proposer: bool = True,
        train_reviewer: bool = True,
        eval_seed: int = 1234,
        evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
        algorithm: Literal["tracer", "single_agent"] = "tracer",
        engine: Engine = lazy_instance(HFEngine),  # noqa: B008
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the adapters, not the frozen base
        dialogue, gspo = _moved_group_settings(dialogue, gspo)
        self.backbone_config = backbone
        self.dialogue_config = dialogue
        self.gspo_config = gspo
        self.controller_config = controllers
        self.proposer, self.reviewer = proposer, reviewer
        self.extra_roles = list(extra_roles or [])
        self.engine = engine
        self.algorithm = algorithm
        if algorithm == "single_agent":
            train_reviewer = False
        self._seat_roles = self._build_seats(dialogue)
        extras = {role.name for role in self.extra_roles}
        self.trained_roles = [r.name for r in self._seat_roles
                              if (algorithm == "tracer" if r.name in extras else
                                  train_proposer if r.proposes else train_reviewer)]
        self.eval_seed = eval_seed
        self.evaluation = evaluation
        validate(self)
        self.seat_controllers = build_controllers(controllers, self.roles, bundles=dialogue.num_agents > 2)
        self.proposer_controller, self.reviewer_controller = self.seat_controllers[:2]
        self.policy: Any = None  # built by the engine in configure_model
        self.gspo_update: GSPOUpdate | None = None  # the GSPO step of every trained role, once there is a policy
        self.evaluator = Evaluator(evaluation, eval_seed)
        self.train_accuracy = MeanMetric()
        self.eval_metrics = torch.nn.ModuleDict()
        self.exported_adapters: dict[str, Path] = {}  # role -> folder, after fit
        self.last_step_statistics: dict[str, float] = {}  # GSPO steps, skips and means of the last training step
        self._pending_rng: tuple[Any, Any] | None = None  # a resumed run's sampling RNG, set before its 1st batch
        self.save_hyperparameters({  # plain data, so checkpoints load with torch.load(weights_only=True)
            "backbone": asdict(backbone), "dialogue": asdict(dialogue), "gspo": asdict(gspo),
            "controllers": asdict(controllers), "proposer": checkpoints.role_settings(proposer),
            "reviewer": checkpoints.role_settings(reviewer),
            "extra_roles": {r.name: checkpoints.role_settings(r) for r in self.extra_roles},
            "train_proposer": train_proposer,
            "train_reviewer": train_reviewer, "eval_seed": eval_seed, "evaluation": asdict(evaluation),
            "algorithm": algorithm, "engine": type(engine).__qualname__,
        })

    # ------------------------------------------------------------------ model and optimizers
    def configure_model(self) -> None:
        """Build the policy (base model, one adapter per role) with the engine (once; before fit/test)."""
        if self.policy is not None:
            return
        try:
            self.policy = self.engine.build(self.backbone_config, [role.name for role in self.roles])
        except OSError as error:  # transformers: no such directory, hub id or files, hub switched off
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            name = self.backbone_config.name
            raise ConfigError(f"--model.backbone.name {name!r}: cannot load the model ({reason})") from None
        self.hparams["sampling"] = self.policy.sampling_settings()  # logged with the hyperparameters
        self.gspo_update = GSPOUpdate(
            self.gspo_config, self.policy, backward=self.manual_backward,
            clip_gradients=lambda optimizer, norm: self.clip_gradients(
                optimizer, gradient_clip_val=norm, gradient_clip_algorithm="norm"),
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One Adam per trained role, over that role's adapter parameters only (owned by :class:`GSPOUpdate`)."""
        assert self.gspo_update is not None, "configure_model builds the policy first"
        return self.gspo_update.build_optimizers(self.trained_roles)

    def _build_seats(self, dialogue: DialogueConfig) -> list[Role]:
        """The seats' roles; with ``dialogue.num_agents > 2`` the agent bundles, whose schedule the dialogue takes."""
        if dialogue.num_agents == 2:
            return [self.proposer, self.reviewer, *self.extra_roles]
        if self.extra_roles:
            raise ConfigError("--model.extra_roles: not with --model.dialogue.num_agents > 2 (each agent already "
                              "has a proposer and a reviewer seat)")
        if dialogue.schedule is not None:
            raise ConfigError("--model.dialogue.schedule: not with --model.dialogue.num_agents > 2 (the agents "
                              "take the rounds in turn)")
        roles, schedule = agent_bundles(self.proposer, self.reviewer, dialogue.num_agents, dialogue.rounds)
        self.dialogue_config = replace(dialogue, schedule=schedule)
        return roles

    @property
    def roles(self) -> tuple[Role, ...]:
        """Every seat's role: the proposer, the reviewer, then ``extra_roles``.

        With ``dialogue.num_agents > 2``, the agent bundles' seats (:func:`~tracer_pl.core.seats.agent_bundles`).
        """
        return tuple(self._seat_roles)

    @property
    def controllers(self) -> tuple[Controller, ...]:
        """Every seat's controller, in the order of :attr:`roles`."""
        return tuple(self.seat_controllers)

    @property
    def seats(self) -> list[Seat]:
        """The dialogue's seats: every role with its controller."""
        return [Seat(role, controller) for role, controller in zip(self.roles, self.seat_controllers)]

    def on_fit_start(self) -> None:
        """Transformers loads models in eval mode; training forwards run in train mode (generation switches)."""
        check_strategy(self.trainer.strategy)
        self.policy.train()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are lists of text problems: nothing to move (the policy puts its tensors on its device)."""
        return batch

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Sequence[Problem], batch_idx: int) -> dict[str, Any]:
        """TRACER on a batch: every round played by :func:`~tracer_pl.core.dialogue.play_round` (§2-§3).

        Each trained seat's learning step is its GSPO update; after every round the controllers' updates of all
        processes are applied (data parallelism). Returns ``{"records": [DialogueRecord, ...]}``, which
        callbacks receive as ``outputs``.
        """
        update = self._gspo()
        optimizers = self.optimizers()
        update.use_optimizers(dict(zip(self.trained_roles, optimizers if isinstance(optimizers, list)
                                       else [optimizers])))
        if self.algorithm == "single_agent":
            result = self._single_agent_step(batch)
        else:
            result = self._play_training(batch, {role: partial(update.step, role) for role in self.trained_roles})
        self.last_step_statistics = update.statistics.pop()
        self._log_training(result, self.last_step_statistics)
        return {"records": result.records}

    def _play_training(self, batch: Sequence[Problem], learn: dict[str, Callable[..., None]]) -> DialogueResult:
        """The batch's training dialogues, in lockstep or one problem after another.

        ``dialogue.order: one_at_a_time`` (the released code's order) plays each problem's whole dialogue in turn.
        """
        games = ([self._dialogue(batch, training=True)] if self.dialogue_config.order == "lockstep"
                 else [self._dialogue([problem], training=True) for problem in batch])
        rounds = sum(len(game.round_seats) for game in games)
        played = itertools.count(1)
        self._report_progress(StepProgress(rounds=rounds))

        def after_round() -> None:
            self._sync_controllers()
            self._report_progress(StepProgress(rounds_done=next(played), rounds=rounds))

        results = [play(game, learn, after_round=after_round) for game in games]
        return DialogueResult(records=[r for result in results for r in result.records],
                              groups=[g for result in results for g in result.groups])

    def _gspo(self) -> GSPOUpdate:
        if self.gspo_update is None:
            raise RuntimeError("TracerModule has no policy yet: Lightning calls configure_model before training")
        return self.gspo_update

    def _single_agent_step(self, batch: Sequence[Problem]) -> DialogueResult:
        """The single-agent baseline: G proposals per problem, one policy update on them."""
        result = single_agent_rollouts(batch, self.policy, self.proposer, group_size=self.gspo_config.group_size,
                                       min_reward_std=self.gspo_config.min_reward_std)
        self._gspo().step(self.proposer.name, result.groups)
        return result

    def _report_progress(self, progress: StepProgress) -> None:
        """Hand ``progress`` to each callback with an ``on_step_progress`` method (the progress bar)."""
        trainer = self._trainer
        if trainer is None:
            return
        for callback in trainer.callbacks:
            show = getattr(callback, "on_step_progress", None)
            if callable(show):
                show(trainer, self, progress)

    def _sync_controllers(self) -> None:
        """Apply every process's controller updates of the round, in process order (data parallelism)."""
        for controller in self.controllers:
            controller.flush(gather_objects)

    def _log_training(self, result: DialogueResult, statistics: dict[str, float]) -> None:
        records = result.records
        self.train_accuracy.update(torch.tensor([float(r.correct) for r in records]))
        metrics = dict(statistics)
        metrics.update(group_metrics(result.groups, [r.name for r in self.roles]))
        if self.algorithm == "tracer":
            metrics.update(decision_metrics(records, self.controllers))
        metrics["train/accuracy_batch"] = sum(r.correct for r in records) / len(records)
        metrics["train/tokens_per_problem"] = sum(r.tokens for r in records) / len(records)
        metrics["train/completion_tokens_per_problem"] = sum(r.completion_tokens for r in records) / len(records)
        metrics["train/calls_per_problem"] = sum(r.calls for r in records) / len(records)
        if self.algorithm == "tracer":
            in_lockstep = len(records) if self.dialogue_config.order == "lockstep" else 1
            metrics.update(regret_bound_terms(in_lockstep * self.trainer.world_size, self.dialogue_config))
        for controller in self.controllers if self.algorithm == "tracer" else ():
            metrics[seat_key("controller", controller.name, "avg_regret")] = worst_average_regret(controller)
        nonfinite = sum(t.nonfinite_values for r in records for t in r.turns)
        if nonfinite:
            metrics[SKIPPED_NONFINITE] = float(nonfinite)
        self.log_dict(metrics, batch_size=len(records))
        self.log("train/accuracy", self.train_accuracy.compute(), prog_bar=True, batch_size=len(records))
        self.log("train/tokens", metrics["train/tokens_per_problem"], prog_bar=True, batch_size=len(records))

    def _dialogue(self, batch: Sequence[Problem], *, training: bool) -> Dialogue:
        """A training :class:`~tracer_pl.core.dialogue.Dialogue` of the batch over this module's seats.

        In data-parallel training the controllers record their updates and apply every process's at the end of
        each round (:meth:`_sync_controllers`), so the tables stay identical on all processes.
        """
        if training and is_distributed():
            for controller in self.controllers:
                controller.defer()
        return Dialogue(list(batch), self.policy, self.seats, config=self.dialogue_config, training=training,
                        group_size=self.gspo_config.group_size, min_reward_std=self.gspo_config.min_reward_std)

    def on_train_end(self) -> None:
        """Export each role's adapter in the peft format to ``<log_dir>/adapters/<role>``, with a model card each.

        A debug run (``fast_dev_run``) exports nothing, as it saves no checkpoint.
        """
        if self.trainer.fast_dev_run:  # a debug run leaves nothing behind
            return
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapters"  # collective: all ranks
        if self.trainer.is_global_zero:
            self.exported_adapters = export_adapters(self, directory)

    # ------------------------------------------------------------------ validation and test
    def validation_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_step(self, stage: str, batch: Sequence[Problem], dataloader_idx: int) -> None:
        """The evaluator's records of the batch, each metric logged as a mean over the epoch.

        TRACER is played one protocol at a time (the evaluator's RNGs are per protocol, so the records are those of
        one call with every protocol) so that the progress bar can count the problems done within the batch; the
        first protocol's dataset name has no suffix, the others' ``@<protocol>``, as ``EvaluationConfig`` says.
        """
        self.policy.check_prompts(batch, self.roles)
        name = self._dataset_name(stage, dataloader_idx)
        protocols = list(self.evaluation.protocols) if self.evaluation.method == "tracer" else [None]
        progress = StepProgress(problems=len(batch) * len(protocols))
        self._report_progress(progress)

        def after_call() -> None:
            nonlocal progress
            progress = replace(progress, calls=progress.calls + 1)
            self._report_progress(progress)

        agent = _ReportingAgent(self.policy, after_call)
        for i, protocol in enumerate(protocols):
            played = self.evaluator.play(batch, agent, self.seats, self.dialogue_config,
                                         None if protocol is None else [protocol])
            for suffix, records in played:
                self._log_eval(stage, name + (suffix if i == 0 else f"@{protocol}"), records)
            progress = replace(progress, problems_done=progress.problems_done + len(batch))
            self._report_progress(progress)

    def _log_eval(self, stage: str, name: str, records: list[Any]) -> None:
        """Keep a dataset's records in the evaluator and log each of its metrics as a mean over the epoch."""
        for key, samples in self.evaluator.add(stage, name, records, self.controllers).items():
            if key not in self.eval_metrics:
                self.eval_metrics[key] = MeanMetric().to(self.device)
            tracker = self.eval_metrics[key]
            tracker.update(torch.tensor(samples, dtype=torch.float32))
            self.log(key, tracker, on_step=False, on_epoch=True, batch_size=len(samples),
                     add_dataloader_idx=False, prog_bar=key.endswith("/accuracy") and "@" not in key,
                     metric_attribute=f"eval_metrics.{key}")

    def on_test_epoch_start(self) -> None:
        self.evaluator.start()

    def on_validation_epoch_start(self) -> None:
        self.evaluator.start()

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def _end_eval(self, stage: str) -> None:
        """Log the speak rates per controller state; write the per-problem records as JSONL."""
        for key, rate in self.evaluator.state_rates().items():
            self.log(key, rate, add_dataloader_idx=False, rank_zero_only=True)
        if self.trainer.sanity_checking:
            return
        suffix = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""
        self.evaluator.write_records(Path(self.trainer.log_dir or self.trainer.default_root_dir), stage, suffix)

    def _dataset_name(self, stage: str, dataloader_idx: int) -> str:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, f"{stage}_names", None)
        return names[dataloader_idx] if names else f"set{dataloader_idx}"

    def evaluate(self, datamodule: L.LightningDataModule, *, trainer: L.Trainer | None = None,
                 stage: Literal["test", "val"] = "test", ckpt_path: str | None = None) -> dict[str, float]:
        """Evaluate this module on ``datamodule``'s test sets from Python, writing what ``tracer-pl test`` writes.

        See :func:`tracer_pl.training.evaluation.evaluate`.
        """
        return evaluate(self, datamodule, trainer=trainer, stage=stage, ckpt_path=ckpt_path)

    # ------------------------------------------------------------------ checkpoints
    def setup(self, stage: str) -> None:
        """Route the checkpoint Lightning loads for the stage through the command line's checks.

        ``trainer.fit``/``test``/``validate(ckpt_path=...)`` then refuse an unusable file (damaged, empty, foreign,
        a named pipe) with a one-line :class:`~tracer_pl.errors.CheckpointError` instead of torch's exceptions
        (:func:`~tracer_pl.training.checkpoints.guard_loading`; ``setup`` runs before the checkpoint is read).
        """
        checkpoints.guard_loading(self.trainer)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, **overrides: Any) -> TracerModule:  # type: ignore[override]
        """The module a checkpoint was trained as, ready to evaluate or generate.

        It is rebuilt from the settings the checkpoint records, with its adapters and controllers loaded.
        ``overrides`` replace recorded arguments (``evaluation=EvaluationConfig(method="cot")``, ``engine=...``).
        The file passes the command line's checks first: a missing, empty, damaged or foreign file, or one that is
        not a regular file, is a one-line :class:`~tracer_pl.errors.CheckpointError` naming it. ``map_location``,
        ``hparams_file`` and ``strict`` (Lightning's arguments) are not used: the adapters load on the policy's
        device, and the frozen base is never in a checkpoint.
        """
        checkpoint = checkpoints.read(checkpoint_path, flag="checkpoint_path")
        where = f"checkpoint_path {checkpoints.shown(checkpoint_path)}"
        settings = module_settings(checkpoint.get("hyper_parameters") or {}, where)
        module = cls(**{**settings, **overrides})
        module.configure_model()
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=False)
        return module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable (adapter) weights; add controllers and the sampling RNG for an exact resume."""
        trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if _is_saved(k, trainable)}
        checkpoint["tracer"] = {
            "controllers": {c.name: c.state_dict() for c in self.controllers},
            "torch_rng": torch.random.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        checkpoint[checkpoints.RUN_KEY] = checkpoints.run_settings(self.trainer)
        checkpoints.seal(checkpoint)  # last: the checksum covers everything above

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint's adapters fit this policy, then restore controllers and the RNG.

        The run's settings come from its config and command line, not from the checkpoint, so a checkpoint
        trained with another base model, LoRA shape or set of roles is refused here, naming the difference.
        Checkpoints saved before the model attribute was named ``policy`` (keys ``backbone.*``) are read too.
        """
        checkpoints.verify(checkpoint, "checkpoint")
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {_renamed(key): value for key, value in state.items()}
        self._check_compatible(checkpoint)
        tracer = checkpoint.get("tracer")
        if tracer is None:
            return
        for controller in self.controllers:
            controller.load_state_dict(tracer["controllers"][controller.name])
        self._pending_rng = (tracer["torch_rng"], tracer.get("cuda_rng"))

    def _check_compatible(self, checkpoint: dict[str, Any]) -> None:
        """The adapters' settings always; when resuming ``fit``, every setting not safe to change (checkpoints.py)."""
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        checkpoints.check_model(checkpoint, self.hparams, resuming=resuming)
        if resuming:
            checkpoints.check_run(checkpoint, self.trainer)
        if self.policy is not None:
            prefix = "policy."
            self.policy.check_adapter_keys({k[len(prefix):] for k in checkpoint["state_dict"] if k.startswith(prefix)})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Refuse prompts that cannot fit; restore the sampling RNG of a resumed run right before its first batch.

        Restoring it here rather than when the checkpoint loads keeps whatever Lightning draws in between (the
        data loader's base seed) from shifting the generation samples of a resumed run.
        """
        self.policy.check_prompts(batch, self.roles)
        pending = self._pending_rng
        if pending is None:
            return
        torch.random.set_rng_state(pending[0])
        if pending[1] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(pending[1])
        self._pending_rng = None


class _ReportingAgent:
    """The policy as the evaluation's agent, calling ``after_call`` when each ``generate`` call returns.

    Only ``generate`` passes through (the dialogue and the baselines use nothing else), unchanged.
    """

    def __init__(self, policy: Agent, after_call: Callable[[], None]) -> None:
        self.policy = policy
        self.after_call = after_call

    def generate(self, role: str, prompts: Sequence[Messages], num_samples: int | Sequence[int] = 1, *,
                 greedy: bool = False) -> list[list[Completion]]:
        completions = self.policy.generate(role, prompts, num_samples, greedy=greedy)
        self.after_call()
        return completions


def check_strategy(strategy: Any) -> None:
    """Refuse a strategy that cannot train TracerModule, naming ``tracer_ddp``.

    One device needs no strategy of its own; several processes need :class:`TracerDDPStrategy`. Lightning's DDP
    wraps the module in ``DistributedDataParallel`` (which fails at the first GSPO step, even on one process) and
    the sharding strategies do not support manual optimization.

    Raises:
        ConfigError: for any parallel strategy other than ``tracer_ddp``.
    """
    if isinstance(strategy, ParallelStrategy) and not isinstance(strategy, TracerDDPStrategy):
        raise ConfigError(f"--trainer.strategy: {type(strategy).__name__} cannot train TracerModule (its model wrapper "
                          "breaks the hand-taken GSPO steps); use --trainer.strategy tracer_ddp, or the default (auto) "
                          "on one device")


def build_controllers(config: ControllerConfig, roles: Sequence[Role], *, bundles: bool = False) -> list[Controller]:
    """One controller per seat, named after its role.

    ``--model.controllers.seats`` sets the modes of extra seats; with agent ``bundles`` every proposing seat takes
    ``controllers.proposer``'s mode, every reviewing seat ``controllers.reviewer``'s.
    """
    try:
        return config.build([(role.name, role.proposes) for role in roles], bundles=bundles)
    except ValueError as error:
        raise ConfigError(f"--model.controllers.seats: {error}") from None


def _moved_group_settings(dialogue: DialogueConfig, gspo: GSPOConfig) -> tuple[DialogueConfig, GSPOConfig]:
    """Read ``dialogue.group_size``/``min_reward_std`` (deprecated) into ``gspo``, where they live now."""
    moved = {name: getattr(dialogue, name) for name in ("group_size", "min_reward_std")
             if getattr(dialogue, name) is not None}
    if not moved:
        return dialogue, gspo
    warnings.warn(f"--model.dialogue.{'/'.join(moved)} moved to --model.gspo.{'/'.join(moved)}; the old place is "
                  "read for one more release", FutureWarning, stacklevel=3)
    return replace(dialogue, group_size=None, min_reward_std=None), replace(gspo, **moved)


def _renamed(key: str) -> str:
    """A state-dict key of a checkpoint saved when the policy attribute was named ``backbone``."""
    return "policy." + key.removeprefix("backbone.") if key.startswith("backbone.") else key


def _is_saved(key: str, trainable: set[str]) -> bool:
    """Checkpoints keep the policy's trainable weights (adapters) and all outside the policy, never the base."""
    return not key.startswith("policy.") or key in trainable


def validate(module: TracerModule) -> None:
    """Refuse impossible combinations of settings before any model is loaded, naming the CLI flag.

    Each setting's own range is checked where it is declared (the config dataclasses' ``__post_init__``); only
    checks that involve several settings live here.
    """
    names = [role.name for role in module.roles]
    checks = [
        (module.backbone_config.precision != "4bit" or importlib.util.find_spec("bitsandbytes") is not None,
         "--model.backbone.precision",
         '4bit needs bitsandbytes, which is not installed: pip install "tracer-pl[qlora]" (or use fp32/bf16)'),
        (module.algorithm == "tracer" or module.proposer.name in module.trained_roles,
         "--model.train_proposer", "must be true with algorithm single_agent (it trains the proposer alone)"),
    ]
    for ok, flag, message in checks:
        if not ok:
            raise ConfigError(f"{flag} {message}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--model.reviewer/--model.extra_roles: every role needs a name of its own (one adapter "
                          f"each), found {names}; set a class attribute name on the role class")
    unknown = sorted(set(module.controller_config.seats) - set(names[2:]))
    if unknown:
        raise ConfigError(f"--model.controllers.seats names {unknown}, which are no extra role; the extra roles are "
                          f"{names[2:]}")
    if module.algorithm == "tracer":
        try:
            turn_order(module.roles, module.dialogue_config.schedule, module.dialogue_config.rounds)
        except ValueError as error:
            raise ConfigError(f"--model.dialogue.schedule: {error}") from None


__all__ = ["BackboneConfig", "EvaluationConfig", "TracerModule"]
