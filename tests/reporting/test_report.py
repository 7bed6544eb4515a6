"""``tracer-pl report`` on run directories built by hand, with the numbers worked out here."""

import csv
import json
import math
import os
import sys

import pytest

from tracer_pl.cli import main
from tracer_pl.errors import DataError
from tracer_pl.reporting.report import correctness, wilson_interval, write_report
from tracer_pl.reporting.run_files import training_log, training_log_path

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("logged", "bound_cell", "header"),
    [
        ({}, "1.414", "bound 2·sqrt(2B/M), B=1"),  # a run that logged no batch: B = 1, 2*sqrt(2/4)
        ({"controller/regret_bound_batch": 8.0}, "4.000", "bound 2·sqrt(2B/M), B=8"),  # 2*sqrt(2*8/4)
        ({"controller/regret_unbounded": 1.0}, "inf", "no bound (importance-weighted values)"),
    ],
)
def test_the_drawn_bound_is_the_one_that_holds_for_the_run(tmp_path, logged, bound_cell, header):
    train = [{"step": s, "controller/proposer/-1/last/visits": m, "controller/proposer/-1/last/avg_regret": 1 / m,
              "controller/proposer/-1/last/avg_p_refresh": 0.5, **logged} for s, m in enumerate([1, 2, 4])]
    run = make_run(tmp_path, "tracer", {}, train_rows=train)
    text = write_report([run], tmp_path / "report").read_text()
    assert f"| {header} |" in text
    assert f"| proposer (refresh) | -1/last | 4 | 0.2500 | {bound_cell} |" in text


def make_run(root, name, metrics, records=None, train_rows=None):
    run = root / name
    version = run / "logs" / "version_0"
    version.mkdir(parents=True)
    (version / "test_metrics.json").write_text(json.dumps(metrics))
    for dataset, n in (records or {}).items():
        (version / f"test_records_{dataset}.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(n)))
    if train_rows:
        keys = sorted({k for row in train_rows for k in row})
        with (version / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(train_rows)
    return run


def metric_set(prefix, accuracy, tokens, calls, correction=0.1, preservation=0.2):
    return {f"{prefix}/accuracy": accuracy, f"{prefix}/tokens_per_problem": tokens,
            f"{prefix}/calls_per_problem": calls, f"{prefix}/correction": correction,
            f"{prefix}/preservation": preservation, f"{prefix}/accuracy_round1": 0.0,
            f"{prefix}/proposer/p_refresh/+1/last": 0.5}


def test_report_table_plots_and_json(tmp_path):
    train = [
        {"step": s, "train/accuracy_batch": 0.5, "controller/proposer/-1/last/visits": m,
         "controller/proposer/-1/last/avg_regret": 1 / m, "controller/proposer/-1/last/avg_p_refresh": 0.5 + s / 10,
         "controller/reviewer/none/visits": m, "controller/reviewer/none/avg_regret": 0.0,
         "controller/reviewer/none/avg_p_speak": 0.5}
        for s, m in enumerate([1, 2, 4])
    ]
    tracer = make_run(tmp_path, "tracer", {**metric_set("test/arith", 0.8, 900.0, 7.5),
                                           **metric_set("test/arith@argmax", 0.7, 800.0, 6.0)},
                      records={"arith": 10, "arith@argmax": 10}, train_rows=train)
    cot = make_run(tmp_path, "cot", metric_set("test/arith", 0.5, 150.0, 1.0), records={"arith": 10})
    out = tmp_path / "report"
    path = write_report([tracer, cot], out, command="bash run.sh")
    text = path.read_text()
    low, high = wilson_interval(8, 10)
    assert f"| tracer | arith | 10 | 0.800 ({low:.3f}-{high:.3f}) | 900 | 7.5 | 0.100 | 0.200 |" in text
    assert "| tracer (argmax) | arith | 10 | 0.700" in text
    assert "| cot | arith | 10 | 0.500" in text and "bash run.sh" in text
    for name in ("accuracy_vs_tokens.png", "tracer_regret.png", "tracer_speak_rates.png"):
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text
    assert not (out / "cot_regret.png").exists()  # nothing trained there
    # the controller table: proposer state -1/last ends at M = 4 with average regret 1/4 and P(refresh) 0.7;
    # its regret fell like 1/M (slope -1); over the last quarter (step 1.5 to 2) P(refresh) went 0.6 -> 0.7;
    # the reviewer's regret stayed 0 (no slope) and its strategy at 0.5
    assert ("| proposer (refresh) | -1/last | 4 | 0.2500 | 1.414 | -1.00 | 0.700 | +0.100 | — |") in text
    assert "| reviewer (speak) | none | 4 | 0.0000 | 1.414 | — | 0.500 | +0.000 | — |" in text
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["accuracy"], r["problems"]) for r in rows] == [
        ("tracer", 0.8, 10), ("tracer (argmax)", 0.7, 10), ("cot", 0.5, 10)]
    assert rows[0]["ci_low"] == pytest.approx(low) and not math.isnan(rows[0]["ci_high"])


def write_records(run, dataset, correct):
    version = run / "logs" / "version_0"
    (version / f"test_records_{dataset}.jsonl").write_text(
        "".join(json.dumps({"uid": f"u{i}", "correct": ok}) + "\n" for i, ok in enumerate(correct)))


def test_paired_comparison_against_a_reference(tmp_path):
    base = make_run(tmp_path, "base", metric_set("test/arith", 0.5, 80.0, 1.0))
    trained = make_run(tmp_path, "trained", {**metric_set("test/arith", 0.7, 300.0, 3.0),
                                             **metric_set("test/arith@argmax", 0.5, 300.0, 3.0)})
    write_records(base, "arith", [i < 5 for i in range(10)])  # u0-u4 right
    write_records(trained, "arith", [2 <= i <= 8 for i in range(10)])  # u2-u8 right
    write_records(trained, "arith@argmax", [i < 5 for i in range(10)])  # the same answers as the reference
    out = tmp_path / "report"
    text = write_report([base, trained], out, paired="base").read_text()
    # 4 problems only the trained run gets (u5-u8), 2 only the base gets (u0, u1): difference 0.2, the
    # Bonett-Price interval 1/6 +- 0.452 = (-0.286, +0.619); McNemar p = 2 * (1 + 6 + 15) / 2**6
    assert f"| trained | base | arith | 10 | 0.700 | 0.500 | +0.200 (-0.286 to +0.619) | 4 | 2 | {44 / 64:.3f} |" \
        in text
    assert "| trained (argmax) | base | arith | 10 | 0.500 | 0.500 | +0.000 (-0.231 to +0.231) | 0 | 0 | 1.000 |" \
        in text
    pairs = json.loads((out / "paired.json").read_text())
    assert [(p["method"], p["only_method_right"], p["only_reference_right"]) for p in pairs] == [
        ("trained", 4, 2), ("trained (argmax)", 0, 0)]
    both = write_report([base, trained], out, paired=["base", str(trained)]).read_text()
    assert "## Paired against base" in both and "## Paired against trained" in both
    assert "| base | trained | arith | 10 | 0.500 | 0.700 | -0.200 (-0.619 to +0.286) | 2 | 4 |" in both
    with pytest.raises(DataError, match="--paired nothing: not one of the run directories"):
        write_report([base, trained], out, paired="nothing")
    (trained / "logs" / "version_0" / "test_records_arith.jsonl").write_text('{"uid": "u0"}\n')
    with pytest.raises(DataError, match="test_records_arith.jsonl, line 1: expected a JSON record with 'uid' and"):
        write_report([base, trained], out, paired=str(base))


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no test_metrics.json"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    broken = make_run(tmp_path, "broken", {"test/arith/accuracy": 0.5})
    with pytest.raises(DataError, match=r"lacks the metrics \['tokens_per_problem'"):
        write_report([broken], tmp_path / "out")


def test_console_command_dispatches_report(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "cot", metric_set("test/arith", 0.25, 100.0, 1.0), records={"arith": 4})
    monkeypatch.setattr(sys, "argv", ["tracer-pl", "report", str(run), "--out", str(tmp_path / "r")])
    main()
    out = capsys.readouterr().out
    assert "| cot | arith | 4 | 0.250" in out and (tmp_path / "r" / "report.md").exists()
    monkeypatch.setattr(sys, "argv", ["tracer-pl", "report", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------- hostile report inputs
TRAIN = [{"step": s, "controller/proposer/-1/last/visits": m, "controller/proposer/-1/last/avg_regret": 1 / m,
          "controller/proposer/-1/last/avg_p_refresh": 0.5} for s, m in enumerate([1, 2, 4])]


def test_runs_with_the_same_name_get_distinct_labels_and_plots(tmp_path):
    one = make_run(tmp_path / "a", "seed1", metric_set("test/arith", 0.2, 100.0, 1.0), records={"arith": 5},
                   train_rows=TRAIN)
    two = make_run(tmp_path / "b", "seed1", metric_set("test/arith", 0.8, 100.0, 1.0), records={"arith": 5},
                   train_rows=TRAIN)
    out = tmp_path / "report"
    text = write_report([one, two], out).read_text()
    assert "| a/seed1 | arith | 5 | 0.200" in text and "| b/seed1 | arith | 5 | 0.800" in text
    assert (out / "a__seed1_regret.png").exists() and (out / "b__seed1_regret.png").exists()
    with pytest.raises(DataError, match="--paired seed1: several runs are named so \\(a/seed1, b/seed1\\)"):
        write_report([one, two], out, paired="seed1")
    with pytest.raises(DataError, match="the same run directory is given twice"):
        write_report([one, one], out)


def test_a_directory_holding_several_runs_is_refused_not_reduced_to_its_newest(tmp_path):
    make_run(tmp_path / "all", "x", metric_set("test/arith", 0.2, 100.0, 1.0))
    make_run(tmp_path / "all", "y", metric_set("test/arith", 0.8, 100.0, 1.0))
    with pytest.raises(DataError, match="all: holds test_metrics.json of several runs \\(under x/logs, y/logs\\)"):
        write_report([tmp_path / "all"], tmp_path / "out")


@pytest.mark.parametrize("status, words", [
    (None, "at the last logged step: the run did not finish"),  # crashed: no status, no adapters
    ("finished", "at the end of training"),
    ("preempted", "when the run was preempted"),
])
def test_the_controller_table_says_whether_training_finished(tmp_path, status, words):
    run = make_run(tmp_path, "run", metric_set("test/arith", 0.2, 100.0, 1.0), train_rows=TRAIN)
    if status:
        (run / "logs/version_0/fit_status.json").write_text(json.dumps({"status": status}))
    text = write_report([run], tmp_path / "out").read_text()
    assert f"Controller states of run {words}" in text


def test_duplicate_problem_ids_are_refused_in_a_paired_comparison(tmp_path):
    base = make_run(tmp_path, "base", metric_set("test/arith", 0.5, 80.0, 1.0))
    other = make_run(tmp_path, "other", metric_set("test/arith", 0.5, 80.0, 1.0))
    write_records(base, "arith", [True, False])
    (other / "logs/version_0/test_records_arith.jsonl").write_text(
        "".join(json.dumps({"uid": "u0", "correct": ok}) + "\n" for ok in (True, False)))
    with pytest.raises(DataError, match="test_records_arith.jsonl, line 2: problem id 'u0' appears twice"):
        write_report([base, other], tmp_path / "out", paired="base")


def test_malformed_metrics_rows_and_unusable_out_paths(tmp_path):
    run = make_run(tmp_path, "run", metric_set("test/arith", 0.2, 100.0, 1.0), train_rows=TRAIN)
    csv_path = run / "logs/version_0/metrics.csv"
    csv_path.write_text(csv_path.read_text() + "oops,not,a,number\n")
    with pytest.raises(DataError, match="metrics.csv, line 5: expected numbers in every column"):
        write_report([run], tmp_path / "out")
    csv_path.unlink()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="--out .*a_file/out: cannot write the report there"):
        write_report([run], tmp_path / "a_file" / "out")


def test_correctness_reads_the_correct_field_or_a_stricter_grade(tmp_path):
    run = make_run(tmp_path, "tracer", {})
    records = [{"uid": "a", "correct": True, "note": "stated"}, {"uid": "b", "correct": True, "note": "lucky"},
               {"uid": "c", "correct": False, "note": "stated"}]
    (run / "logs/version_0/test_records_arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert correctness(run) == {"arith": {"a": True, "b": True, "c": False}}
    strict = correctness(run, grade=lambda row: row["correct"] and row["note"] == "stated")
    assert strict == {"arith": {"a": True, "b": False, "c": False}}


def write_log(version, steps, tag, when):
    """A ``metrics.csv`` in ``version`` with one training row per step (``train/tokens`` = tag·100 + step)."""
    version.mkdir(parents=True, exist_ok=True)
    path = version / "metrics.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "train/tokens"])
        writer.writeheader()
        writer.writerows({"step": s, "train/tokens": tag * 100 + s} for s in steps)
    os.utime(path, (when, when))


def test_a_resumed_fit_joins_its_logs_and_a_fresh_fit_replaces_them(tmp_path):
    run = tmp_path / "run"
    logs = run / "logs"
    write_log(logs / "version_0", range(7), 0, when=1_000)  # checkpoint after step 4, killed during step 7
    write_log(logs / "version_1", range(5, 10), 1, when=2_000)  # resumed: steps 5 and 6 again, then 7-9
    (logs / "version_2").mkdir()  # a test after it: no training rows
    (logs / "version_2" / "metrics.csv").write_text("epoch\n0\n")
    joined = [(row["step"], row["train/tokens"]) for row in training_log(run)]
    assert joined == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 105), (6, 106), (7, 107), (8, 108), (9, 109)]
    assert training_log_path(run) == logs / "version_1" / "metrics.csv"

    write_log(logs / "version_3", range(3), 3, when=3_000)  # trained again from the start in the same directory
    assert [row["train/tokens"] for row in training_log(run)] == [300, 301, 302]
