"""``tracer-pl report`` on damaged, hostile and unusual run directories: one-line errors, counted skips, no hangs."""

import contextlib
import json
import os
import re
import socket
import stat
import sys
import time
import typing

import pytest

from tests.helpers.special_files import no_hang
from tests.reporting.test_report import TRAIN, make_run, metric_set, write_records
from tracer_pl.cli import main
from tracer_pl.core.controllers import EvalProtocol
from tracer_pl.errors import DataError
from tracer_pl.reporting import report
from tracer_pl.reporting.report import correctness, write_report
from tracer_pl.reporting.run_files import training_log

VERSION = "logs/version_0"


def run_with(tmp_path, name="run", **files):
    """A run with a complete test of ``arith`` (4 problems) and a training log, then ``files`` written over it.

    Each keyword names a file of the version directory (dots as ``__``); a value of bytes is its content.
    """
    run = make_run(tmp_path, name, metric_set("test/arith", 0.5, 100.0, 1.0), train_rows=TRAIN)
    write_records(run, "arith", [True, False, True, False])
    for file, content in files.items():
        (run / VERSION / file.replace("__", ".")).write_bytes(content)
    return run


def metrics_bytes(**changes):
    values = {**metric_set("test/arith", 0.5, 100.0, 1.0), **changes}
    return json.dumps(values).encode()


CSV = (b"controller/proposer/-1/last/avg_p_refresh,controller/proposer/-1/last/avg_regret,"
       b"controller/proposer/-1/last/visits,step\r\n0.5,1.0,1,0\r\n0.5,0.5,2,1\r\n")
"""A CSVLogger training log of two steps (lines 1-3); a test appends the row it is about as line 4."""


# ---------------------------------------------------------------------- malformed files: one line naming them
@pytest.mark.parametrize(
    "files, message",
    [
        ({"metrics__csv": CSV + b"0.5,\xff,4,2\r\n"}, r"metrics.csv, line 4: not UTF-8 text \(byte 0xff\)"),
        ({"test_metrics__json": b'{"test/arith/accuracy": "caf\xe9"}'}, r"test_metrics.json, line 1: not UTF-8"),
        ({"test_records_arith__jsonl": b'{"uid": "u0", "correct": true}\n{"uid": "\xff"}\n'},
         r"test_records_arith.jsonl, line 2: not UTF-8"),
        ({"test_metrics__json": b"[1, 2]"}, r"test_metrics.json: expected a JSON object .* found a list"),
        ({"test_metrics__json": b'"accuracy"'}, r"test_metrics.json: expected a JSON object .* found a string"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/accuracy": None})},
         r"test_metrics.json: test/arith/accuracy is null; expected a number between 0 and 1"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/accuracy": float("nan")})},
         r"test/arith/accuracy is NaN; expected a number between 0 and 1"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/tokens_per_problem": float("inf")})},
         r"test/arith/tokens_per_problem is Infinity; expected a finite number of at least 0"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/calls_per_problem": -1})},
         r"test/arith/calls_per_problem is -1; expected a finite number"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/accuracy": 1.5})}, r"test/arith/accuracy is 1.5;"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/accuracy": "0.5"})}, r"test/arith/accuracy is \"0.5\";"),
        ({"test_metrics__json": metrics_bytes(**{"test/arith/correction": True})}, r"test/arith/correction is true;"),
        ({"test_metrics__json": b"[" * 100_000 + b"]" * 100_000}, r"test_metrics.json: not valid JSON \(nested too"),
        ({"test_metrics__json": b'{"test/arith/accuracy": ' + b"1" * 5000 + b"}"},
         r"test_metrics.json: not valid JSON \(Exceeds the limit"),
        ({"test_metrics__json": b""}, r"test_metrics.json: not valid JSON"),
        ({"metrics__csv": CSV + b"1,2,3,4,5,6,7\r\n"}, r"metrics.csv, line 4: 7 fields where the header has 4"),
        ({"metrics__csv": CSV + b"0.5,0.25\r\n0.5,0.2,5,3\r\n"}, r"metrics.csv, line 4: 2 fields where the header"),
        ({"metrics__csv": CSV + b"1" * 200_000 + b"\r\n"}, r"metrics.csv, line 4: not a row of a CSV log \(field"),
        ({"metrics__csv": CSV + b"0.5,oops,4,2\r\n"}, r"metrics.csv, line 4: expected numbers in every column"),
        ({"metrics__csv": CSV + b"0.5,0.25,4,nan\r\n"}, r"metrics.csv, line 4: a training row needs a finite step"),
        ({"metrics__csv": b"controller/proposer/-1/last/avg_regret\r\n0.5\r\n"},
         r"metrics.csv, line 2: a training row needs a finite step, found no 'step' column"),
    ],
)
def test_malformed_files_give_one_line_errors_naming_file_line_and_field(tmp_path, files, message):
    run = run_with(tmp_path, **files)
    with pytest.raises(DataError, match=message) as error:
        write_report([run], tmp_path / "out")
    assert "\n" not in str(error.value) and str(run) in str(error.value)


@pytest.mark.parametrize(
    "records, message",
    [
        (b"[1, 2]\n", r"line 1: expected a JSON object \(one record per line\), found a list"),
        (b"null\n", r"line 1: expected a JSON object .* found null"),
        (b'{"uid": "u0", "correct": "false"}\n', r"line 1: .* 'correct' \(true or false\), found correct \"false\""),
        (b'{"uid": "u0", "correct": null}\n', r"line 1: .* found correct null"),
        (b'{"uid": "u0", "correct": 1}\n', r"line 1: .* found correct 1"),
        (b'{"uid": ["u0"], "correct": true}\n{"uid": "u1", "correct": false}\n',
         r"line 1: expected a JSON record with 'uid' \(a string or an integer"),
        (b'{"uid": "u0", "correct": true}\n{"uid": {"a": 1}, "correct": false}\n',
         r"line 2: expected a JSON record with 'uid'"),
        (b'{"uid": "u0", "correct": true}\n{"uid": "u1", "correct": tru', r"line 2: not valid JSON"),
    ],
)
def test_malformed_records_in_a_paired_comparison_are_one_line_errors(tmp_path, records, message):
    reference = run_with(tmp_path, "reference")
    other = run_with(tmp_path, "other", test_records_arith__jsonl=records)
    with pytest.raises(DataError, match=f"test_records_arith.jsonl, {message}") as error:
        write_report([reference, other], tmp_path / "out", paired="reference")
    assert "\n" not in str(error.value)


def test_report_errors_reach_the_console_as_one_line(tmp_path, monkeypatch, capsys):
    run = run_with(tmp_path, test_metrics__json=b"[1]")
    monkeypatch.setattr(sys, "argv", ["tracer-pl", "report", str(run), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("tracer-pl: error: ") and "\n" not in err
    assert "test_metrics.json: expected a JSON object" in err


# ---------------------------------------------------------------------- special files: refused, never read
def make_fifo(path):
    os.mkfifo(path)


def make_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server


@pytest.mark.parametrize("name", ["metrics.csv", "test_metrics.json", "test_records_arith.jsonl"])
@pytest.mark.parametrize(
    "make, kind",
    [
        (make_fifo, "is a named pipe \\(FIFO\\), not a file"),
        (os.mkdir, "is a directory, not a file"),
        (lambda p: os.symlink("/dev/null", p), "is a character device, not a file"),
        (lambda p: os.symlink(p.parent / "gone", p), "cannot read it \\(a broken symbolic link to .*gone\\)"),
        (lambda p: os.symlink(p, p), "cannot read it \\(a symbolic link loop\\)"),
        (make_socket, "cannot read it \\(it is a socket, not a file\\)"),
    ],
)
def test_a_run_file_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path, name, make, kind):
    run = run_with(tmp_path)
    path = run / VERSION / name
    path.unlink()
    made = make(path)
    try:
        with no_hang(path) if make is make_fifo else contextlib.nullcontext(), \
                pytest.raises(DataError, match=f"{name}: {kind}") as error:
            write_report([run], tmp_path / "out")
    finally:
        if made is not None:
            made.close()
    assert "\n" not in str(error.value)


def test_a_special_fit_status_file_counts_as_unfinished_and_is_not_read(tmp_path):
    run = run_with(tmp_path)
    os.mkfifo(run / VERSION / "fit_status.json")
    with no_hang(run / VERSION / "fit_status.json"):
        text = write_report([run], tmp_path / "out").read_text()
    assert "Controller states of run at the last logged step: the run did not finish" in text
    (run / VERSION / "fit_status.json").unlink()
    (run / VERSION / "fit_status.json").write_bytes(b"\xff\xfe")
    assert "the run did not finish" in write_report([run], tmp_path / "out").read_text()


def test_outputs_replace_what_stands_at_their_names_and_never_write_through_it(tmp_path):
    run = run_with(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "report.md")  # a plain write would block until someone reads the pipe
    os.mkfifo(out / "accuracy_vs_tokens.png")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("keep")
    os.symlink(elsewhere, out / "results.json")
    with no_hang(out / "report.md"):
        path = write_report([run], out)
    assert path.is_file() and "| run | arith | 4 | 0.500" in path.read_text()
    assert (out / "accuracy_vs_tokens.png").is_file() and (out / "results.json").is_file()
    assert elsewhere.read_text() == "keep"  # the link was replaced, not written through
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}  # as a plain write makes them
    (out / "report.md").unlink()
    (out / "report.md").mkdir()
    with pytest.raises(DataError, match="--out .*out: report.md is a directory there; remove it"):
        write_report([run], out)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match="--out .*pipe: is a named pipe \\(FIFO\\), not a directory; choose another"):
        write_report([run], tmp_path / "pipe")


# ---------------------------------------------------------------------- which test a run's results come from
@pytest.mark.parametrize(
    "newer, reason",
    [
        (b"{}", "it holds no test metrics \\(the test ran no batch, or was interrupted\\)"),
        (json.dumps({"epoch": 0}).encode(), "it holds no test metrics"),
        (json.dumps({"test/arith/accuracy_round1": 0.0}).encode(), "lacks the metrics"),
        (b'{"test/arith/accuracy": 0.', "not valid JSON"),
        (b"\xff{}", "line 1: not UTF-8 text"),
        (metrics_bytes(**{"test/arith/accuracy": None}), "test/arith/accuracy is null"),
    ],
)
def test_the_newest_complete_test_is_used_and_the_report_says_which(tmp_path, newer, reason):
    run = run_with(tmp_path)
    os.utime(run / VERSION / "test_metrics.json", (1_000, 1_000))
    later = run / "logs/version_1"
    later.mkdir()
    (later / "test_metrics.json").write_bytes(newer)
    (later / "test_records_arith.jsonl").write_text("")  # an interrupted test's records
    text = write_report([run], tmp_path / "out").read_text()
    assert "| run | arith | 4 | 0.500" in text
    assert "- run: test results from `logs/version_0/test_metrics.json` (the newest complete test)" in text
    assert any(line.startswith("  - skipped `logs/version_1/test_metrics.json`: ") and re.search(reason, line)
               for line in text.splitlines()), text
    assert correctness(run) == {"arith": {"u0": True, "u1": False, "u2": True, "u3": False}}


def test_a_run_whose_only_test_ran_nothing_is_an_error_saying_so(tmp_path):
    run = make_run(tmp_path, "run", {})
    with pytest.raises(DataError, match="no test_metrics.json with test metrics .*test_metrics.json: no test metrics; "
                                        "the test ran no batch, or was interrupted"):
        write_report([run], tmp_path / "out")
    other = run_with(tmp_path, "other")  # beside a usable run, it is named in the sources instead
    text = write_report([other, run], tmp_path / "out").read_text()
    assert "- run: nothing to report" in text and "skipped `logs/version_0/test_metrics.json`: it holds no" in text


# ---------------------------------------------------------------------- dataset names and protocols
def test_the_report_knows_every_evaluation_protocol():
    assert typing.get_args(EvalProtocol) == report.PROTOCOLS


@pytest.mark.parametrize(
    "datasets, rows",
    [
        (["hard@set"], [("run", "hard@set")]),
        (["hard@set", "hard@set@argmax"], [("run", "hard@set"), ("run (argmax)", "hard@set")]),
        (["a@b@c", "a@b@c@sample"], [("run", "a@b@c"), ("run (sample)", "a@b@c")]),
        (["x@argmax"], [("run", "x@argmax")]),  # no dataset x: the name of a dataset, not a protocol
        (["x", "x@greedy"], [("run", "x"), ("run", "x@greedy")]),  # not a protocol the writer names
        (["arith", "arith@argmax"], [("run", "arith"), ("run (argmax)", "arith")]),
        (["set[1]*", "set[1]*@argmax"], [("run", "set[1]*"), ("run (argmax)", "set[1]*")]),
    ],
)
def test_dataset_names_holding_at_signs_keep_them(tmp_path, datasets, rows):
    metrics = {k: v for name in datasets for k, v in metric_set(f"test/{name}", 0.5, 100.0, 1.0).items()}
    run = make_run(tmp_path, "run", metrics, records={name: 4 for name in datasets})
    text = write_report([run], tmp_path / "out").read_text()
    for method, dataset in rows:
        assert f"| {method} | {dataset} | 4 | 0.500" in text, text
    assert text.count("| 4 | 0.500") == len(rows)


def test_split_protocol_reads_only_what_the_writer_writes():
    split = report.split_protocol
    assert split("hard@set@argmax", {"hard@set", "hard@set@argmax"}) == ("hard@set", "argmax")
    assert split("hard@set", {"hard@set", "hard@set@argmax"}) == ("hard@set", "")
    assert split("hard@argmax", {"hard@argmax"}) == ("hard@argmax", "")


def test_a_paired_comparison_matches_datasets_whose_names_hold_at_signs(tmp_path):
    metrics = {**metric_set("test/hard@set", 0.75, 100.0, 1.0), **metric_set("test/hard@set@argmax", 0.5, 100.0, 1.0)}
    base = make_run(tmp_path, "base", metric_set("test/hard@set", 0.25, 100.0, 1.0))
    trained = make_run(tmp_path, "trained", metrics)
    write_records(base, "hard@set", [True, False, False, False])
    write_records(trained, "hard@set", [True, True, True, False])
    write_records(trained, "hard@set@argmax", [True, True, False, False])
    text = write_report([base, trained], tmp_path / "out", paired="base").read_text()
    assert "| trained | base | hard@set | 4 | 0.750 | 0.250 |" in text
    assert "| trained (argmax) | base | hard@set | 4 | 0.500 | 0.250 |" in text


# ---------------------------------------------------------------------- what killed and multi-process runs leave
def test_a_last_line_cut_off_by_a_kill_is_skipped_and_noted(tmp_path):
    run = run_with(tmp_path, metrics__csv=CSV + b"0.5,0.25,4,2\r\n0.5,0.2")  # killed while writing step 3
    assert [row["step"] for row in training_log(run)] == [0, 1, 2]
    text = write_report([run], tmp_path / "out").read_text()
    assert "| proposer (refresh) | -1/last | 4 | 0.2500 |" in text
    assert "  - `logs/version_0/metrics.csv`: skipped its last line (5), cut off while it was written" in text


def test_records_of_several_processes_are_joined_and_their_padding_counted_once(tmp_path):
    run = make_run(tmp_path, "ddp", metric_set("test/arith", 0.5, 100.0, 1.0))
    rows = [{"uid": f"u{i}", "correct": i % 2 == 0} for i in range(5)]
    for rank, share in enumerate([rows[0::2], rows[1::2] + rows[:1]]):  # rank 1 padded with u0 again
        (run / VERSION / f"test_records_arith.rank{rank}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in share))
    reference = make_run(tmp_path, "one", metric_set("test/arith", 1.0, 100.0, 1.0))
    write_records(reference, "arith", [True] * 5)
    text = write_report([reference, run], tmp_path / "out", paired="one").read_text()
    assert "| ddp | arith | 5 | 0.500" in text  # 5 problems, not 6 records, not "?"
    assert "| ddp | one | arith | 5 | 0.600 | 1.000 |" in text
    assert "1 record of a problem another process had evaluated" in text
    assert correctness(run) == {"arith": {f"u{i}": i % 2 == 0 for i in range(5)}}


def test_linked_log_directories_are_followed_and_link_loops_end(tmp_path):
    elsewhere = run_with(tmp_path / "disk", "stored")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(elsewhere / "logs", run / "logs")
    os.symlink(run, run / "loop")
    os.symlink(".", run / "logs" / "self")
    os.symlink("/", run / "root")  # followed a few levels only: no walk of the whole disk
    started = time.monotonic()
    text = write_report([run], tmp_path / "out").read_text()
    assert "| run | arith | 4 | 0.500" in text and "## Training: run" in text
    assert time.monotonic() - started < 30


def test_a_run_evaluated_from_python_without_a_logger_is_reported(tmp_path):
    run = tmp_path / "evaluate"  # what evaluate() writes by default: the files directly in the run directory
    run.mkdir()
    (run / "test_metrics.json").write_text(json.dumps(metric_set("test/arith", 0.25, 100.0, 1.0)))
    (run / "test_records_arith.jsonl").write_text("".join(json.dumps({"uid": i, "correct": i == 0}) + "\n"
                                                          for i in range(4)))
    text = write_report([run], tmp_path / "out").read_text()
    assert "| evaluate | arith | 4 | 0.250" in text and "test results from `test_metrics.json`" in text


def test_records_that_disagree_with_the_metrics_beside_them_are_refused(tmp_path):
    run = run_with(tmp_path)
    write_records(run, "arith", [True, True, True, False])  # 0.75, where the metrics say 0.5
    with pytest.raises(DataError, match=r"test_records_arith.jsonl: 3 of 4 records are correct \(0.750\), but .*"
                                        r"test_metrics.json gives the accuracy 0.500; these records are not that"):
        write_report([run], tmp_path / "out")


def test_an_empty_records_file_leaves_the_number_of_problems_unknown_and_says_so(tmp_path):
    run = run_with(tmp_path, test_records_arith__jsonl=b"")
    text = write_report([run], tmp_path / "out").read_text()
    assert "| run | arith | ? | 0.500 |" in text  # not 0 problems with an accuracy of 0.5
    assert "  - `logs/version_0/test_records_arith.jsonl`: holds no record, so the number of problems" in text


def test_datasets_a_paired_comparison_cannot_pair_are_named(tmp_path):
    reference = run_with(tmp_path, "reference")
    other = make_run(tmp_path, "other", {**metric_set("test/arith", 0.5, 100.0, 1.0),
                                         **metric_set("test/gcd", 0.5, 100.0, 1.0)})
    (other / VERSION / "test_records_arith.jsonl").write_text(
        "".join(json.dumps({"uid": f"x{i}", "correct": i < 2}) + "\n" for i in range(4)))  # other problem ids
    write_records(other, "gcd", [True, False])
    text = write_report([reference, other], tmp_path / "out", paired="reference").read_text()
    assert "`logs/version_0/test_records_arith.jsonl`: arith has no problem id in common with the reference " \
           "reference, so it is not paired" in text
    assert "`logs/version_0/test_records_gcd.jsonl`: gcd is not a dataset of the reference reference" in text


def test_file_names_with_line_breaks_stay_on_one_line_of_the_console(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tracer-pl", "report", str(tmp_path / "two\nlines")])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "two\\nlines: not a directory" in err
