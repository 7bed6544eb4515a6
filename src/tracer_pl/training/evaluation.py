"""Evaluating trained adapters and controllers from Python, with the files ``tracer-pl test`` writes.

:func:`evaluate` runs Lightning's test (or validation) loop of a :class:`~tracer_pl.training.module.TracerModule` on a
data module and writes ``<log_dir>/<stage>_metrics.json`` with :func:`write_metrics`, the same function the command
line uses, next to the per-problem ``<stage>_records_<dataset>.jsonl`` the module writes. ``tracer-pl report``
reads both.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from tracer_pl.baselines import chain_of_thought, debate, majority_vote
from tracer_pl.core.agent import Agent
from tracer_pl.core.controllers import Controller, EvalProtocol
from tracer_pl.core.dialogue import Dialogue, DialogueConfig, DialogueRecord, play
from tracer_pl.core.problem import Problem
from tracer_pl.core.seats import Seat
from tracer_pl.errors import DataError, require, require_between
from tracer_pl.keys import eval_key
from tracer_pl.training import checkpoints, run_files
from tracer_pl.training.distributed import gather_objects
from tracer_pl.training.metrics import problem_metrics, record_json, state_decisions

Stage = Literal["test", "val"]


STAGES = ("test", "val")
"""The stages :func:`evaluate` runs (training runs with ``trainer.fit``)."""


def stage_metrics(trainer: L.Trainer, stage: Stage) -> dict[str, float]:
    """The ``<stage>/...`` metrics the last test or validation run logged, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


def write_metrics(trainer: L.Trainer, stage: Stage) -> Path:
    """Write :func:`stage_metrics` to ``<log_dir>/<stage>_metrics.json`` (sorted keys); return its path.

    The file is written whole or not at all (a temporary file beside it, renamed over it), so a process killed
    meanwhile leaves the previous file, never a truncated one, and several processes writing it at once leave one
    complete copy.

    Raises:
        DataError: when the directory cannot be written, naming it.
    """
    directory = Path(trainer.log_dir or trainer.default_root_dir or ".")
    path = directory / f"{stage}_metrics.json"
    text = json.dumps(stage_metrics(trainer, stage), indent=2, sort_keys=True) + "\n"
    name = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain write gives
    except OSError as error:
        raise DataError(f"{path}: cannot write the metrics there ({error.strerror or error}); give the trainer a "
                        "default_root_dir (or logger directory) that can be written") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(name, path)
    except OSError as error:
        raise DataError(f"{path}: cannot write the metrics ({error.strerror or error})") from None
    finally:
        name.unlink(missing_ok=True)
    return path


def evaluate(module: L.LightningModule, datamodule: L.LightningDataModule, *, trainer: L.Trainer | None = None,
             stage: Stage = "test", ckpt_path: str | Path | None = None) -> dict[str, float]:
    """Evaluate ``module`` on ``datamodule``'s test (or validation) sets and write the metrics file.

    Args:
        module: The module to evaluate, as configured (its ``evaluation`` settings choose TRACER or a baseline).
        datamodule: Where the problems come from.
        trainer: The trainer to run with; by default one CPU/GPU device, no logger, results under ``runs/evaluate``.
        stage: ``test`` or ``val``.
        ckpt_path: A checkpoint to load first (trained adapters, controllers), or one of Lightning's ``last``,
            ``best``.

    Returns:
        The ``<stage>/<dataset>/<metric>`` values also written to ``<log_dir>/<stage>_metrics.json``.

    Raises:
        ConfigError: for a ``stage`` other than ``test`` and ``val``.
        CheckpointError: for a checkpoint that cannot be used (missing, empty, damaged, not a file, from another
            model), the one-line error ``tracer-pl test --ckpt_path`` gives; a path that is not a regular file is
            refused before the model loads, and never opened.
        DataError: when no batch was evaluated (no file is written then, so an earlier one is kept).
    """
    require(stage in STAGES, "stage", "'test' or 'val' (training runs with trainer.fit)", stage)
    if ckpt_path is not None and checkpoints.is_local_file(ckpt_path):
        checkpoints.check_file(ckpt_path)
    trainer = trainer or L.Trainer(devices=1, logger=False, enable_checkpointing=False,
                                   enable_model_summary=False, default_root_dir="runs/evaluate")
    ckpt_path = checkpoints.resolve(trainer, ckpt_path, fit=False)  # Lightning would evaluate the untrained module
    _check_writable(Path(trainer.default_root_dir))
    checkpoints.guard_loading(trainer)
    run = trainer.test if stage == "test" else trainer.validate
    run(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = stage_metrics(trainer, stage)
    if not metrics:
        raise DataError(f"evaluate ran no {stage} batch, so nothing was evaluated and no {stage}_metrics.json was "
                        f"written: check the data module's {stage} sets and trainer.limit_{stage}_batches")
    write_metrics(trainer, stage)
    return metrics


def _check_writable(directory: Path) -> None:
    """Refuse, before anything runs, a results directory that cannot be created (under a file, no permission)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test"):
            pass
    except OSError as error:
        raise DataError(f"{directory}: cannot write the evaluation's files there ({error.strerror or error}); give "
                        "the trainer a default_root_dir that can be written") from None


@dataclass
class EvaluationConfig:
    """What ``validate``/``test`` run on the trained adapters: TRACER's dialogue or a baseline.

    Args:
        method: ``tracer`` (the dialogue with average-strategy controllers), ``cot`` (one proposer call),
            ``majority_vote`` (self-consistency over ``samples`` sampled proposals) or ``debate`` (Du et al.:
            ``debate_agents`` proposers for ``debate_rounds`` rounds, final majority).
        samples: Proposals per problem for ``majority_vote`` (1 to 1024).
        debate_agents: Agents in ``debate`` (1 to 64).
        debate_rounds: Rounds in ``debate`` (1 to 64).
        protocols: For ``tracer``: how the controllers act, each protocol evaluated on the same problems --
            ``sample`` from or ``argmax`` of the average strategy (TRACER §2). The first one's metrics are
            logged as ``<stage>/<dataset>/<metric>``, the others' as ``<stage>/<dataset>@<protocol>/<metric>``.
    """

    method: Literal["tracer", "cot", "majority_vote", "debate"] = "tracer"
    samples: int = 10
    debate_agents: int = 3
    debate_rounds: int = 2
    protocols: list[EvalProtocol] = field(default_factory=lambda: ["sample", "argmax"])

    def __post_init__(self) -> None:
        flag = "--model.evaluation."
        require_between(self.samples, flag + "samples", 1, 1024)
        require_between(self.debate_agents, flag + "debate_agents", 1, 64)
        require_between(self.debate_rounds, flag + "debate_rounds", 1, 64)
        require(bool(self.protocols), flag + "protocols", "a list of at least one protocol", self.protocols)


class Evaluator:
    """Validation and test of a :class:`~tracer_pl.training.module.TracerModule`, as a collaborator it owns.

    Plays TRACER's dialogue with average-strategy controllers (each protocol of ``config.protocols``) or a
    baseline, and keeps what an evaluation epoch accumulates: the per-problem records (for the JSONL files) and
    the speaking decisions per controller state. The module logs the metrics it returns.

    Args:
        config: The method and its settings.
        seed: Seed of the RNG that samples the average strategies (one RNG per protocol, reset every epoch, so
            adding a protocol never changes what another one samples).
    """

    def __init__(self, config: EvaluationConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.start()

    def start(self) -> None:
        """A new evaluation epoch: fresh RNGs, no records, no counts."""
        self.generators = {p: torch.Generator().manual_seed(self.seed) for p in ("sample", "argmax")}
        self.records: dict[str, list[dict[str, Any]]] = {}  # per dataset (and protocol), for the JSONL
        self.state_counts: dict[str, list[float]] = {}  # speaking decisions per controller state

    def play(self, batch: Sequence[Problem], policy: Agent, seats: Sequence[Seat], dialogue: DialogueConfig,
             protocols: Sequence[EvalProtocol] | None = None) -> list[tuple[str, list[DialogueRecord]]]:
        """The records of the configured method on ``batch``, with the suffix of each protocol's dataset name.

        TRACER gives one entry per protocol of ``protocols`` (by default ``config.protocols``; the first one's
        suffix is empty, the others' ``@<protocol>``); a baseline one entry. Nothing is updated.
        """
        proposer, e = seats[0].role, self.config
        if e.method == "cot":
            return [("", chain_of_thought(batch, policy, proposer, greedy=dialogue.eval_greedy))]
        if e.method == "majority_vote":
            return [("", majority_vote(batch, policy, proposer, samples=e.samples))]
        if e.method == "debate":
            return [("", debate(batch, policy, proposer, agents=e.debate_agents, rounds=e.debate_rounds))]
        played = []
        for i, protocol in enumerate(e.protocols if protocols is None else protocols):
            game = Dialogue(batch, policy, seats, config=dialogue, training=False,
                            eval_generator=self.generators[protocol], eval_protocol=protocol)
            played.append(("" if i == 0 else f"@{protocol}", play(game).records))
        return played

    def add(self, stage: str, name: str, records: list[DialogueRecord], controllers: Sequence[Controller]
            ) -> dict[str, list[float]]:
        """Keep the records and the state decisions; return each metric's per-problem values by logged key."""
        self.records.setdefault(name, []).extend(record_json(r) for r in records)
        for key, rates in state_decisions(records, controllers).items():
            count = self.state_counts.setdefault(eval_key(stage, name, key), [0.0, 0])
            count[0], count[1] = count[0] + sum(rates), count[1] + len(rates)
        rows = [problem_metrics(r) for r in records]
        return {eval_key(stage, name, metric): [row[metric] for row in rows] for metric in rows[0]}

    def state_rates(self) -> dict[str, float]:
        """Speak/refresh rate per controller state over the epoch, pooled over all processes.

        States visited differ between processes, so these are gathered once at the end (one collective every
        process joins) rather than synchronised per key.
        """
        pooled: dict[str, list[float]] = {}
        for counts in gather_objects(self.state_counts):
            for key, (speaking, total) in counts.items():
                entry = pooled.setdefault(key, [0.0, 0])
                entry[0], entry[1] = entry[0] + speaking, entry[1] + total
        return {key: speaking / total for key, (speaking, total) in sorted(pooled.items())}

    def write_records(self, directory: Path, stage: str, suffix: str = "") -> None:
        """Per-problem records (question, gold, every turn, final answer, tokens) as JSONL, one file per dataset.

        Each file is written whole (:func:`~tracer_pl.training.run_files.write_text`): a full disk is a one-line
        error and leaves no cut-off file.
        """
        for name, records in self.records.items():
            path = directory / f"{stage}_records_{name}{suffix}.jsonl"
            run_files.write_text(path, "".join(json.dumps(r) + "\n" for r in records), "the records")


__all__ = ["EvaluationConfig", "Evaluator", "evaluate", "stage_metrics", "write_metrics"]
