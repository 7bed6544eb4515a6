"""``TracerModule``: the Lightning layer that wires the dialogue, the controllers and GSPO to one backbone.

The dialogue's seats are the proposer, the reviewer and any ``extra_roles``: each gets its own adapter,
controller, optimizer and metric keys. Manual optimization, one Adam per trained role adapter. A training step
plays the dialogues of a batch of problems; inside it, every speaking turn of a trained role runs that role's
GSPO step (``gspo_step``) before the fresh utterance is sampled, and the controllers are updated from the
values of both actions -- the order of TRACER §3. Validation and test play the dialogues without any update.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from torchmetrics.aggregation import MeanMetric

from tracer_pl import checkpoints, limits
from tracer_pl.baselines import single_agent_rollouts
from tracer_pl.controllers import Controller, ControllerConfig, EvalProtocol
from tracer_pl.dialogue import Dialogue, DialogueConfig, DialogueResult
from tracer_pl.distributed import (
    TracerDDPStrategy,
    gather_objects,
    is_distributed,
)
from tracer_pl.engine import BackboneConfig, Engine, HFEngine
from tracer_pl.errors import ConfigError
from tracer_pl.evaluation import EvaluationMixin
from tracer_pl.gspo import GSPOConfig
from tracer_pl.gspo_step import GSPOStepMixin
from tracer_pl.keys import SKIPPED_NONFINITE, seat_key
from tracer_pl.metrics import (
    decision_metrics,
    group_metrics,
    regret_bound_terms,
    worst_average_regret,
)
from tracer_pl.problem import Problem
from tracer_pl.roles import Proposer, Reviewer, Role
from tracer_pl.seats import Seat, turn_order


@dataclass
class EvaluationConfig:
    """What ``validate``/``test`` run on the trained adapters: TRACER's dialogue or a baseline.

    Args:
        method: ``tracer`` (the dialogue with average-strategy controllers), ``cot`` (one proposer call),
            ``majority_vote`` (self-consistency over ``samples`` sampled proposals) or ``debate`` (Du et al.:
            ``debate_agents`` proposers for ``debate_rounds`` rounds, final majority).
        samples: Proposals per problem for ``majority_vote``.
        debate_agents: Agents in ``debate``.
        debate_rounds: Rounds in ``debate``.
        protocols: For ``tracer``: how the controllers act, each protocol evaluated on the same problems --
            ``sample`` from or ``argmax`` of the average strategy (TRACER §2). The first one's metrics are
            logged as ``<stage>/<dataset>/<metric>``, the others' as ``<stage>/<dataset>@<protocol>/<metric>``.
    """

    method: Literal["tracer", "cot", "majority_vote", "debate"] = "tracer"
    samples: int = 10
    debate_agents: int = 3
    debate_rounds: int = 2
    protocols: list[EvalProtocol] = field(default_factory=lambda: ["sample", "argmax"])


class TracerModule(GSPOStepMixin, EvaluationMixin, L.LightningModule):
    """TRACER: a proposer and a reviewer LoRA adapter on one frozen base, regret-matching controllers, GSPO.

    Args:
        backbone: The base model and adapters.
        proposer: The proposing role (any :class:`~tracer_pl.roles.Proposer` subclass, by ``class_path``).
        reviewer: The reviewing role (any :class:`~tracer_pl.roles.Reviewer` subclass, by ``class_path``).
        extra_roles: Further seats, each a role with a name of its own (a :class:`~tracer_pl.roles.Proposer` or
            :class:`~tracer_pl.roles.Reviewer` subclass, by ``class_path``): each gets its own adapter,
            controller (``controllers.seats``), GSPO step and metrics. ``dialogue.schedule`` gives them rounds.
        dialogue: Rounds, group size, counterfactual values and evaluation protocol.
        gspo: Learning rate and the clipped objective of each role's GSPO step.
        controllers: Regret-matching variant, state parts and the fixed/frozen ablations.
        train_proposer: Train the proposer adapter with GSPO (``false``: the "no proposer GSPO" ablation).
        train_reviewer: Train the reviewer adapter with GSPO.
        eval_seed: Seed of the RNG that samples the average strategies in validation and test.
        evaluation: The method ``validate``/``test`` run: TRACER or a baseline on the same adapters and problems.
        engine: What builds, runs and trains the model (:mod:`tracer_pl.engine`): ``HFEngine`` (transformers and
            peft, the default) or any :class:`~tracer_pl.engine.Engine` subclass, by ``class_path``.
        algorithm: ``tracer`` trains the dialogue; ``single_agent`` is the single-agent baseline: the proposer
            alone samples ``dialogue.group_size`` answers per problem in one call and takes one policy step on
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
        self.backbone_config = backbone
        self.dialogue_config = dialogue
        self.gspo_config = gspo
        self.controller_config = controllers
        self.proposer, self.reviewer = proposer, reviewer
        self.extra_roles = list(extra_roles or [])
        self.engine = engine
        self.algorithm = algorithm
        extra = [(role, algorithm == "tracer") for role in self.extra_roles]
        if algorithm == "single_agent":
            train_reviewer = False
        self.trained_roles = [r.name for r, on in ((proposer, train_proposer), (reviewer, train_reviewer), *extra)
                              if on]
        self.eval_seed = eval_seed
        self.evaluation = evaluation
        validate(self)
        self.seat_controllers = build_controllers(controllers, self.roles)
        self.proposer_controller, self.reviewer_controller = self.seat_controllers[:2]
        self.backbone: Any = None
        self.train_accuracy = MeanMetric()
        self.eval_metrics = torch.nn.ModuleDict()
        self.exported_adapters: dict[str, Path] = {}  # role -> folder, after fit
        self._step_stats: dict[str, float] = {}  # counts of the current training step (GSPO steps, skips)
        self._step_means: dict[str, list[float]] = {}  # per-optimizer-step values, averaged when logged
        self._pending_rng: tuple[Any, Any] | None = None  # a resumed run's sampling RNG, set before its 1st batch
        self._eval_generators: dict[str, torch.Generator] = {}  # per evaluation protocol, reset every epoch
        self._eval_records: dict[str, list[dict[str, Any]]] = {}  # per dataset (and protocol), for the JSONL
        self._state_counts: dict[str, list[float]] = {}  # speaking decisions per controller state
        self.save_hyperparameters({  # plain data, so checkpoints load with torch.load(weights_only=True)
            "backbone": asdict(backbone), "dialogue": asdict(dialogue), "gspo": asdict(gspo),
            "controllers": asdict(controllers), "proposer": type(proposer).__qualname__,
            "reviewer": type(reviewer).__qualname__, "extra_roles": [type(r).__qualname__ for r in self.extra_roles],
            "train_proposer": train_proposer,
            "train_reviewer": train_reviewer, "eval_seed": eval_seed, "evaluation": asdict(evaluation),
            "algorithm": algorithm, "engine": type(engine).__qualname__,
        })

    # ------------------------------------------------------------------ model and optimizers
    def configure_model(self) -> None:
        """Build the policy (base model, one adapter per role) with the engine (once; before fit/test)."""
        if self.backbone is not None:
            return
        try:
            self.backbone = self.engine.build(self.backbone_config, [role.name for role in self.roles])
        except OSError as error:  # transformers: no such directory, hub id or files, hub switched off
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            name = self.backbone_config.name
            raise ConfigError(f"--model.backbone.name {name!r}: cannot load the model ({reason})") from None
        self.hparams["sampling"] = self.backbone.sampling_settings()  # logged with the hyperparameters

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One Adam per trained role, over that role's adapter parameters only."""
        return [
            torch.optim.Adam(self.backbone.role_parameters(role), lr=self.gspo_config.lr,
                             weight_decay=self.gspo_config.weight_decay)
            for role in self.trained_roles
        ]

    @property
    def roles(self) -> tuple[Role, ...]:
        """Every seat's role: the proposer, the reviewer, then ``extra_roles``."""
        return (self.proposer, self.reviewer, *self.extra_roles)

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
        if self.trainer.world_size > 1 and not isinstance(self.trainer.strategy, TracerDDPStrategy):
            raise ConfigError(
                f"--trainer.strategy: {type(self.trainer.strategy).__name__} cannot train TracerModule on "
                f"{self.trainer.world_size} processes; use --trainer.strategy tracer_ddp (see tracer_pl.distributed)"
            )
        self.backbone.train()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are lists of text problems: nothing to move (the backbone puts its tensors on its device)."""
        return batch

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Sequence[Problem], batch_idx: int) -> dict[str, Any]:
        """TRACER on a batch, round by round in the method's order (§2-§3).

        Returns ``{"records": [DialogueRecord, ...]}``, which callbacks receive as ``outputs``.
        """
        self._step_stats, self._step_means = {}, {}
        if self.algorithm == "single_agent":
            result = self._single_agent_step(batch)
            self._log_training(result)
            return {"records": result.records}
        dialogue = self._dialogue(batch, training=True)
        for round_index, seat in dialogue.schedule():
            current = dialogue.decide(round_index, seat)  # the seat's controller: speak or stay silent
            if seat.role.name in self.trained_roles:  # generation credit: GSPO on G scored candidates per speaker
                self.gspo_step(seat.role.name, dialogue.sample_candidates(current))
            dialogue.speak(current)  # fresh utterances from the updated policy (and counterfactual samples)
            dialogue.settle(current)  # controller credit: both actions valued, regrets updated
            self._sync_controllers(round_index)
        result = dialogue.result()
        self._log_training(result)
        return {"records": result.records}

    def _single_agent_step(self, batch: Sequence[Problem]) -> DialogueResult:
        """The single-agent baseline: G proposals per problem, one policy update on them."""
        result = single_agent_rollouts(batch, self.backbone, self.proposer, group_size=self.dialogue_config.group_size,
                                       min_reward_std=self.dialogue_config.min_reward_std)
        self.gspo_step(self.proposer.name, result.groups)
        return result

    def _sync_controllers(self, round_index: int) -> None:
        """Apply every process's controller updates of the round, in process order (data parallelism)."""
        for controller in self.controllers:
            controller.flush(gather_objects)

    def _count(self, key: str, amount: float) -> None:
        self._step_stats[key] = self._step_stats.get(key, 0.0) + amount

    def _average(self, key: str, value: float) -> None:
        """Record one value of a per-optimizer-step statistic; the step logs their mean."""
        self._step_means.setdefault(key, []).append(value)

    def _log_training(self, result: DialogueResult) -> None:
        records = result.records
        self.train_accuracy.update(torch.tensor([float(r.correct) for r in records]))
        metrics = dict(self._step_stats)
        metrics.update({key: sum(values) / len(values) for key, values in self._step_means.items()})
        metrics.update(group_metrics(result.groups, [r.name for r in self.roles]))
        if self.algorithm == "tracer":
            metrics.update(decision_metrics(records, self.controllers))
        metrics["train/accuracy_batch"] = sum(r.correct for r in records) / len(records)
        metrics["train/tokens_per_problem"] = sum(r.tokens for r in records) / len(records)
        metrics["train/completion_tokens_per_problem"] = sum(r.completion_tokens for r in records) / len(records)
        metrics["train/calls_per_problem"] = sum(r.calls for r in records) / len(records)
        if self.algorithm == "tracer":
            metrics.update(regret_bound_terms(len(records) * self.trainer.world_size, self.dialogue_config))
        for controller in self.controllers if self.algorithm == "tracer" else ():
            metrics[seat_key("controller", controller.name, "avg_regret")] = worst_average_regret(controller)
        nonfinite = sum(t.nonfinite_values for r in records for t in r.turns)
        if nonfinite:
            metrics[SKIPPED_NONFINITE] = float(nonfinite)
        self.log_dict(metrics, batch_size=len(records))
        self.log("train/accuracy", self.train_accuracy.compute(), prog_bar=True, batch_size=len(records))
        self.log("train/tokens", metrics["train/tokens_per_problem"], prog_bar=True, batch_size=len(records))

    def _dialogue(self, batch: Sequence[Problem], *, training: bool, protocol: EvalProtocol = "sample") -> Dialogue:
        """A :class:`~tracer_pl.dialogue.Dialogue` of the batch over this module's seats.

        In data-parallel training the controllers record their updates and apply every process's at the end of
        each round (:meth:`_sync_controllers`), so the tables stay identical on all processes.
        """
        if training and is_distributed():
            for controller in self.controllers:
                controller.defer()
        generator = None if training else self._eval_generators.get(protocol)
        return Dialogue(list(batch), self.backbone, self.seats, config=self.dialogue_config, training=training,
                        eval_generator=generator, eval_protocol=protocol)

    def on_train_end(self) -> None:
        """Export each role's adapter in the peft format to ``<log_dir>/adapters/<role>``."""
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapters"  # collective: all ranks
        if self.trainer.is_global_zero:
            self.exported_adapters = self.backbone.save_adapters(directory)

    def _check_prompts(self, batch: Sequence[Problem]) -> None:
        """Refuse, before generating, a problem whose dialogue cannot fit in the model's context (limits.py).

        Checked when the policy has a tokenizer, a chat template and a model config (the Hugging Face engine).
        """
        policy = self.backbone
        tokenizer, render = getattr(policy, "tokenizer", None), getattr(policy, "render", None)
        config = getattr(getattr(policy, "model", None), "config", None)
        if tokenizer is None or render is None or config is None:
            return
        limits.check_prompts(batch, self.roles, render,
                             lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                             self.backbone_config.max_new_tokens, getattr(config, "max_position_embeddings", None))

    # ------------------------------------------------------------------ checkpoints
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
        """Check that the checkpoint's adapters fit this backbone, then restore controllers and the RNG.

        The run's settings come from its config and command line, not from the checkpoint, so a checkpoint
        trained with another base model, LoRA shape or set of roles is refused here, naming the difference.
        """
        checkpoints.verify(checkpoint, "checkpoint")
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
        if self.backbone is None:
            return
        adapters = {k for k in checkpoint.get("state_dict", {}) if "lora_" in k}
        expected = {name for name, _ in self.named_parameters() if "lora_" in name}
        if adapters and adapters != expected:
            raise ConfigError(
                f"--model.proposer/--model.reviewer/--model.extra_roles: the checkpoint holds adapters for the roles "
                f"{_adapter_roles(adapters)}, this run has {_adapter_roles(expected)}; use the roles it was trained on"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Restore the sampling RNG of a resumed run right before its first batch.

        Restoring it here rather than when the checkpoint loads keeps whatever Lightning draws in between (the
        data loader's base seed) from shifting the generation samples of a resumed run.
        """
        self._check_prompts(batch)
        pending = self._pending_rng
        if pending is None:
            return
        torch.random.set_rng_state(pending[0])
        if pending[1] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(pending[1])
        self._pending_rng = None


def build_controllers(config: ControllerConfig, roles: Sequence[Role]) -> list[Controller]:
    """One controller per seat, named after its role (``--model.controllers.seats`` sets the modes of extra seats)."""
    try:
        return config.build([(role.name, role.proposes) for role in roles])
    except ValueError as error:
        raise ConfigError(f"--model.controllers.seats: {error}") from None


def _adapter_roles(keys: set[str]) -> list[str]:
    """Role names in LoRA parameter names (``....lora_A.<role>.weight``)."""
    return sorted({key.split("lora_", 1)[1].split(".")[1] for key in keys})


def _is_saved(key: str, trainable: set[str]) -> bool:
    """Checkpoints keep the policy's trainable weights (adapters) and all outside the policy, never the base."""
    return not key.startswith("backbone.") or key in trainable


def validate(module: TracerModule) -> None:
    """Reject impossible settings before any model is loaded, naming the CLI flag."""
    d, g, b = module.dialogue_config, module.gspo_config, module.backbone_config
    checks = [
        (d.rounds >= 1, "--model.dialogue.rounds", f"must be at least 1, got {d.rounds}"),
        (d.group_size >= 2 or not module.trained_roles, "--model.dialogue.group_size",
         f"must be at least 2 to train with GSPO (group advantages need two candidates), got {d.group_size}"),
        (g.lr > 0, "--model.gspo.lr", f"must be positive, got {g.lr}"),
        (g.steps_per_group >= 1, "--model.gspo.steps_per_group", f"must be at least 1, got {g.steps_per_group}"),
        (0 < g.epsilon < 1, "--model.gspo.epsilon", f"must be in (0, 1), got {g.epsilon}"),
        (b.max_new_tokens >= 1, "--model.backbone.max_new_tokens", f"must be at least 1, got {b.max_new_tokens}"),
        (b.temperature >= 0, "--model.backbone.temperature", f"must be >= 0, got {b.temperature}"),
        (b.lora_r >= 1, "--model.backbone.lora_r", f"must be at least 1, got {b.lora_r}"),
        (0 <= b.lora_dropout < 1, "--model.backbone.lora_dropout", f"must be in [0, 1), got {b.lora_dropout}"),
        (b.top_p is None or 0 < b.top_p <= 1, "--model.backbone.top_p", f"must be in (0, 1], got {b.top_p}"),
        (b.top_k is None or b.top_k >= 0, "--model.backbone.top_k", f"must be >= 0, got {b.top_k}"),
        (b.repetition_penalty is None or b.repetition_penalty > 0, "--model.backbone.repetition_penalty",
         f"must be positive, got {b.repetition_penalty}"),
        (b.precision != "4bit" or importlib.util.find_spec("bitsandbytes") is not None, "--model.backbone.precision",
         "4bit needs the bitsandbytes package, which is not installed (pip install bitsandbytes), or use fp32/bf16"),
        (g.epsilon_high is None or g.epsilon_high > 0, "--model.gspo.epsilon_high",
         f"must be positive, got {g.epsilon_high}"),
        (g.max_grad_norm is None or g.max_grad_norm >= 0, "--model.gspo.max_grad_norm",
         f"must be >= 0, got {g.max_grad_norm}"),
        (d.min_reward_std >= 0, "--model.dialogue.min_reward_std", f"must be >= 0, got {d.min_reward_std}"),
        (module.evaluation.samples >= 1, "--model.evaluation.samples",
         f"must be at least 1, got {module.evaluation.samples}"),
        (module.evaluation.debate_agents >= 1 and module.evaluation.debate_rounds >= 1,
         "--model.evaluation.debate_agents/debate_rounds", "must be at least 1"),
        (module.algorithm == "tracer" or module.proposer.name in module.trained_roles,
         "--model.train_proposer", "must be true with algorithm single_agent (it trains the proposer alone)"),
        (bool(module.evaluation.protocols), "--model.evaluation.protocols", "must list at least one protocol"),
    ]
    for ok, flag, message in checks:
        if not ok:
            raise ConfigError(f"{flag} {message}")
    names = [role.name for role in module.roles]
    if len(set(names)) != len(names):
        raise ConfigError(f"--model.reviewer/--model.extra_roles: every role needs a name of its own (one adapter "
                          f"each), found {names}; set a class attribute name on the role class")
    unknown = sorted(set(module.controller_config.seats) - set(names[2:]))
    if unknown:
        raise ConfigError(f"--model.controllers.seats names {unknown}, which are no extra role; the extra roles are "
                          f"{names[2:]}")
    if module.algorithm == "tracer":
        try:
            turn_order(module.roles, d.schedule, d.rounds)
        except ValueError as error:
            raise ConfigError(f"--model.dialogue.schedule: {error}") from None
    limits.check_bounds({"dialogue": asdict(d), "gspo": asdict(g), "backbone": asdict(b),
                         "evaluation": asdict(module.evaluation)})


__all__ = ["BackboneConfig", "EvaluationConfig", "TracerModule"]
