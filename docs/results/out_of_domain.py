"""In domain against out of domain: the learning study's checkpoints on task families training never saw.

    python docs/results/out_of_domain.py RUNS REPORT     # e.g. runs/learning docs/results/learning

Reads the newest test records of each run under RUNS (written by docs/results/run_learning.sh) and writes to
REPORT: ``out_of_domain.md`` (accuracies with 95% Wilson intervals; paired differences against TRACER and against
the base model's CoT with 95% Bonett-Price intervals and exact McNemar p-values, per family and pooled; how much
the main differences move with the second seed), ``out_of_domain.json`` (the same numbers) and
``in_vs_out_of_domain.png`` (in-domain against pooled out-of-domain accuracy per method).

Graded accuracy reads an answer the way the library does: a stated answer ("Final answer: 6", a box), else the
last number of the text. Out of domain the last-number fallback can be right by accident -- "The problem is to find
the GCD of 2, 1." ends in the gold 1 -- so the page also gives the accuracy over answered problems only: a right
answer must follow a final-answer marker, sit in a box, or be the result of an equation that ends the text
("... = 7").
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tracer_pl.grading.text import clean_text, final_answer_line, last_boxed
from tracer_pl.reporting.report import correctness
from tracer_pl.reporting.statistics import mcnemar_p, paired_difference_interval, wilson_interval

IN_DOMAIN = "basic_arithmetic"
FAMILIES = ("products", "gcd")
POOLED = "out of domain (both)"
METHODS = {  # run directory -> label
    "before_cot": "base model, CoT",
    "before_tracer": "TRACER before training",
    "tracer": "TRACER",
    "single_agent_gspo": "single-agent GSPO, token-matched",
    "single_agent_gspo_1epoch": "single-agent GSPO, step-matched",
    "ablation_no_reviewer": "ablation: no reviewer",
    "ablation_no_proposer_controller": "ablation: no proposer controller",
    "ablation_no_counterfactual": "ablation: no counterfactual",
    "ablation_no_vote_state": "ablation: no vote in state",
    "tracer_seed7": "TRACER, seed 7",
    "single_agent_gspo_seed7": "single-agent GSPO, token-matched, seed 7",
}
BASE, TRACER = "before_cot", "tracer"
SEEDS = {42: ("tracer", "single_agent_gspo"), 7: ("tracer_seed7", "single_agent_gspo_seed7")}


def final_text(record: dict) -> str:
    """The text whose answer ended pending: the last proposal that replaced it, else the first turn's text."""
    proposals = [t for t in record["turns"] if t.get("replaced_pending") and t.get("text")]
    if proposals:
        return proposals[-1]["text"]
    return next((t["text"] for t in record["turns"] if t.get("text")), "")


_EQUATION_RESULT = re.compile(r"=\s*-?\d+(?:\.\d+)?\s*\.?\s*$")


def is_answered(text: str) -> bool:
    """Whether the text gives an answer: after a final-answer marker, in a box, or as the result of a final equation.

    What is left is the last-number fallback on text that restates the problem or stops mid-way.
    """
    return (final_answer_line(text) is not None or last_boxed(clean_text(text)) is not None
            or _EQUATION_RESULT.search(text.strip()) is not None)


def answered(record: dict) -> bool:
    """Right, and the answer was given (:func:`is_answered`), not an accidental last number."""
    return bool(record["correct"]) and is_answered(final_text(record))


def outcomes(runs: Path, strict: bool = False) -> dict[str, dict[str, dict[str, bool]]]:
    """For each run, test set and problem: right or not; the out-of-domain families also pooled (:data:`POOLED`)."""
    found = {}
    for run in METHODS:
        graded = correctness(runs / run, grade=answered if strict else None)
        sets = {k: v for k, v in graded.items() if "@" not in k}
        if not sets:
            continue
        if all(f in sets for f in FAMILIES):
            sets[POOLED] = {uid: ok for f in FAMILIES for uid, ok in sets[f].items()}
        found[run] = sets
    return found


def accuracy(results: dict[str, bool]) -> dict[str, float]:
    """Accuracy with its 95% Wilson interval."""
    n, right = len(results), sum(results.values())
    low, high = wilson_interval(right, n)
    return {"problems": n, "accuracy": right / n, "ci_low": low, "ci_high": high}


def paired(method: dict[str, bool], reference: dict[str, bool]) -> dict[str, float]:
    """The paired difference on the shared problems, its 95% Bonett-Price interval and the McNemar p-value."""
    shared = sorted(method.keys() & reference.keys())
    b = sum(method[u] and not reference[u] for u in shared)
    c = sum(reference[u] and not method[u] for u in shared)
    low, high = paired_difference_interval(b, c, len(shared))
    return {"problems": len(shared), "difference": (b - c) / len(shared), "ci_low": low, "ci_high": high,
            "only_method_right": b, "only_reference_right": c, "p_value": mcnemar_p(b, c)}


def _acc_cell(a: dict[str, float] | None) -> str:
    return "—" if a is None else f"{a['accuracy']:.3f} ({a['ci_low']:.3f}–{a['ci_high']:.3f})"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _diff_cell(d: dict[str, float] | None) -> str:
    if d is None:
        return "—"
    return f"{d['difference']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f}), {_p(d['p_value'])}"


def analyse(runs: Path) -> dict:
    """Every number of the page, as plain data."""
    found = outcomes(runs)
    sets = [IN_DOMAIN, *FAMILIES, POOLED]
    table = {run: {s: accuracy(found[run][s]) for s in sets if s in found[run]} for run in found}
    strict = outcomes(runs, strict=True)
    answered = {run: {s: accuracy(strict[run][s]) for s in sets if s in strict[run]} for run in strict}
    answered_against_base = {
        run: {s: paired(strict[run][s], strict[BASE][s]) for s in sets if s in strict[run] and s in strict[BASE]}
        for run in strict if run != BASE and BASE in strict}
    against = {}
    for reference in (TRACER, BASE):
        if reference not in found:
            continue
        against[reference] = {
            run: {s: paired(found[run][s], found[reference][s]) for s in sets
                  if s in found[run] and s in found[reference]}
            for run in found if run != reference}
    seeds = {}
    for seed, (tracer, single) in SEEDS.items():
        pairs = (("TRACER − base CoT", tracer, BASE), ("single-agent GSPO − base CoT", single, BASE),
                 ("single-agent GSPO − TRACER", single, tracer))
        seeds[seed] = {  # the differences whose runs exist (a seed's run may still be missing)
            f"{name} ({s})": paired(found[a][s], found[b][s])
            for name, a, b in pairs if a in found and b in found
            for s in (IN_DOMAIN, POOLED) if s in found[a] and s in found[b]}
    return {"accuracy": table, "paired": against, "seeds": seeds, "answered_accuracy": answered,
            "answered_paired_base": answered_against_base}


def markdown(result: dict) -> str:
    """The page's tables."""
    lines = ["# In domain and out of domain", "",
             f"In domain: `{IN_DOMAIN}` (the training family). Out of domain: `{'`, `'.join(FAMILIES)}`, pooled as "
             f"\"{POOLED}\". Accuracies carry 95% Wilson intervals; differences 95% Bonett–Price intervals and exact "
             "McNemar p-values.", "",
             "| method | in domain | " + " | ".join(FAMILIES) + f" | {POOLED} |",
             "|---|---|" + "---|" * (len(FAMILIES) + 1)]
    for run, sets in result["accuracy"].items():
        cells = [_acc_cell(sets.get(s)) for s in (IN_DOMAIN, *FAMILIES, POOLED)]
        lines.append(f"| {METHODS[run]} | " + " | ".join(cells) + " |")
    for reference, rows in result["paired"].items():
        lines += ["", f"## Paired against {METHODS[reference]}", "",
                  "| method | in domain | " + " | ".join(FAMILIES) + f" | {POOLED} |",
                  "|---|---|" + "---|" * (len(FAMILIES) + 1)]
        for run, sets in rows.items():
            cells = [_diff_cell(sets.get(s)) for s in (IN_DOMAIN, *FAMILIES, POOLED)]
            lines.append(f"| {METHODS[run]} | " + " | ".join(cells) + " |")
    lines += ["", "## Answered problems only", "",
              "Right only when the right answer follows a final-answer marker, sits in a box or ends the text as an "
              "equation's result (no accidental last number); differences against the base model's CoT graded the "
              "same way.", "",
              "| method | in domain | " + " | ".join(FAMILIES) + f" | {POOLED} | {POOLED}: against {METHODS[BASE]} |",
              "|---|---|" + "---|" * (len(FAMILIES) + 2)]
    for run, sets in result["answered_accuracy"].items():
        cells = [_acc_cell(sets.get(s)) for s in (IN_DOMAIN, *FAMILIES, POOLED)]
        cells.append(_diff_cell(result["answered_paired_base"].get(run, {}).get(POOLED)))
        lines.append(f"| {METHODS[run]} | " + " | ".join(cells) + " |")
    if any(result["seeds"].values()):
        seeds = list(result["seeds"])
        names = list(dict.fromkeys(name for values in result["seeds"].values() for name in values))
        lines += ["", "## The main differences under two seeds", "",
                  "| difference | " + " | ".join(f"seed {s}" for s in seeds) + " | moved by |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for name in names:
            values = [result["seeds"][s].get(name) for s in seeds]
            moved = (f"{values[-1]['difference'] - values[0]['difference']:+.3f}"
                     if len(values) > 1 and all(values) else "—")
            lines.append(f"| {name} | " + " | ".join(_diff_cell(v) for v in values) + f" | {moved} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """In-domain against pooled out-of-domain accuracy, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6))
    for run, sets in result["accuracy"].items():
        if IN_DOMAIN not in sets or POOLED not in sets:
            continue
        x, y = sets[IN_DOMAIN], sets[POOLED]
        marker = "s" if run in (BASE, "before_tracer") else ("*" if run.startswith("tracer") else "o")
        ax.errorbar(x["accuracy"], y["accuracy"], xerr=[[x["accuracy"] - x["ci_low"]], [x["ci_high"] - x["accuracy"]]],
                    yerr=[[y["accuracy"] - y["ci_low"]], [y["ci_high"] - y["accuracy"]]], fmt=marker, capsize=3,
                    markersize=9 if marker == "*" else 6, label=METHODS[run])
    if BASE in result["accuracy"]:
        base = result["accuracy"][BASE]
        ax.axhline(base[POOLED]["accuracy"], color="grey", linestyle=":", linewidth=1)
        ax.axvline(base[IN_DOMAIN]["accuracy"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"in-domain accuracy ({IN_DOMAIN})")
    ax.set_ylabel(f"out-of-domain accuracy ({' + '.join(FAMILIES)})")
    ax.set_title("In domain against out of domain (dotted: the base model's CoT)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    """``RUNS REPORT``: write the page, its JSON and its plot."""
    if len(argv) != 2:
        raise SystemExit(__doc__)
    runs, out = Path(argv[0]), Path(argv[1])
    result = analyse(runs)
    if not result["accuracy"]:
        raise SystemExit(f"{runs}: no test records of the study's runs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "out_of_domain.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "out_of_domain.md").write_text(markdown(result))
    plot(result, out / "in_vs_out_of_domain.png")
    print(f"wrote {out / 'out_of_domain.md'}, out_of_domain.json and in_vs_out_of_domain.png")


if __name__ == "__main__":
    main(sys.argv[1:])
