"""Exported adapters that load on another machine: the base named by its hub id, a model card per role, a push.

:meth:`~tracer_pl.engines.hf.policy.HFPolicy.save_adapters` writes each role's peft adapter to ``<dir>/<role>``
and then, through :func:`finish_adapter_folder`:

* ``adapter_config.json`` names the base as ``peft.AutoPeftModelForCausalLM`` and lm-evaluation-harness look it
  up (:func:`base_origin`): the hub id of a hub model or of an alias that stands for one
  (``smollm2-135m-instruct`` → ``HuggingFaceTB/SmolLM2-135M-Instruct``), the directory of a local model (or the hub
  id it was downloaded from), and the alias itself for the random tiny models, which exist only in tracer_pl;
* ``README.md`` is the role's model card, with the YAML front matter the Hub and peft read (``base_model``,
  ``library_name: peft``, tags);
* ``tracer_pl.json`` holds the same facts for programs: the base, how its local weights were made (the
  quickstart's are dequantized from a Q4_1 GGUF file), the LoRA and training settings, the data and the metrics.

:func:`push_adapters` uploads the folders to the Hub, one model repository per role.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tracer_pl.errors import ConfigError, TracerError

PAPER = "https://arxiv.org/abs/2605.28699"
"""TRACER: Turn-level Regret Matching with Inner Reinforcement Credit."""
SIDECAR = "tracer_pl.json"
"""The machine-readable description written beside each adapter."""
SIDECAR_FORMAT = 1

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SNAPSHOT = re.compile(r"^models--(?P<owner>[\w.-]+?)--(?P<name>[\w.-]+)$")

Kind = Literal["hub", "alias", "local", "random", "unknown"]


@dataclass(frozen=True)
class BaseOrigin:
    """Where an adapter's base model comes from, as the exported files record it.

    Attributes:
        name: The base as the run named it (``--model.backbone.name``): an alias, a hub id or a directory.
        kind: ``hub`` (a hub id), ``alias`` (an offline alias of a hub model), ``local`` (a directory),
            ``random`` (a tiny random model built in code) or ``unknown`` (nothing recorded).
        hub_id: The hub model the base is, when known.
        reference: What ``adapter_config.json`` records as ``base_model_name_or_path``: the hub id when there is
            one, else the directory, else the alias; None when unknown.
        converted_from: How the local weights were made, when they are not the hub model's own files.
    """

    name: str | None
    kind: Kind
    hub_id: str | None = None
    reference: str | None = None
    converted_from: str | None = None


def base_origin(name_or_path: str | None) -> BaseOrigin:
    """The :class:`BaseOrigin` of a base named as ``--model.backbone.name`` (or as its loaded model's path).

    A local directory counts as the hub model it holds when it is a hub cache snapshot
    (``models--<owner>--<name>/snapshots/<revision>``) or its ``config.json`` names a hub id as
    ``_name_or_path``; the converted copy of an alias (``$TRACER_PL_CACHE/models/<alias>``) counts as the alias.
    """
    from tracer_pl.engines.hf.models import CONVERTED_FROM, HUB_IDS, TINY_ALIASES, cache_dir

    if not name_or_path:
        return BaseOrigin(name=None, kind="unknown")
    if name_or_path in TINY_ALIASES:
        return BaseOrigin(name=name_or_path, kind="random", reference=name_or_path)
    hub_id = HUB_IDS.get(name_or_path)
    if hub_id:
        return BaseOrigin(name=name_or_path, kind="alias", hub_id=hub_id, reference=hub_id,
                          converted_from=CONVERTED_FROM.get(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        directory = path.resolve()
        for alias in CONVERTED_FROM:
            if directory == (cache_dir() / "models" / alias).resolve():
                return base_origin(alias)
        hub_id = _hub_id_of_directory(directory)
        return BaseOrigin(name=name_or_path, kind="local", hub_id=hub_id, reference=hub_id or str(directory))
    return BaseOrigin(name=name_or_path, kind="hub", hub_id=name_or_path, reference=name_or_path)


def _hub_id_of_directory(directory: Path) -> str | None:
    """The hub id a local model directory was downloaded from, when it says so."""
    parts = directory.parts
    if len(parts) >= 3 and parts[-2] == "snapshots":
        match = _SNAPSHOT.match(parts[-3])
        if match:
            return f"{match['owner']}/{match['name']}"
    try:
        named = json.loads((directory / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(named, str) and _HUB_ID.match(named) and not Path(named).expanduser().exists():
        return named
    return None


@dataclass
class RunSummary:
    """What the model cards say about the run that trained the adapters; every field may stay empty.

    ``TracerModule`` fills it at the end of ``fit`` (:func:`tracer_pl.training.export.run_summary`).

    Attributes:
        base_model: The base as the run named it (``--model.backbone.name``); None: read it from the loaded model.
        method: What trained the adapters, e.g. ``TRACER`` or ``single-agent GSPO``.
        roles: What each role does, one or two sentences per role name.
        optimizer_steps: The optimizer steps each trained role took; a role missing here was not trained.
        settings: Training settings by label (group size, rounds, learning rate, batches, ...), in card order.
        data: The problem sources by split (``train``, ``val``, ``test``).
        metrics: Metric values at the end of training, by logged key.
    """

    base_model: str | None = None
    method: str = "TRACER"
    roles: dict[str, str] = field(default_factory=dict)
    optimizer_steps: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA settings a card reports, read from a peft ``LoraConfig`` (:meth:`of`)."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    base_precision: str

    @classmethod
    def of(cls, config: Any, base_precision: str) -> LoraSettings:
        targets = config.target_modules
        targets = [targets] if isinstance(targets, str) else sorted(targets or [])
        return cls(r=config.r, alpha=config.lora_alpha, dropout=config.lora_dropout, target_modules=targets,
                   base_precision=base_precision)


def finish_adapter_folder(folder: Path, role: str, base: BaseOrigin, lora: LoraSettings, run: RunSummary) -> None:
    """Make one role's saved peft folder portable: its base in ``adapter_config.json``, a card, ``tracer_pl.json``."""
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base.reference
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))  # peft's own layout
    (folder / "README.md").write_text(model_card(role, base, lora, run))
    (folder / SIDECAR).write_text(json.dumps(sidecar(role, base, lora, run), indent=2) + "\n")


def write_index(directory: Path, folders: Mapping[str, Path], base: BaseOrigin) -> None:
    """``<dir>/README.md``: which folder holds which role (instead of peft's empty template for all of them)."""
    lines = ["# Adapters of a TRACER run", "",
             f"One LoRA adapter per role on the base {_base_phrase(base)}; each folder is a peft adapter with its "
             "own model card (`README.md`) and `tracer_pl.json`:", ""]
    lines += [f"- [`{role}/`]({folder.name}/README.md)" for role, folder in folders.items()]
    (directory / "README.md").write_text("\n".join(lines) + "\n")


def sidecar(role: str, base: BaseOrigin, lora: LoraSettings, run: RunSummary) -> dict[str, Any]:
    """The content of ``tracer_pl.json``: the card's facts as data."""
    package = sys.modules.get("tracer_pl")  # imported with this module; its metadata may predate the source
    return {
        "format": SIDECAR_FORMAT,
        "tracer_pl_version": getattr(package, "__version__", None),
        "role": role,
        "role_description": run.roles.get(role),
        "paper": PAPER,
        "base_model": asdict(base),
        "lora": asdict(lora),
        "method": run.method,
        "trained": role in run.optimizer_steps,
        "optimizer_steps": run.optimizer_steps.get(role),
        "settings": run.settings,
        "data": run.data,
        "metrics": _role_metrics(run.metrics, role, run.roles),
    }


# ---------------------------------------------------------------------- the model card
def model_card(role: str, base: BaseOrigin, lora: LoraSettings, run: RunSummary) -> str:
    """The role's ``README.md``: YAML front matter for the Hub and peft, then a short plain description."""
    return "\n".join([_front_matter(base), *_card_body(role, base, lora, run)]).rstrip() + "\n"


def _front_matter(base: BaseOrigin) -> str:
    from huggingface_hub import ModelCardData

    tags = ["peft", "lora", "transformers", "tracer", "tracer-pl", "reinforcement-learning", "multi-agent"]
    if base.hub_id:
        tags.insert(0, f"base_model:adapter:{base.hub_id}")
    data = ModelCardData(base_model=base.hub_id, library_name="peft", pipeline_tag="text-generation", tags=tags)
    return f"---\n{data.to_yaml()}\n---\n"


def _card_body(role: str, base: BaseOrigin, lora: LoraSettings, run: RunSummary) -> list[str]:
    others = [name for name in run.roles if name != role]
    lines = [f"# TRACER {role} adapter" + (f" for {base.hub_id.split('/')[-1]}" if base.hub_id else ""), ""]
    lines += [f"The LoRA adapter of the **{role}** role of a run of {run.method}, trained with tracer_pl."]
    if run.roles.get(role):
        lines += ["", run.roles[role]]
    lines += ["", f"TRACER ([arXiv 2605.28699]({PAPER})) seats several roles on one frozen base, each with a LoRA "
              "adapter of its own. Small tabular regret-matching controllers learn *when* each role speaks; GSPO "
              "with a role-specific reward learns *what* it says. This folder holds this role's adapter alone: the "
              "controllers are in the run's checkpoint"
              + (f", the other roles' adapters ({', '.join(others)}) in folders beside this one" if others else "")
              + ". Loaded on its own, the adapter answers as a single model, without the dialogue."]
    lines += ["", "## Base model", "", *_base_lines(base)]
    lines += ["", "## LoRA", "", "| setting | value |", "|---|---|", f"| rank r | {lora.r} |",
              f"| alpha | {_number(lora.alpha)} |", f"| dropout | {_number(lora.dropout)} |",
              f"| target modules | {', '.join(f'`{t}`' for t in lora.target_modules)} |",
              f"| base weights in training | {lora.base_precision} |"]
    lines += ["", "## Training", "", *_training_lines(role, run)]
    lines += ["", "## Data", ""]
    sources = [(split, source) for split, items in run.data.items() for source in items]
    lines += [f"- {split}: `{source}`" for split, source in sources] or ["Not recorded."]
    lines += ["", "## Results", "", *_metric_lines(role, run)]
    lines += ["", "## Use", "", *_use_lines(base)]
    return lines


def _base_lines(base: BaseOrigin) -> list[str]:
    if base.kind == "random":
        return [f"`{base.name}`: a tiny model with random weights, built in code by tracer_pl "
                "(`tracer_pl.engines.hf.tiny`). It is no hub model, so `adapter_config.json` names the alias "
                f"`{base.name}`; only tracer_pl can rebuild the base (`load_base_model(\"{base.name}\")`). What "
                "such a model says is noise: these adapters test the machinery, not a method."]
    if base.kind == "unknown":
        return ["Not recorded: load the adapter with `PeftModel.from_pretrained(base, folder)` on the base it was "
                "trained on."]
    lines = [f"[`{base.hub_id}`](https://huggingface.co/{base.hub_id})" if base.hub_id else f"`{base.reference}`"]
    if base.kind == "alias":
        lines[0] += f" (tracer_pl alias `{base.name}`)"
    if base.kind == "local":
        lines[0] += f", from the local directory `{base.name}`" if base.hub_id else " (a local directory)"
    if base.converted_from:
        lines += ["", f"**Note:** the run trained this adapter on base weights {base.converted_from}, not on the "
                  "hub's own bf16 files, so numbers measured with the hub model may differ slightly from the run's."]
    return lines


def _training_lines(role: str, run: RunSummary) -> list[str]:
    if role in run.optimizer_steps:
        steps = run.optimizer_steps[role]
        trained = f"yes, {steps} optimizer step{'s' if steps != 1 else ''}"
        if steps == 0:
            trained = ("yes, but it took no optimizer step (no candidate group had a reward signal), so the adapter "
                       "is its initialisation")
    elif run.optimizer_steps or run.settings:
        trained = "no: this run did not train this role, so the adapter is its initialisation (LoRA B = 0)"
    else:
        trained = "not recorded"
    rows = [("method", run.method), ("trained", trained), *run.settings.items()]
    return ["| setting | value |", "|---|---|", *(f"| {label} | {_value(value)} |" for label, value in rows)]


def _metric_lines(role: str, run: RunSummary) -> list[str]:
    metrics = _role_metrics(run.metrics, role, run.roles)
    lines: list[str] = []
    if metrics:
        lines += ["As logged at the end of training: `train/` over the training dialogues (sampled while the "
                  "adapters learned), `controller/` the seat's controller, `val/` and `test/` evaluations of the "
                  "whole dialogue.", "",
                  "| metric | value |", "|---|---|", *(f"| `{key}` | {value:.4f} |" for key, value in metrics.items())]
    if not any(key.startswith("test/") for key in metrics):
        lines += ([""] if lines else []) + [
            "No test ran before these adapters were exported, so this card has no test numbers; `tracer-pl test` "
            "with the run's checkpoint evaluates the method (the dialogue, every adapter and the controllers)."]
    return lines


def _use_lines(base: BaseOrigin) -> list[str]:
    if base.kind in ("random", "unknown"):
        base_line = (f'base, tokenizer = load_base_model("{base.name}")' if base.kind == "random"
                     else "base = ...  # the model the adapter was trained on")
        return ["```python", "from peft import PeftModel",
                *(["from tracer_pl.engines.hf.models import load_base_model"] if base.kind == "random" else []),
                "", base_line, 'model = PeftModel.from_pretrained(base, "path/to/this/folder")', "```"]
    return ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")  # or its hub repo id',
            f'tokenizer = AutoTokenizer.from_pretrained("{base.reference}")', "```", "",
            "With lm-evaluation-harness:", "", "```bash",
            f"lm_eval --model hf --model_args pretrained={base.reference},peft=path/to/this/folder --tasks gsm8k",
            "```"]


def _role_metrics(metrics: Mapping[str, float], role: str, roles: Mapping[str, str]) -> dict[str, float]:
    """The run's metrics without those of the other roles (keys ``<section>/<other role>/...``)."""
    others = set(roles) - {role}
    return {key: float(value) for key, value in sorted(metrics.items())
            if not (len(key.split("/")) > 2 and key.split("/")[1] in others)}


def _base_phrase(base: BaseOrigin) -> str:
    return f"`{base.hub_id or base.reference}`" if base.reference else "(not recorded)"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return _number(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------- pushing to the Hub
def check_repo_prefix(repo_prefix: str) -> None:
    """Raise :class:`~tracer_pl.errors.ConfigError` unless ``repo_prefix`` is ``<user or organisation>/<name>``."""
    if not _HUB_ID.match(repo_prefix or ""):
        raise ConfigError(f"repo_prefix must be <user or organisation>/<name>, got {repo_prefix!r}")


def push_adapters(folders: Mapping[str, Path], repo_prefix: str, *, token: str, private: bool = True,
                  commit_message: str = "Upload a TRACER adapter", api: Any = None) -> dict[str, str]:
    """Upload each role's folder to the Hub model repository ``<repo_prefix>-<role>`` (created when missing).

    Args:
        folders: The folder of each role (what :meth:`~tracer_pl.engines.hf.policy.HFPolicy.save_adapters` returns).
        repo_prefix: ``<user or organisation>/<name>``; the proposer goes to ``<user>/<name>-proposer``.
        token: A Hugging Face token with write access.
        private: Create missing repositories as private.
        commit_message: The message of each upload's commit.
        api: An ``huggingface_hub.HfApi`` (default: a new one).

    Returns:
        The repository id of each role.

    Raises:
        ConfigError: ``repo_prefix`` is not ``<owner>/<name>``, or a folder holds no adapter.
        TracerError: The Hub refused a repository or an upload (the message names the folder, which stays on disk).
    """
    check_repo_prefix(repo_prefix)
    missing = [str(folder) for folder in folders.values() if not (Path(folder) / "adapter_config.json").is_file()]
    if missing:
        raise ConfigError(f"no peft adapter (adapter_config.json) to push in {', '.join(missing)}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    pushed = {}
    for role, folder in folders.items():
        repo_id = f"{repo_prefix}-{role}"
        try:
            api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, token=token, repo_type="model",
                              commit_message=commit_message)
        except Exception as error:  # network, permissions, quota: one line, and the adapters stay on disk
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TracerError(f"pushing the {role} adapter to {repo_id} failed ({reason}); it is saved in "
                              f"{folder}") from error
        pushed[role] = repo_id
    return pushed


__all__ = ["BaseOrigin", "LoraSettings", "RunSummary", "base_origin", "check_repo_prefix", "finish_adapter_folder",
           "model_card", "push_adapters", "sidecar", "write_index"]
