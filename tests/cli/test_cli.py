"""The command line, in-process: fit then test on the tiny config, configs, subclassed roles from YAML."""

import json
import re
import shutil
import subprocess

import pytest
import torch
import yaml
from peft import PeftModel

from tests.helpers.paths import CONFIGS, GSM, TINY
from tests.helpers.record_checks import assert_metrics_match_records
from tracer_pl.cli import build_cli
from tracer_pl.engines.hf.tiny import build_tiny_model
from tracer_pl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("run_dir")  # the tiny config writes under runs/tiny: in tmp_path


@pytest.mark.e2e
def test_fit_then_test_on_gsm8k_jsonl(tmp_path, capsys):
    build_cli(["fit", "-c", TINY, f"--data.train={GSM}", "--trainer.limit_train_batches=2",
               "--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer"])
    out = capsys.readouterr().out
    checkpoint = tmp_path / "runs/tiny/checkpoints/last.ckpt"
    assert checkpoint.exists() and "checkpoint:     runs/tiny/checkpoints/last.ckpt" in out
    adapters = tmp_path / "runs/tiny/logs/version_0/adapters"
    assert "proposer adapter:  runs/tiny/logs/version_0/adapters/proposer" in out
    base, _ = build_tiny_model("qwen2")
    trained = PeftModel.from_pretrained(base, adapters / "proposer")  # loads in the standard peft format
    assert any(float(p.abs().sum()) > 0 for n, p in trained.named_parameters() if "lora_B" in n)
    metrics = (tmp_path / "runs/tiny/logs/version_0/metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for key in ("train/proposer/reward", "train/reviewer/frac_reward_zero_std", "controller/reviewer/p_speak",
                "controller/proposer/avg_regret", "train/tokens_per_problem"):
        assert key in header
    assert len(metrics) == 3  # one row per step

    build_cli(["test", "-c", TINY, f"--data.test={GSM}", "--data.test_limit=4", f"--ckpt_path={checkpoint}"])
    out = capsys.readouterr().out
    assert "Test metric" not in out and "DataLoader 0 " not in out  # Lightning's table is off
    summary = out[out.index("== tracer-pl: test finished =="):].splitlines()
    assert summary[1].split() == ["test_sample64", "test_sample64@argmax"]  # one column per dataset and protocol
    assert re.fullmatch(r"  accuracy +\d\.\d{3} +\d\.\d{3}", summary[2])  # short names, three decimals
    assert summary[-1].endswith("runs/tiny/logs/version_1/test_metrics.json")  # the full keys are in the file
    result = json.loads((tmp_path / "runs/tiny/logs/version_1/test_metrics.json").read_text())
    # accuracy, behaviour metrics and costs equal their values recomputed from the per-problem records
    records = assert_metrics_match_records(result, "test/test_sample64",
                                           tmp_path / "runs/tiny/logs/version_1/test_records_test_sample64.jsonl")
    assert result["test/test_sample64/accuracy_round5"] == result["test/test_sample64/accuracy"]  # R = 5
    assert result["test/test_sample64/calls_per_problem"] >= 1  # at least the forced first proposal
    assert result["test/test_sample64/tokens_per_problem"] > 30  # the prompt alone is longer than that
    assert len(records) == 4 and records[0]["gold"] == "18"  # the first GSM8K test row


@pytest.mark.e2e
def test_a_subclassed_role_is_selected_from_yaml(tmp_path):
    config = tmp_path / "verifier.yaml"
    config.write_text(yaml.safe_dump({"model": {"reviewer": {"class_path": "tests.helpers.roles_for_tests.Verifier"}}}))
    cli = build_cli(["fit", "-c", TINY, "-c", str(config), "--trainer.limit_train_batches=1"])
    module = cli.model
    assert type(module.reviewer).__name__ == "Verifier"
    assert module.policy.roles == ["proposer", "verifier"]  # its own adapter
    assert "train/verifier/reward" in cli.trainer.logged_metrics
    assert (tmp_path / "runs/tiny/logs/version_0/adapters/verifier/adapter_config.json").exists()
    checkpoint = "--ckpt_path=runs/tiny/checkpoints/last.ckpt"
    tested = build_cli(["test", "-c", TINY, "-c", str(config), "--data.test_limit=2", checkpoint])
    assert type(tested.model.reviewer).__name__ == "Verifier"
    with pytest.raises(ConfigError, match=r"adapters for the roles \['proposer', 'verifier'\], this run has "
                                          r"\['proposer', 'reviewer'\]"):
        build_cli(["test", "-c", TINY, "--data.test_limit=2", checkpoint])


@pytest.mark.e2e
def test_the_third_role_example_fits_and_tests_with_three_adapters(tmp_path):
    third = str(CONFIGS / "examples" / "third_role.yaml")
    fitted = build_cli(["fit", "-c", TINY, "-c", third, "--trainer.limit_train_batches=2"])
    schedule = fitted.model.dialogue_config.schedule
    assert schedule == ["proposer", "reviewer", "verifier", "proposer", "reviewer", "verifier", "proposer"]
    adapters = tmp_path / "runs/tiny/logs/version_0/adapters"
    base, _ = build_tiny_model("qwen2")
    for role in ("proposer", "reviewer", "verifier"):  # one adapter per seat, each in the standard peft format
        assert PeftModel.from_pretrained(base, adapters / role, adapter_name=role).peft_config[role].r == 8
    header = (tmp_path / "runs/tiny/logs/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/verifier/reward", "controller/verifier/p_speak", "controller/verifier/avg_regret"):
        assert key in header
    assert any(k.startswith("controller/verifier/") and k.endswith("/avg_p_speak") for k in header)

    build_cli(["test", "-c", TINY, "-c", third, "--data.test_limit=2", "--ckpt_path=last"])
    records = (tmp_path / "runs/tiny/logs/version_1/test_records_basic_arithmetic.jsonl").read_text().splitlines()
    assert [[t["role"] for t in json.loads(line)["turns"]] for line in records] == [schedule, schedule]

    from tracer_pl.reporting.report import write_report

    report = write_report([tmp_path / "runs/tiny"], tmp_path / "report").read_text()
    assert "| verifier (speak) |" in report and "| proposer (refresh) |" in report


@pytest.mark.e2e
def test_four_agent_bundles_fit_and_test_from_the_command_line_on_the_released_protocol(tmp_path):
    overlays = ["-c", str(CONFIGS / "protocols" / "released.yaml"),
                "-c", str(CONFIGS / "examples" / "four_agents.yaml")]
    seats = ["agent0_proposer", "agent1_reviewer", "agent2_proposer", "agent3_reviewer"]
    fitted = build_cli(["fit", "-c", TINY, *overlays, "--trainer.limit_train_batches=2"])
    assert fitted.model.policy.roles == seats
    adapters = tmp_path / "runs/tiny/logs/version_0/adapters"
    assert sorted(p.name for p in adapters.iterdir() if p.is_dir()) == seats
    saved = torch.load(tmp_path / "runs/tiny/checkpoints/last.ckpt", weights_only=True)
    assert sorted(saved["tracer"]["controllers"]) == sorted(seats)
    header = (tmp_path / "runs/tiny/logs/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert "controller/agent1_reviewer/p_speak" in header and "train/agent2_proposer/reward" in header

    build_cli(["test", "-c", TINY, *overlays, "--data.test_limit=2", "--ckpt_path=last"])
    records = (tmp_path / "runs/tiny/logs/version_1/test_records_basic_arithmetic.jsonl").read_text().splitlines()
    schedule = seats + seats[:3]
    assert [[t["role"] for t in json.loads(line)["turns"]] for line in records] == [schedule, schedule]
    with pytest.raises(ConfigError, match="adapters for the roles"):  # a two-seat run cannot load it
        build_cli(["test", "-c", TINY, overlays[0], overlays[1], "--data.test_limit=2",
                   "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])


@pytest.mark.e2e
def test_settings_given_at_test_time_win_over_the_checkpoint(tmp_path):
    build_cli(["fit", "-c", TINY, "--trainer.limit_train_batches=1"])
    checkpoint = "--ckpt_path=runs/tiny/checkpoints/last.ckpt"
    build_cli(["test", "-c", TINY, "--data.test_limit=2", "--model.evaluation.method=cot", checkpoint])
    metrics = json.loads((tmp_path / "runs/tiny/logs/version_1/test_metrics.json").read_text())
    assert metrics["test/basic_arithmetic/calls_per_problem"] == 1.0  # CoT, not the trained TRACER dialogue
    with pytest.raises(ConfigError, match="--model.backbone.lora_r: the checkpoint was trained with 8, this run has 4"):
        build_cli(["test", "-c", TINY, "--data.test_limit=2", "--model.backbone.lora_r=4", checkpoint])


def test_print_config_shows_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", TINY, "--print_config", "--model.gspo.group_size=6"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["gspo"]["group_size"] == 6  # command-line override
    assert printed["model"]["proposer"]["class_path"] == "tracer_pl.Proposer"  # the public import path
    assert printed["model"]["gspo"]["epsilon"] == 0.1 and printed["model"]["controllers"]["variant"] == "rm"
    assert printed["data"]["batch_size"] == 2


def test_typo_in_a_key_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", TINY, "--model.dialogue.group_sise=4"])
    assert exit_info.value.code != 0
    assert "group_sise" in capsys.readouterr().err


def test_impossible_value_is_rejected_before_the_model_loads():
    with pytest.raises(ConfigError, match="--model.gspo.group_size must be between 2 and 256"):
        build_cli(["-c", TINY, "--model.gspo.group_size=1"], run=False)


def test_console_entry_point_reports_data_errors_without_a_traceback(tmp_path, monkeypatch, capsys):
    from tracer_pl.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 4"}\n{"question": "q", "answer": "four"}\n')
    monkeypatch.setattr("sys.argv", ["tracer-pl", "fit", "-c", TINY, f"--data.train={bad}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tracer-pl: error: bad.jsonl line 2: field 'answer' expected '#### <number>'" in err
    assert "Traceback" not in err


@pytest.mark.e2e
def test_validate_writes_val_metrics(tmp_path):
    build_cli(["fit", "-c", TINY, "--trainer.limit_train_batches=1"])
    build_cli(["validate", "-c", TINY, f"--data.val={GSM}", "--data.test_limit=2", "--trainer.limit_val_batches=1.0",
               "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])
    result = json.loads((tmp_path / "runs/tiny/logs/version_1/val_metrics.json").read_text())
    records = assert_metrics_match_records(result, "val/test_sample64",
                                           tmp_path / "runs/tiny/logs/version_1/val_records_test_sample64.jsonl")
    assert len(records) == 2 and result["val/test_sample64/calls_per_problem"] >= 1


@pytest.mark.e2e
@pytest.mark.parametrize("baseline, calls", [("cot", 1), ("majority_vote", 3), ("debate", 6)])
def test_baselines_run_from_yaml_on_the_same_harness(tmp_path, baseline, calls):
    overlay = CONFIGS / "baselines" / f"{baseline}.yaml"
    first_line = overlay.read_text().splitlines()[0]
    assert first_line.startswith(f"# tracer-pl test -c configs/quickstart.yaml -c configs/baselines/{baseline}")
    build_cli(["test", "-c", TINY, "-c", str(overlay), f"--data.test={GSM}", "--data.test_limit=2",
               "--model.evaluation.samples=3"])
    result = json.loads((tmp_path / "runs/tiny/logs/version_0/test_metrics.json").read_text())
    assert result["test/test_sample64/calls_per_problem"] == calls  # 1 call; 3 samples; 3 agents x 2 rounds


HOSTILE = [  # (arguments after `tracer-pl`, the one-line error); files are written by the test
    (["--data.train=empty.jsonl"], "empty.jsonl: 0 usable problems, fewer than one training batch of 2"),
    (["--data.train=blank.jsonl"], "blank.jsonl: 0 usable problems"),
    (["--data.train=nan.jsonl"], "nan.jsonl line 1: field 'gold' is nan, not a usable value"),
    (["--data.train=reasoning_gym:basic_arithmetic?size=abc"], "basic_arithmetic?size=abc: option 'size'"),
    (["--data.eval_batch_size=0"], "--data.eval_batch_size must be at least 1, got 0"),
    (["--ckpt_path=garbage.ckpt"], "--ckpt_path garbage.ckpt: not a readable checkpoint (not a torch.save archive"),
    (["--ckpt_path=empty.ckpt"], "--ckpt_path empty.ckpt: empty file, not a checkpoint"),
    (["--model.backbone.name=./no-such-model"], "--model.backbone.name './no-such-model': cannot load the model"),
    (["--trainer.callbacks+=tracer_pl.training.callbacks.ControllerMonitor", "--trainer.callbacks.every_n_batches=0"],
     "invalid configuration: every_n_batches must be at least 1, got 0"),
    (["--trainer.default_root_dir=/proc/no-such-dir"], "/proc/no-such-dir/checkpoints: cannot write checkpoints"),
    (["--data.train=nan.jsonl", "--data.field_map={question: nope}"], "nan.jsonl line 1: missing field 'nope'"),
    (["--data.answer_format=gsm9k"], "unknown answer format 'gsm9k'"),
    (["--data.train=missing.jsonl"], "missing.jsonl: no such file"),
    (["--optimizer=AdamW"], "--optimizer is not an option of tracer-pl: TracerModule builds one Adam per trained role "
                            "itself; set its learning rate with --model.gspo.lr"),
    (["--lr_scheduler", "StepLR"], "--lr_scheduler is not an option of tracer-pl"),
    (["--optimizer.class_path=torch.optim.SGD"], "--optimizer is not an option of tracer-pl"),
    (["--trainer.strategy=ddp"], "--trainer.strategy: DDPStrategy cannot train TracerModule (its model wrapper breaks "
                                 "the hand-taken GSPO steps); use --trainer.strategy tracer_ddp"),
    (["--trainer.strategy=ddp_find_unused_parameters_true"], "use --trainer.strategy tracer_ddp"),  # what DDP suggests
]


@pytest.mark.parametrize("extra, message", HOSTILE)
def test_hostile_command_lines_end_in_one_line_errors(tmp_path, monkeypatch, capsys, extra, message):
    from tracer_pl.cli import main

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    (tmp_path / "nan.jsonl").write_text('{"question": "q", "gold": NaN}\n{"question": "r", "gold": 1}\n')
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    monkeypatch.setattr("sys.argv", ["tracer-pl", "fit", "-c", TINY, "--trainer.enable_progress_bar=false",
                                     "--trainer.logger=false", "--trainer.limit_train_batches=1", *extra])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_predict_is_not_offered(monkeypatch, capsys):
    from tracer_pl.cli import main

    monkeypatch.setattr("sys.argv", ["tracer-pl", "predict", "-c", TINY])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "invalid choice: 'predict'" in capsys.readouterr().err


def test_from_last_without_a_checkpoint_is_an_error():
    from tracer_pl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="--ckpt_path last: no checkpoint in runs/tiny/checkpoints yet"):
        build_cli(["test", "-c", TINY, "--trainer.logger=false", "--ckpt_path=last"])


def test_help_lists_every_subcommand_and_no_optimizer_options(monkeypatch, capsys):
    from tracer_pl.cli import main

    for argv, present, absent in ((["--help"], ["fit", "validate", "test", "tracer-pl report RUN_DIR"], []),
                                  (["fit", "--help"], ["--model.gspo.lr"], ["--optimizer", "--lr_scheduler"]),
                                  (["test", "--help"], ["--ckpt_path"], ["--optimizer", "--verbose"])):
        monkeypatch.setattr("sys.argv", ["tracer-pl", *argv])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr().out
        assert stop.value.code == 0
        for text in present:
            assert text in out, (argv, text)
        for text in absent:
            assert text not in out, (argv, text)


def test_config_files_saved_by_earlier_versions_still_load(tmp_path, capsys):
    saved = tmp_path / "config.yaml"  # what SaveConfigCallback wrote before: Lightning's optimizer keys, verbose
    saved.write_text("optimizer: null\nlr_scheduler: null\nverbose: true\n")
    with pytest.raises(SystemExit) as stop:
        build_cli(["test", "-c", TINY, "-c", str(saved), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert stop.value.code == 0 and not {"optimizer", "lr_scheduler", "verbose"} & set(printed)


@pytest.mark.parametrize("source, message", [
    ("missing.jsonl", "missing.jsonl: no such file"),
    ("nan.jsonl", "nan.jsonl line 1: field 'gold' is nan"),
    ("no_such_benchmark", "unknown data source 'no_such_benchmark'"),
    ("reasoning_gym:basic_arithmetic?size=abc", "option 'size'"),
])
def test_training_data_is_checked_before_the_model_loads(tmp_path, monkeypatch, source, message):
    from tracer_pl.errors import DataError
    from tracer_pl.training.module import TracerModule

    def load(self):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(TracerModule, "configure_model", load)
    (tmp_path / "nan.jsonl").write_text('{"question": "q", "gold": NaN}\n')
    with pytest.raises(DataError, match=re.escape(message)):
        build_cli(["fit", "-c", TINY, f"--data.train={source}", "--trainer.logger=false",
                   "--trainer.enable_progress_bar=false"])


@pytest.mark.e2e
def test_resuming_a_finished_run_is_refused_and_starts_no_log_folder(tmp_path, monkeypatch, capsys):
    from tracer_pl.cli import main

    fake = "--model.engine=tracer_pl.engines.fake.FakeEngine"
    build_cli(["fit", "-c", TINY, fake, "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"])
    for more in ("2", "3"):  # the same batches again, or more of them
        monkeypatch.setattr("sys.argv", ["tracer-pl", "fit", "-c", TINY, fake, "--ckpt_path=last",
                                         f"--trainer.limit_train_batches={more}"])
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err
        assert stop.value.code == 2
        (line,) = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
        assert "runs/tiny/checkpoints/last.ckpt: that run finished its training (2 batches, 1 of 1 epochs)" in line
        assert "start a new run in another --trainer.default_root_dir" in line
    assert sorted(p.name for p in (tmp_path / "runs/tiny/logs").iterdir()) == ["version_0"]


@pytest.mark.parametrize("chain, reason", [
    # a value that fits none of a parameter's types: jsonargparse lists every type's reason, raised from the first
    ([ValueError("every_n_batches must be at least 1, got 0"),
      ValueError("Does not validate against any of the Union subtypes\nErrors:\n  - every_n_batches must be at "
                 "least 1, got 0\n  - Expected a <class 'NoneType'>")], "every_n_batches must be at least 1, got 0"),
    # the constructor's own message is kept whole even when it lists reasons the way jsonargparse does
    ([ValueError("two problems:\n  - a\n  - b")], "two problems:"),
    ([KeyError()], "KeyError"),
])
def test_the_innermost_reason_is_the_end_of_the_error_chain(chain, reason):
    from tracer_pl.cli import _innermost_reason

    error = chain[0]
    for outer in chain[1:]:
        outer.__cause__, error = error, outer
    assert _innermost_reason(error) == reason


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_report_folder_is_not_committed():
    from tests.helpers.paths import ROOT

    for path, ignored in (("report/report.md", True), ("runs/tiny/x", True), ("docs/results/x/report.md", False)):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
        if done.returncode == 128:
            pytest.skip("not a git checkout")
        assert (done.returncode == 0) == ignored, path
