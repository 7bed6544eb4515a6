"""Exported adapters: the base by hub id, a model card and ``tracer_pl.json`` per role, and the opt-in push to the Hub.

The portability check for real (the SmolLM2 adapter loaded by ``AutoPeftModelForCausalLM`` in a process that only
has a hub-style cache of the base) is in ``test_export_smollm2.py``.
"""

import json
from pathlib import Path
from unittest import mock

import huggingface_hub
import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.hf import models
from tracer_pl.engines.hf.export import RunSummary, base_origin, push_adapters
from tracer_pl.engines.hf.policy import HFPolicy
from tracer_pl.engines.hf.tiny import build_tiny_model
from tracer_pl.errors import ConfigError, TracerError
from tracer_pl.training.export import PushAdapters

SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
SOURCE = "reasoning_gym:basic_arithmetic?size=16&max_terms=2&max_digits=1"
RUN = RunSummary(
    base_model="tiny-qwen2",
    roles={"proposer": "Writes a solution ending with a final-answer line.", "reviewer": "Judges the pending answer."},
    optimizer_steps={"proposer": 7},
    settings={"group size G": 4, "rounds": 5, "learning rate": 0.001, "training batches": 3},
    data={"train": [SOURCE], "test": ["gsm8k"]},
    metrics={"train/accuracy": 0.25, "controller/proposer/p_refresh": 0.4, "controller/reviewer/p_speak": 0.75},
)


@pytest.fixture(scope="module")
def policy():
    policy = HFPolicy.from_pretrained("tiny-qwen2", max_new_tokens=4)
    with torch.no_grad():  # LoRA B starts at zero; trained adapters do not
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def read(folder: Path) -> tuple[dict, str, dict]:
    """The adapter config, the model card and ``tracer_pl.json`` of one role's folder."""
    return (json.loads((folder / "adapter_config.json").read_text()), (folder / "README.md").read_text(),
            json.loads((folder / "tracer_pl.json").read_text()))


# ---------------------------------------------------------------------- where the base comes from
def test_aliases_stand_for_their_hub_model_or_for_none():
    smollm2 = base_origin("smollm2-135m-instruct")
    assert (smollm2.kind, smollm2.hub_id, smollm2.reference) == ("alias", SMOLLM2_HUB, SMOLLM2_HUB)
    assert "Q4_1 GGUF" in smollm2.converted_from and "fp32" in smollm2.converted_from
    tiny = base_origin("tiny-llama")
    assert (tiny.kind, tiny.hub_id, tiny.reference, tiny.converted_from) == ("random", None, "tiny-llama", None)
    hub = base_origin("Qwen/Qwen2.5-0.5B-Instruct")
    assert (hub.kind, hub.hub_id, hub.reference) == ("hub", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")
    assert base_origin(None).kind == base_origin("").kind == "unknown"
    assert set(models.HUB_IDS) == {models.SMOLLM2, *models.TINY_ALIASES}


def test_a_local_directory_is_itself_unless_it_names_its_origin(tmp_path, monkeypatch):
    plain = tmp_path / "my-model"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert (base_origin(str(plain)).kind, base_origin(str(plain)).reference) == ("local", str(plain.resolve()))
    monkeypatch.chdir(tmp_path)
    assert base_origin("my-model").reference == str(plain.resolve())  # absolute: the adapter may move
    named = tmp_path / "downloaded"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}))
    assert base_origin(str(named)).reference == "Qwen/Qwen2.5-0.5B-Instruct"
    (named / "config.json").write_text(json.dumps({"_name_or_path": str(plain)}))  # a path names no hub model
    assert base_origin(str(named)).reference == str(named.resolve())
    snapshot = tmp_path / "hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0123abcd"
    snapshot.mkdir(parents=True)
    origin = base_origin(str(snapshot))
    assert (origin.kind, origin.hub_id, origin.reference) == ("local", SMOLLM2_HUB, SMOLLM2_HUB)
    monkeypatch.setenv("TRACER_PL_CACHE", str(tmp_path / "cache"))
    converted = tmp_path / "cache/models/smollm2-135m-instruct"
    converted.mkdir(parents=True)
    assert base_origin(str(converted)) == base_origin("smollm2-135m-instruct")  # the alias's converted copy


# ---------------------------------------------------------------------- what the folders hold
def test_tiny_adapters_name_their_alias_and_get_a_card_per_role(policy, tmp_path):
    folders = policy.save_adapters(tmp_path, run=RUN)
    assert folders == {"proposer": tmp_path / "proposer", "reviewer": tmp_path / "reviewer"}
    cards = {}
    for role, folder in folders.items():
        config, card, facts = read(folder)
        cards[role] = card
        assert config["base_model_name_or_path"] == "tiny-qwen2"  # no hub id: the alias, the only way to rebuild it
        meta = front_matter(card)
        assert meta["library_name"] == "peft" and "base_model" not in meta
        assert {"peft", "lora", "tracer"} <= set(meta["tags"])
        assert f"# TRACER {role} adapter" in card and "https://arxiv.org/abs/2605.28699" in card
        assert "random weights" in card and "no hub model" in card
        assert "| rank r | 8 |" in card and "| alpha | 16 |" in card and "`q_proj`" in card
        assert "| group size G | 4 |" in card and "| rounds | 5 |" in card and "| learning rate | 0.001 |" in card
        assert f"- train: `{SOURCE}`" in card and "- test: `gsm8k`" in card
        assert "| `train/accuracy` | 0.2500 |" in card and "No test ran" in card
        assert "AutoPeftModelForCausalLM" not in card  # it cannot load a base that only tracer_pl builds
        assert facts["role"] == role and facts["base_model"]["hub_id"] is None
        assert facts["base_model"]["kind"] == "random" and facts["lora"]["r"] == 8
        assert facts["lora"]["base_precision"] == "fp32" and facts["settings"]["group size G"] == 4
    assert "Writes a solution ending with a final-answer line." in cards["proposer"]
    assert "| trained | yes, 7 optimizer steps |" in cards["proposer"]
    assert "| trained | no: this run did not train this role" in cards["reviewer"]
    assert "controller/reviewer/p_speak" in cards["reviewer"] and "controller/proposer" not in cards["reviewer"]
    assert read(folders["proposer"])[2]["optimizer_steps"] == 7 and read(folders["reviewer"])[2]["trained"] is False
    index = (tmp_path / "README.md").read_text()  # peft's one empty template for all roles is gone
    assert "[`proposer/`](proposer/README.md)" in index and "More Information Needed" not in index


def test_exported_adapters_still_load_with_peft_and_into_a_policy(policy, tmp_path):
    folders = policy.save_adapters(tmp_path, run=RUN)
    ids = torch.tensor([[257, 104, 105, 258, 10]])
    policy.use("reviewer")
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits
        base, _ = build_tiny_model("qwen2")
        reloaded = PeftModel.from_pretrained(base, folders["reviewer"])(input_ids=ids).logits
    assert torch.allclose(reloaded, expected, atol=1e-6)
    other = HFPolicy.from_pretrained("tiny-qwen2")
    other.load_adapters(tmp_path)
    for role in folders:
        assert all(torch.equal(p, q) for p, q in zip(other.role_parameters(role), policy.role_parameters(role)))


def test_the_smollm2_alias_records_the_hub_id_and_the_gguf_conversion(policy, tmp_path):
    run = RunSummary(base_model="smollm2-135m-instruct")  # the tiny weights stand in: only the files are checked
    folders = policy.save_adapters(tmp_path, run=run)
    config, card, facts = read(folders["proposer"])
    assert config["base_model_name_or_path"] == SMOLLM2_HUB
    meta = front_matter(card)
    assert meta["base_model"] == SMOLLM2_HUB and f"base_model:adapter:{SMOLLM2_HUB}" in meta["tags"]
    assert "dequantized to fp32" in card and "Q4_1 GGUF" in card and "may differ slightly" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")' in card
    assert f"pretrained={SMOLLM2_HUB},peft=path/to/this/folder --tasks gsm8k" in card
    assert facts["base_model"] == {"name": "smollm2-135m-instruct", "kind": "alias", "hub_id": SMOLLM2_HUB,
                                   "reference": SMOLLM2_HUB, "converted_from": models.CONVERTED_FROM[models.SMOLLM2]}
    assert "| trained | not recorded |" in card and "No test ran" in card and "## Data\n\nNot recorded." in card


def test_without_a_run_summary_the_base_is_read_from_the_model(tmp_path):
    base, tokenizer = build_tiny_model("llama")
    directory = tmp_path / "base"
    base.save_pretrained(directory)
    base.name_or_path = str(directory)  # as from_pretrained(directory) sets it
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"), "reviewer")
    local = HFPolicy(model, tokenizer, ["reviewer"])
    config, card, facts = read(local.save_adapters(tmp_path / "adapters")["reviewer"])
    assert config["base_model_name_or_path"] == str(directory.resolve())
    assert facts["base_model"]["kind"] == "local" and "(a local directory)" in card
    assert "| trained | not recorded |" in card and "No test ran" in card and "| rank r | 4 |" in card


def test_test_metrics_replace_the_missing_test_note(policy, tmp_path):
    run = RunSummary(base_model="tiny-qwen2", metrics={"test/gsm8k/accuracy": 0.5})
    _, card, facts = read(policy.save_adapters(tmp_path, run=run)["proposer"])
    assert "| `test/gsm8k/accuracy` | 0.5000 |" in card and "No test ran" not in card
    assert facts["metrics"] == {"test/gsm8k/accuracy": 0.5}


# ---------------------------------------------------------------------- pushing to the Hub (mocked: no network)
def test_push_creates_one_repository_per_role_and_uploads_its_folder(policy, tmp_path):
    folders = policy.save_adapters(tmp_path, run=RUN)
    api = mock.Mock()
    pushed = push_adapters(folders, "someone/tracer-tiny", token="hf_secret", api=api)
    assert pushed == {"proposer": "someone/tracer-tiny-proposer", "reviewer": "someone/tracer-tiny-reviewer"}
    assert api.create_repo.call_args_list == [
        mock.call(f"someone/tracer-tiny-{role}", token="hf_secret", private=True, exist_ok=True, repo_type="model")
        for role in folders]
    uploads = [call.kwargs for call in api.upload_folder.call_args_list]
    assert [(u["folder_path"], u["repo_id"], u["token"]) for u in uploads] == [
        (str(folders[role]), f"someone/tracer-tiny-{role}", "hf_secret") for role in folders]


def test_push_refuses_bad_prefixes_empty_folders_and_reports_failures_in_one_line(policy, tmp_path):
    folders = policy.save_adapters(tmp_path / "adapters", run=RUN)
    for prefix in ("no-owner", "a/b/c", ""):
        with pytest.raises(ConfigError, match="repo_prefix must be <user or organisation>/<name>"):
            push_adapters(folders, prefix, token="t", api=mock.Mock())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no peft adapter"):
        push_adapters({"proposer": tmp_path / "empty"}, "me/x", token="t", api=mock.Mock())
    api = mock.Mock()
    api.upload_folder.side_effect = RuntimeError("403 Forbidden: no write access\nlong details")
    with pytest.raises(TracerError) as error:
        push_adapters(folders, "me/x", token="t", api=api)
    assert str(error.value) == (f"pushing the proposer adapter to me/x-proposer failed (403 Forbidden: no write "
                                f"access); it is saved in {folders['proposer']}")


def test_push_callback_needs_a_token_before_training(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    callback = PushAdapters("me/tracer")
    with pytest.raises(ConfigError) as error:
        callback.setup(mock.Mock(), mock.Mock(), "fit")
    assert str(error.value) == ("PushAdapters: no Hugging Face token in $HF_TOKEN; set it to a token with write "
                                "access, or remove the callback")
    callback.setup(mock.Mock(), mock.Mock(), "test")  # testing pushes nothing, so needs no token
    monkeypatch.setenv("MY_TOKEN", "hf_x")
    PushAdapters("me/tracer", token_env="MY_TOKEN").setup(mock.Mock(), mock.Mock(), "fit")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        PushAdapters("me/tracer", token_env="MY_TOKEN").setup(mock.Mock(), mock.Mock(), "fit")
    with pytest.raises(ConfigError, match="PushAdapters: repo_prefix must be"):
        PushAdapters("tracer")


def test_a_fit_with_push_adapters_and_no_token_stops_before_training(tmp_path, monkeypatch):
    import lightning as L

    from tracer_pl.training.module import TracerModule

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
                        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[PushAdapters("me/tracer")])
    module = TracerModule(backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=4))
    with pytest.raises(ConfigError, match=r"no Hugging Face token in \$HF_TOKEN"):
        trainer.fit(module, ReasoningDataModule(train=SOURCE, batch_size=2))
    assert not (tmp_path / "adapters").exists() and module.policy is None


@pytest.mark.e2e
def test_fit_exports_cards_of_the_run_and_pushes_them(tmp_path, monkeypatch):
    from tests.helpers.roles_for_tests import ByteSumProposer
    from tests.helpers.training import StepCounter, fit
    from tracer_pl.core.gspo import GSPOConfig

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = mock.Mock()
    monkeypatch.setattr(huggingface_hub, "HfApi", mock.Mock(return_value=api))
    callback, counter = PushAdapters("someone/tracer-tiny", private=False), StepCounter()
    data = ReasoningDataModule(train=SOURCE, test=SOURCE, batch_size=2)
    module, trainer = fit(tmp_path, data, batches=2, seed=0, callbacks=[callback, counter],
                          backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=6),
                          gspo=GSPOConfig(group_size=4, lr=1e-3), proposer=ByteSumProposer(), train_reviewer=False)
    assert module.exported_adapters == {role: tmp_path / "adapters" / role for role in ("proposer", "reviewer")}
    assert callback.pushed == {role: f"someone/tracer-tiny-{role}" for role in ("proposer", "reviewer")}
    uploaded = {call.kwargs["repo_id"]: Path(call.kwargs["folder_path"]) for call in api.upload_folder.call_args_list}
    assert all(call.kwargs["private"] is False for call in api.create_repo.call_args_list)
    for role in ("proposer", "reviewer"):
        folder = uploaded[f"someone/tracer-tiny-{role}"]
        config, card, facts = read(folder)  # the upload happened after the cards were written
        assert config["base_model_name_or_path"] == "tiny-qwen2"
        assert "| group size G | 4 |" in card and "| rounds | 5 |" in card and "| training batches | 2 |" in card
        assert f"- train: `{SOURCE}`" in card and "`train/accuracy`" in card
        assert facts["metrics"]["train/accuracy"] == pytest.approx(float(trainer.callback_metrics["train/accuracy"]))
    proposer, reviewer = (read(uploaded[f"someone/tracer-tiny-{r}"])[1] for r in ("proposer", "reviewer"))
    assert "Reward from the bytes of the text" in proposer and "keep the pending answer" in proposer
    assert "Judges the pending answer" in reviewer and "| trained | no: this run did not train" in reviewer
    assert counter.steps["proposer"] > 0  # a role that learned
    assert read(uploaded["someone/tracer-tiny-proposer"])[2]["optimizer_steps"] == counter.steps["proposer"]
