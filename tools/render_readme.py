"""Render the README's numbers from the files that hold them, so they cannot drift.

Each section sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in README.md or
the ``docs/`` page that ``PAGES`` names:

- ``suite``: what ``make test`` runs (tests collected now) and how long it took when last timed (``bench/results/test_suite.json``, by
  ``tools/time_test_suite.py``);
- ``headline``: the README's compact results table (``results/small/metrics/results.csv``);
- ``reproduce-time``: how long ``make reproduce`` trains, from the committed editors' own training
  logs (``checkpoints/small/*/train_log_*.csv``, ``retrieval_stage.json``);
- ``train-table``: validation of the committed editors during their training (their own logs,
  ``checkpoints/small/*/train_valid_*.csv`` and ``gate_calibration.csv``);
- ``retrain-check``: notebook 02's retrain in ``results/small`` against the committed editors
  (``results/small/metrics/retrain_check.json``, by ``tools/retrain_check.py``);
- ``eval-table``: the small evaluation (``results/small/metrics/results.csv``);
- ``growth-table``: memory growth of the committed editors (``results/small/metrics/growth.csv``);
- ``ladder``: the retrieval ladder (``studies/results/retrieval_ladder.json``);
- ``growth-leads``: the LM-level memory-growth leads (``studies/results/large_memory.json``);
- ``long-edits``: the long-edits study (``studies/results/long_edits.json``);
- ``user-probe``: a user's own edits, paraphrases and neighbours (``studies/results/user_probe.json``);
- ``lifelong-search``: GRACE's and WISE's validation search (``studies/results/lifelong_search.json``);
- ``lifelong-cost``: seconds and bytes per edit, one at a time, of the working editor, GRACE, WISE,
  FT-L and MEMIT (``bench/results/lifelong_cost.json``);
- ``working-bench``: the working editor's cost (``bench/results/working_memory.json``,
  ``inference_overhead.json``);
- ``claims``: the paper's claims C1-C4 and the kit's C5 with intervals and verdicts, computed again from the
  per-request results in ``results/small/metrics/`` (``medrek.evaluate.claims``, notebook 05's seed).

    python tools/render_readme.py           # rewrite README.md in place
    python tools/render_readme.py --check   # exit 1 if README.md differs (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "results" / "small" / "metrics"
SUITE = ROOT / "bench" / "results" / "test_suite.json"
TRAINED = ["medrek-lm-embedding", "recipe-lm-embedding", "medrek", "recipe"]
EVAL_SPLIT = "test-first200"
EVAL_METHODS = ["unedited", "medrek-lm-embedding", "recipe-lm-embedding", "medrek", "recipe", "ike", "ft-l", "memit",
                "grace", "wise"]


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def collected_tests() -> tuple[int, int]:
    """(all tests, slow tests) as pytest collects them now."""
    def count(*extra: str) -> int:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra,
                              "tests"], cwd=ROOT, capture_output=True, text=True)
        found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", out.stdout)
        if not found:
            raise RuntimeError(f"pytest --collect-only gave no count:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return int(found.group(1))
    return count(), count("-m", "slow")


def suite() -> str:
    tests, slow = collected_tests()
    lines = [f"`make test` runs **{tests} tests** (`pytest tests`; {slow} of them `slow`, on the real offline "
             "weights), then the smoke pipeline (every notebook executed once, on tiny random models) and a check "
             "of its outputs against `tests/fixtures/smoke_reference.json`."]
    if SUITE.exists():
        t = json.loads(SUITE.read_text())
        if "make_test_s" in t:
            lines.append(f"Last timed from a clean clone on {t['date']} ({t['machine']}, load average "
                         f"{t['load_1min']} while it ran, its own work included; {t['tests']} tests passed): `make test` "
                         f"**{t['make_test_s'] / 60:.1f} min** (unit tests {t['unit_s']:.0f} s, smoke pipeline "
                         f"{t['smoke_s']:.0f} s, output check {t['smoke_check_s']:.0f} s) after a set-up of "
                         f"{t['setup_s'] / 60:.1f} min; `make quickstart` {t['quickstart_s'] / 60:.1f} min with the "
                         "venv in place.")
        else:
            lines.append(f"Not timed since the notebooks run once (the last timing, {t['date']}, ran them twice).")
    return "\n".join(lines)


CHECKPOINTS = ROOT / "checkpoints" / "small"


def training_minutes(folder: str) -> float:
    """Minutes of optimizer steps of the committed editor in ``checkpoints/small/<folder>`` (its training log)."""
    (log,) = (CHECKPOINTS / folder).glob("train_log_*.csv")
    return float(pd.read_csv(log)["seconds"].sum()) / 60


def stage_minutes(method: str) -> float | None:
    """Minutes of the committed editor's retrieval stage (query head, verifier, calibration), if it had one."""
    path = CHECKPOINTS / method / "retrieval_stage.json"
    return json.loads(path.read_text("utf-8"))["seconds"] / 60 if path.exists() else None


def reproduce_time() -> str:
    working = f"{training_minutes('medrek-lm-embedding'):.0f} minutes of steps for the working `medrek-lm-embedding`"
    stage = stage_minutes("medrek-lm-embedding")
    if stage is not None:
        working += f" then {stage:.0f} of its retrieval stage (query head, cross-encoder verifier, calibration)"
    return (f"`make reproduce` runs every notebook with `params/small.yaml`: four editors of 300 steps ({working}; "
            f"{training_minutes('recipe-lm-embedding'):.0f} for its twin `recipe-lm-embedding`; "
            f"{training_minutes('medrek'):.0f} and {training_minutes('recipe'):.0f} for the paper's MedREK and RECIPE, "
            "partly shared with test runs), as the committed editors' training logs in `checkpoints/small/` record "
            "them on 2 cores (today's trainer takes about half as long: [a retrain from scratch]"
            "(docs/training.md#a-retrain-from-scratch)), and the evaluation on the first 200 test requests (notebooks 03-05; their measured "
            "times are in the executed notebooks in `results/small/notebooks/`). `make long-edits` fine-tunes the "
            "long-edit editor from the committed working editor "
            f"({training_minutes('medrek-lm-embedding-long'):.0f} minutes of steps).")


def train_table() -> str:
    rows = ["| method | step | gate | efficacy | generality | locality | retrieval (prompt) | retrieval (rephrase) "
            "| false retrieval (locality) |", "|---|---|---|---|---|---|---|---|---|"]
    for method in TRAINED:
        path = CHECKPOINTS / method / f"train_valid_{method}.csv"
        calibration_path = CHECKPOINTS / method / "gate_calibration.csv"
        calibration = pd.read_csv(calibration_path) if calibration_path.exists() else None
        grid = pd.read_csv(path).pivot_table(index="step", columns="metric", values="value")
        for step, v in grid.iterrows():
            rows.append(f"| {method} | {step} | prototype (paper) | {fmt(v['efficacy'])} | {fmt(v['generality'])} "
                        f"| {fmt(v['locality'])} | {fmt(v['retrieval_prompt'], 2)} | {fmt(v['retrieval_rephrase'], 2)} "
                        f"| {fmt(v['false_retrieval_locality'], 2)} |")
        if calibration is not None and method in set(calibration["method"]):
            c = calibration.set_index("method").loc[method]
            rows.append(f"| {method} | {grid.index.max()} | calibrated (margin {c['min_margin']:.2f}) "
                        f"| {fmt(c['valid_efficacy_after'])} | {fmt(c['valid_generality_after'])} "
                        f"| {fmt(c['valid_locality_after'])} | | | |")
    return "\n".join(rows)


def retrain_check() -> str:
    """Committed / retrained, per editor (``tools/retrain_check.py``)."""
    check = json.loads((SMALL / "retrain_check.json").read_text("utf-8"))
    rows = ["| method | logged steps equal to the bit | minutes of steps | efficacy | generality | locality "
            "| retrieval (prompt) | retrieval (rephrase) | false retrieval (locality) | gate | trained weights |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in TRAINED:
        c = check[method]
        log, minutes, editor = c["log"], c["minutes_of_steps"], c["editor"]
        steps = f"{log['steps_identical']} of {log['steps_compared']}"
        if log["first_different_step"] is not None:
            steps += f" (first at step {log['first_different_step']})"
        old, new = c["validation"]["committed"], c["validation"]["retrained"]
        cells = " | ".join(f"{fmt(old[k])} / {fmt(new[k])}" for k in ("efficacy", "generality", "locality",
                                                                        "retrieval_prompt", "retrieval_rephrase",
                                                                        "false_retrieval_locality"))
        gate = f"{editor['committed']['gate']} / {editor['retrained']['best']['gate'] or '-'}"
        same = editor["identical_weights"]
        weights = "not on this disk" if same is None else f"identical ({same} checkpoint)" if same else "differ"
        rows.append(f"| {method} | {steps} | {minutes['committed']:.0f} / {minutes['retrained']:.0f} | {cells} "
                    f"| {gate} | {weights} |")
    return "\n".join(rows)


def eval_table() -> str:
    results = pd.read_csv(SMALL / "results.csv")
    part = results[results["split"] == EVAL_SPLIT]
    rows = ["| method | protocol | efficacy | generality | locality | Avg | fluency | retr. prompt | retr. rephrase "
            "| fires on locality |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in EVAL_METHODS:
        for protocol, batch in (("single", 1), ("batch", 100)):
            sel = part[(part["method"] == method) & (part["protocol"] == protocol) & (part["batch_size"] == batch)]
            if sel.empty:
                continue
            v = sel.set_index("metric")["value"]
            label = "single" if protocol == "single" else f"batch-{batch}"
            rows.append(f"| {method} | {label} | {fmt(v.get('efficacy'))} | {fmt(v.get('generality'))} "
                        f"| {fmt(v.get('locality'))} | {fmt(v.get('avg'))} | {fmt(v.get('fluency'), 2)} "
                        f"| {fmt(v.get('retrieved_prompt'))} | {fmt(v.get('retrieved_rephrase'))} "
                        f"| {fmt(v.get('fired/locality'))} |")
    return "\n".join(rows)


GROWTH_METHODS = ["medrek-lm-embedding", "ike", "medrek", "recipe", "grace", "wise", "ft-l", "memit"]


GROWTH_COLUMNS = [("efficacy", "efficacy"), ("generality", "generality"), ("locality", "locality"),
                  ("locality/distinct", "locality (distinct)"), ("locality/neighbour", "neighbour locality"),
                  ("retrieved_prompt", "own edit fires (prompt)"), ("retrieved_rephrase", "own edit fires (rephrase)"),
                  ("fired/locality", "unrelated question fires an edit"), ("fired/distinct", "distinct fires"),
                  ("fired/neighbour", "neighbour fires"), ("changed_when_fired/distinct", "changed if misfired (distinct)"),
                  ("changed_when_fired/neighbour", "changed if misfired (neighbour)")]


def growth_table() -> str:
    path = SMALL / "growth.csv"
    results = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["method", "metric"])
    columns = [(m, name) for m, name in GROWTH_COLUMNS if m in set(results["metric"]) or m in
               ("efficacy", "generality", "locality", "retrieved_prompt", "retrieved_rephrase", "fired/locality")]
    rows = ["| method | edits stored | " + " | ".join(name for _, name in columns) + " |",
            "|---|---:|" + "---|" * len(columns)]
    if not path.exists():
        return "\n".join(rows + ["| (not measured yet) |" + " |" * (len(columns) + 1)])
    for method in [m for m in GROWTH_METHODS if m in set(results["method"])]:
        grid = results[results["method"] == method].pivot_table(index="eval_at", columns="metric", values="value")
        for stored, v in grid.iterrows():
            rows.append(f"| {method} | {stored:,} | " + " | ".join(fmt(v.get(m)) for m, _ in columns) + " |")
    return "\n".join(rows)


def ladder() -> str:
    sys.path.insert(0, str(ROOT / "studies"))
    from render_retrieval_ladder import RESULTS, changes_table, ladder_table

    data = json.loads(RESULTS.read_text())
    return f"{ladder_table(data)}\n\n{changes_table(data)}"


def long_edits() -> str:
    sys.path.insert(0, str(ROOT / "studies"))
    from render_long_edits import RESULTS, long_edits_table

    return "\n".join(long_edits_table(json.loads(RESULTS.read_text()))).rstrip()


def growth_leads() -> str:
    sys.path.insert(0, str(ROOT / "studies"))
    from render_large_memory import RESULTS, growth_leads_table

    return growth_leads_table(json.loads(RESULTS.read_text()))


def user_probe() -> str:
    sys.path.insert(0, str(ROOT / "studies"))
    from render_user_probe import RESULTS, render

    return render(json.loads(RESULTS.read_text()))


def lifelong_search() -> str:
    sys.path.insert(0, str(ROOT / "studies"))
    from render_lifelong_search import RESULTS, render

    return render(json.loads(RESULTS.read_text()))


def headline() -> str:
    """The README's compact table: single and batch-100 efficacy / generality / locality."""
    results = pd.read_csv(SMALL / "results.csv")
    rows = ["| method | efficacy (1 / 100 stored) | generality (1 / 100) | locality (1 / 100) |", "|---|---|---|---|"]
    part = results[(results["split"] == EVAL_SPLIT) & (results["metric"].isin(["efficacy", "generality", "locality"]))]
    for method in [m for m in EVAL_METHODS if m in set(part["method"])]:
        cells = []
        for metric in ("efficacy", "generality", "locality"):
            values = []
            for protocol, batch in (("single", 1), ("batch", 100)):
                hit = part[(part["method"] == method) & (part["metric"] == metric) & (part["protocol"] == protocol)
                           & (part["batch_size"] == batch)]
                values.append(fmt(hit["value"].iloc[-1]) if len(hit) else "-")
            cells.append(" / ".join(values))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + growth_headline()


def growth_headline() -> str:
    """The headline's second table, what a user meets as edits pile up: each growth method with
    1,000 and 6,000 edits stored, locality on MedVersa's prompts, on distinct ones and on the kit's
    neighbour questions (empty when the growth results lack them)."""
    path = SMALL / "growth.csv"
    if not path.exists():
        return ""
    results = pd.read_csv(path)
    if "locality/neighbour" not in set(results["metric"]):
        return ""
    metrics = [("efficacy", "efficacy"), ("generality", "generality"), ("locality", "locality"),
               ("locality/distinct", "locality, distinct prompts"), ("locality/neighbour", "locality, neighbour questions"),
               ("fired/neighbour", "neighbours that fire an edit")]
    rows = ["", "", "With edits piling up (the same 200 requests, more released edits stored; "
            "[memory growth](docs/evaluation.md#memory-growth-does-retrieval-hold-with-thousands-of-edits)):", "",
            "| method | stored | " + " | ".join(name for _, name in metrics) + " |", "|---|---:|" + "---|" * len(metrics)]
    for method in [m for m in GROWTH_METHODS if m in set(results["method"])]:
        grid = results[results["method"] == method].pivot_table(index="eval_at", columns="metric", values="value")
        for stored in (1000, 6000):
            if stored in grid.index:
                v = grid.loc[stored]
                rows.append(f"| {method} | {stored:,} | " + " | ".join(fmt(v.get(m)) for m, _ in metrics) + " |")
    return "\n".join(rows)


def lifelong_cost() -> str:
    """What one edit costs each method, edited one at a time on the same LM (seconds on this
    JSON's machine, bytes of the saved state)."""
    data = json.loads((ROOT / "bench" / "results" / "lifelong_cost.json").read_text("utf-8"))
    n = data["n_edits"]
    rows = [f"| method ({data['n_edits']} MedVersa valid edits in order, {data['machine']['cores']}-core CPU) "
            f"| seconds per edit | x working editor | saved state after {n} edits | bytes per further edit |",
            "|---|---:|---:|---:|---:|"]
    for method in [m for m in GROWTH_METHODS if m in data]:
        r = data[method]
        ratio = r.get("seconds_vs_working_editor")
        rows.append(f"| {method} | {r['seconds_per_edit']:.3f} | {'-' if ratio is None else f'{ratio:,.0f}'} "
                    f"| {r[f'bytes_after_{n}'] / 1e3:,.1f} KB | {max(r['bytes_per_further_edit'], 0.0):,.0f} |")
    return "\n".join(rows)


def working_bench() -> str:
    """The README's compact benchmark table of the working editor: bytes and RAM per stored edit,
    and the overhead users feel."""
    memory = json.loads((ROOT / "bench" / "results" / "working_memory.json").read_text("utf-8"))
    overhead = json.loads((ROOT / "bench" / "results" / "inference_overhead.json").read_text("utf-8"))
    rows = ["| what (`medrek-lm-embedding`, 2-core CPU) | measured | goal |", "|---|---:|---:|"]
    for r in memory["rows"]:
        if r["stored"] == 1_000_000:
            goal = f"{memory['goal_bytes_per_edit_384d']:,}" if r["key_dim"] == 384 else "-"
            rows.append(f"| bytes per stored edit, {r['key_dim']}-d key (key + token ids) | {r['memory_bytes_per_edit']:,.0f} "
                        f"| {goal} |")
            rows.append(f"| resident memory with 1e6 edits stored, {r['key_dim']}-d key | {r['rss_gb']:.2f} GB "
                        f"| {memory['goal_ram_gb_at_1e6']:g} GB |")
    n = f"{overhead['n_edits']:,}"
    rows.append(f"| generation time, edited / unedited ({n} stored, every prompt fires) "
                f"| {overhead['generation_overhead_ratio']:.2f} | {overhead['goal_generation_ratio']:.2f} |")
    rows.append(f"| teacher-forced scoring time, edited / unedited ({n} stored, {overhead['fired_on_scored']} of "
                f"{overhead['n_score']} rows fire) | {overhead['scoring_overhead_ratio']:.2f} "
                f"| {overhead['goal_scoring_ratio']:.2f} |")
    rows.append(f"| scoring time with half the rows unrelated ({overhead['fired_on_mixed']} of {overhead['n_mixed']} "
                f"fire) | {overhead['mixed_scoring_overhead_ratio']:.2f} | - |")
    return "\n".join(rows)


def claims() -> str:
    """The claims table, computed from the per-request results as notebook 05 computes it."""
    import yaml

    from medrek.evaluate.claims import CLAIM_TEXT, claim_table
    from medrek.evaluate.results import read_growth_records, read_per_record
    from medrek.figures.tables import claims_markdown

    seed = yaml.safe_load((ROOT / "params" / "small.yaml").read_text("utf-8"))["seed"]
    per_record = read_per_record([SMALL.parent])
    table = claim_table(per_record[per_record["split"] == EVAL_SPLIT], read_growth_records([SMALL.parent]), seed=seed)
    text = "\n".join(f"- **{claim}**: {what}." for claim, what in CLAIM_TEXT.items())
    return f"{text}\n\n{claims_markdown(table).rstrip()}"


# section -> the page it lives in (relative to the repository root)
SECTIONS = {"suite": suite, "reproduce-time": reproduce_time, "headline": headline, "train-table": train_table, "retrain-check": retrain_check, "eval-table": eval_table,
            "growth-table": growth_table, "ladder": ladder, "claims": claims, "working-bench": working_bench,
            "growth-leads": growth_leads, "long-edits": long_edits,
            "user-probe": user_probe, "lifelong-search": lifelong_search, "lifelong-cost": lifelong_cost}
PAGES = {"suite": "README.md", "reproduce-time": "README.md", "headline": "README.md", "train-table": "docs/training.md", "retrain-check": "docs/training.md",
         "eval-table": "docs/evaluation.md", "growth-table": "docs/evaluation.md", "ladder": "docs/evaluation.md",
         "claims": "README.md", "working-bench": "README.md", "growth-leads": "docs/evaluation.md",
         "long-edits": "docs/benchmarks.md", "user-probe": "docs/evaluation.md",
         "lifelong-search": "docs/evaluation.md", "lifelong-cost": "docs/evaluation.md"}


def render_page(page: str, text: str) -> str:
    """``text`` (the page ``page``) with each of its sections replaced by what the files say now."""
    return render(text, [name for name, where in PAGES.items() if where == page])


def render(text: str, names: list[str] | None = None) -> str:
    """``text`` with every named section (default: all) replaced by what the files say now."""
    for name in names if names is not None else list(SECTIONS):
        make = SECTIONS[name]
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise ValueError(f"README.md lacks the markers {start} ... {end}")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make()}\n{end}{tail}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is not what the files say")
    args = parser.parse_args()
    stale = []
    for page in sorted(set(PAGES.values())):
        path = ROOT / page
        text = path.read_text("utf-8")
        new = render_page(page, text)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new, "utf-8")
    if args.check and stale:
        print(f"{', '.join(stale)} differ from what tools/render_readme.py renders; run it and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
