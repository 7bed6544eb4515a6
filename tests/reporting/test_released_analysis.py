"""docs/results/released_analysis.py on two study directories built by hand, with the numbers worked out here."""

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "results" / "released_analysis.py"


@pytest.fixture(scope="module")
def released():
    spec = importlib.util.spec_from_file_location("released_analysis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


SIZES = {"basic_arithmetic": 10, "products": 4, "gcd": 4}
# right problems (uids) per test run; the same products and gcd patterns in every cell
PRODUCTS = {"tracer": {0, 1}, "single_agent_gspo": {0, 1, 2, 3}}  # b = 2, c = 0
GCD = {"tracer": {0, 1, 2}, "single_agent_gspo": {0}}  # b = 0, c = 2
BASIC = {  # (protocol, seed suffix) -> (TRACER's right problems, single-agent GSPO's)
    ("authors", ""): ({0, 1, 2, 3}, set(range(10))),  # b = 6, c = 0
    ("today", ""): ({0, 1}, set(range(10))),  # b = 8, c = 0
    ("authors", "_seed7"): ({0}, set(range(1, 10))),  # b = 9, c = 1
    ("today", "_seed7"): ({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}),  # b = c = 0
}


def metrics(dataset, accuracy, tokens, calls):
    prefix = f"test/{dataset}"
    return {f"{prefix}/accuracy": accuracy, f"{prefix}/tokens_per_problem": tokens,
            f"{prefix}/calls_per_problem": calls, f"{prefix}/correction": 0.0, f"{prefix}/preservation": 0.0}


def write_tested(out, name, right, tokens=100.0, calls=1.0, done=True):
    """A tested run: ``right`` maps each of its test sets to the uids it got right."""
    version = out / name / "logs" / "version_0"
    version.mkdir(parents=True)
    found = {}
    for dataset, uids in right.items():
        n = SIZES[dataset]
        rows = [{"uid": i, "correct": i in uids, "turns": []} for i in range(n)]
        (version / f"test_records_{dataset}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        found.update(metrics(dataset, len(uids) / n, tokens, calls))
    (version / "test_metrics.json").write_text(json.dumps(found))
    if done:
        (out / name / ".done").touch()


def fit_run(out, name, versions):
    """A fitted run: one metrics.csv per version, each a list of training rows, the later versions newer."""
    for number, rows in enumerate(versions):
        version = out / name / "logs" / f"version_{number}"
        version.mkdir(parents=True)
        keys = sorted({k for row in rows for k in row})
        path = version / "metrics.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.utime(path, (1_000_000 + number, 1_000_000 + number))


def per_problem(values, first_step=0):
    return [{"step": first_step + i, "train/completion_tokens_per_problem": v} for i, v in enumerate(values)]


TIMINGS = """\
2025-01-01T00:00:00Z start abc1234, queues: a b
2025-01-01T00:00:00Z fit tracer
2025-01-01T00:30:00Z fitted tracer
2025-01-01T00:30:00Z tracer generated 600 tokens in training: the single-agent budget
2025-01-01T00:30:00Z fit single_agent_gspo
2025-01-01T01:00:00Z fit single_agent_gspo
2025-01-01T01:15:00Z fitted single_agent_gspo
2025-01-01T01:15:00Z test tracer.authors
2025-01-01T01:20:30Z done tracer.authors
2025-01-01T01:20:30Z test tracer_seed7.today
"""


@pytest.fixture
def complete(tmp_path):
    out = tmp_path / "released"
    for (protocol, suffix), (tracer, single) in BASIC.items():
        for method, basic in (("tracer", tracer), ("single_agent_gspo", single)):
            write_tested(out, f"{method}{suffix}.{protocol}",
                     {"basic_arithmetic": basic, "products": PRODUCTS[method], "gcd": GCD[method]},
                     tokens=50.0 if method == "tracer" else 20.0, calls=1.5 if method == "tracer" else 1.0)
    # seed 42: TRACER logs only per-problem tokens, (100 + 150 + 50) * 2 = 600; single-agent GSPO logs the
    # total, whose last value (900) counts: 900 / 600 = 1.5
    fit_run(out, "tracer", [per_problem([100, 150, 50])])
    fit_run(out, "single_agent_gspo", [[{"step": i, "train/completion_tokens_per_problem": 100,
                                         "train/generated_tokens_total": t} for i, t in enumerate([200, 500, 900])]])
    # seed 7: TRACER's fit was resumed at step 2, so the newer log replaces the older one's step 2 (999):
    # (80 + 120 + 100) * 2 = 600; single-agent GSPO 630: 630 / 600 = 1.05
    fit_run(out, "tracer_seed7", [per_problem([80, 120, 999]), per_problem([100], first_step=2)])
    fit_run(out, "single_agent_gspo_seed7", [[{"step": 0, "train/generated_tokens_total": 630}]])
    (out / "timings.txt").write_text(TIMINGS)
    return out


def wilson(right, n, z=1.959964):
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_holm_of_a_known_set(released):
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> kept at 0.06 (monotone)
    assert released.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert released.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 * 2 capped at 1, then kept
    assert released.holm([]) == []


def test_complete_study(released, complete, tmp_path):
    report = tmp_path / "report"
    released.main([str(complete), str(report)])
    result = json.loads((report / "released.json").read_text())
    assert result["missing"] == []

    authors42 = result["protocols"]["authors"]["42"]
    tracer, single = authors42["accuracy"]["tracer"], authors42["accuracy"]["single_agent_gspo"]
    assert tracer["basic_arithmetic"]["accuracy"] == pytest.approx(0.4)  # 4 of 10
    assert single["basic_arithmetic"]["accuracy"] == pytest.approx(1.0)  # 10 of 10
    assert (tracer["basic_arithmetic"]["ci_low"], tracer["basic_arithmetic"]["ci_high"]) == pytest.approx(wilson(4, 10))
    assert tracer["products"]["accuracy"] == pytest.approx(0.5)  # 2 of 4
    assert tracer["gcd"]["accuracy"] == pytest.approx(0.75)  # 3 of 4
    # pooled: 8 problems, the families' uids (both 0-3) kept apart: TRACER 2 + 3 = 5, single-agent 4 + 1 = 5
    pooled = released.POOLED
    assert tracer[pooled]["problems"] == 8 and tracer[pooled]["accuracy"] == pytest.approx(5 / 8)
    assert single[pooled]["accuracy"] == pytest.approx(5 / 8)

    difference = authors42["difference"]
    basic = difference["basic_arithmetic"]
    assert basic["difference"] == pytest.approx(0.6)  # (6 - 0) / 10
    assert (basic["only_method_right"], basic["only_reference_right"]) == (6, 0)
    # exact McNemar: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)
    assert difference["basic_arithmetic"]["p_value"] == pytest.approx(2 / 2**6)  # b = 6, c = 0
    assert difference["products"]["p_value"] == pytest.approx(2 / 2**2)  # b = 2, c = 0
    assert difference[pooled]["p_value"] == 1.0  # b = c = 2: 2 * (1 + 4 + 6) / 16 > 1, capped
    seed7 = result["protocols"]["authors"]["7"]["difference"]["basic_arithmetic"]
    assert seed7["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)  # b = 9, c = 1

    # Holm over the 16 differences (2 protocols x 2 seeds x 4 test sets): the three smallest are
    # 1/128 (today, 42) * 16, 22/1024 (authors, 7) * 15 and 1/32 (authors, 42) * 14; then eight of 0.5 * 13 > 1
    assert result["holm"]["family_size"] == 16
    today42 = result["protocols"]["today"]["42"]["difference"]["basic_arithmetic"]
    assert today42["p_value"] == pytest.approx(2 / 2**8)  # b = 8, c = 0
    assert today42["p_holm"] == pytest.approx(16 / 128)
    assert seed7["p_holm"] == pytest.approx(15 * 22 / 1024)
    assert difference["basic_arithmetic"]["p_holm"] == pytest.approx(14 / 32)
    assert difference["products"]["p_holm"] == 1.0
    today7 = result["protocols"]["today"]["7"]["difference"]["basic_arithmetic"]
    assert today7["difference"] == 0 and today7["p_value"] == 1.0 and today7["p_holm"] == 1.0

    cost = authors42["test_cost"]
    assert cost["tracer"]["gcd"] == {"tokens_per_problem": 50.0, "calls_per_problem": 1.5}
    assert cost["single_agent_gspo"][pooled]["tokens_per_problem"] == pytest.approx(20.0)

    tokens = result["training_tokens"]
    assert tokens["42"]["tracer"]["tokens"] == 600 and tokens["42"]["single_agent_gspo"]["tokens"] == 900
    assert tokens["42"]["ratio"] == pytest.approx(1.5)
    assert tokens["42"]["single_agent_budget"] == 600
    assert tokens["7"]["tracer"]["tokens"] == 600 and tokens["7"]["tracer"]["batches"] == 3
    assert tokens["7"]["ratio"] == pytest.approx(1.05)

    minutes = result["minutes"]
    assert minutes["tracer"] == {"kind": "fit", "minutes": 30.0, "intervals": 1, "unfinished": 0}
    # the first start was interrupted (started again before it ended): only the second one's 15 minutes count
    assert minutes["single_agent_gspo"] == {"kind": "fit", "minutes": 15.0, "intervals": 1, "unfinished": 1}
    assert minutes["tracer.authors"]["minutes"] == pytest.approx(5.5)
    assert minutes["tracer_seed7.today"] == {"kind": "test", "minutes": 0.0, "intervals": 0, "unfinished": 1}

    page = (report / "released.md").read_text()
    assert "| 42 | basic_arithmetic | 0.400 (" in page
    assert "+0.600 (" in page and "| 0.031 | 0.438 |" in page
    assert "| 42 | 600 | 900 | 1.50× | 600 |" in page
    assert "family of all 16" in page and "Missing" not in page


def test_a_study_still_running(released, tmp_path):
    out = tmp_path / "released"
    write_tested(out, "tracer.authors", {"basic_arithmetic": {0, 1, 2}}, done=False)
    fit_run(out, "tracer", [per_problem([10])])
    report = tmp_path / "report"
    released.main([str(out), str(report)])  # returns: the shell's exit status is 0
    result = json.loads((report / "released.json").read_text())
    assert set(result["missing"]) == {
        "tracer.authors: no test records of products, gcd",
        *(f"{run}.{protocol}: not run yet" for protocol in ("authors", "today")
          for run in ("tracer", "single_agent_gspo", "tracer_seed7", "single_agent_gspo_seed7")
          if (run, protocol) != ("tracer", "authors")),
        "single_agent_gspo: not fitted yet", "tracer_seed7: not fitted yet",
        "single_agent_gspo_seed7: not fitted yet", "timings.txt: not written yet"}
    authors42 = result["protocols"]["authors"]["42"]
    assert authors42["accuracy"]["tracer"]["basic_arithmetic"]["accuracy"] == pytest.approx(0.3)
    assert authors42["difference"] == {} and result["holm"]["family_size"] == 0
    assert result["training_tokens"]["42"] == {"tracer": {
        "tokens": 20.0, "source": "sum of train/completion_tokens_per_problem × 2", "batches": 1}}  # 10 * 2
    assert any("no .done file" in note for note in result["notes"])
    page = (report / "released.md").read_text()
    assert "**Missing**" in page and "- single_agent_gspo: not fitted yet" in page


def test_nothing_run_yet(released, tmp_path):
    released.main([str(tmp_path / "absent"), str(tmp_path / "report")])
    result = json.loads((tmp_path / "report" / "released.json").read_text())
    assert len(result["missing"]) == 8 + 4 + 1  # every test run, every fit, the timings
