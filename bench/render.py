"""Render bench/results/*.json as Markdown: bench/results/TABLE.md and the README section
between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.

    python bench/render.py [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f}"


def memory_table(data: dict) -> list[str]:
    lines = ["| stored edits | dim | flat p50 / p99 ms | torch p50 ms | flat / torch | IVF p50 ms | IVF top-1 agree "
             "| HNSW p50 ms | HNSW top-1 agree | flat adds/s | resident bytes/edit (flat) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        ivf, hnsw = r.get("ivf"), r.get("hnsw")
        approx = []
        for entry in (ivf, hnsw):
            approx += [ms(entry["p50_s"]), f"{entry['agreement_top1']:.3f}"] if entry else ["-", "-"]
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {ms(r['flat']['p50_s'])} / {ms(r['flat']['p99_s'])} | {ms(r['torch']['p50_s'])} "
            f"| {r['flat_vs_torch_p50']:.2f} | " + " | ".join(approx)
            + f" | {r['flat']['adds_per_s']:,.0f} | {r['flat']['resident_bytes_per_edit']:,.0f} |")
    for s in data.get("skipped", []):
        lines.append(f"| {s['n']:,} | {s['dim']} | skipped: {s['reason']} |||||||||")
    return lines


def render() -> str:
    out = ["Measured with the scripts in `bench/` (`bench/run.py` runs them all; 2-core CPU unless the JSON says "
           "otherwise; a row exists only for the scripts that have been run); every ratio compares "
           "two numbers of the same run. Latencies are per batch of 16 queries.", ""]
    for name in ("memory_scale_full", "memory_scale"):
        data = load(name)
        if data:
            out += [f"**Edit memory scale** ({name}.json; queries are noisy copies of stored keys, cosine ~0.8):", ""]
            out += memory_table(data) + [""]
            break
    ins = load("edit_insertion")
    if ins:
        out += [f"**Edit insertion** ({ins['lm']}, {ins['n_edits']} MedVersa edits as one batch; one-by-one mean over "
                f"{ins['n_single']}): MedREK {ins['medrek']['batch_edits_per_s']:.1f} edits/s "
                f"({ins['medrek']['single_edit_s'] * 1000:.0f} ms per single edit); FT-L ({ins['ft_steps']} steps, layer "
                f"{ins['ft_layer']}) {ins['ft-l']['batch_s']:.1f} s per batch = **{ins['ft-l_vs_medrek_batch']:.0f}x** "
                f"MedREK, {ins['ft-l_vs_medrek_single']:.0f}x per single edit; MEMIT (layers {ins['memit_layers']}) "
                f"{ins['memit']['batch_s']:.1f} s per batch = **{ins['memit_vs_medrek_batch']:.0f}x**, "
                f"{ins['memit_vs_medrek_single']:.0f}x per single edit, plus a one-off "
                f"{ins['memit_covariance_s']:.0f} s of covariance statistics.", ""]
    inf = load("inference_overhead")
    if inf:
        out += [f"**Inference overhead** ({inf['n_edits']:,} stored edits, {inf['fired_on_queries']}/{inf['n_queries']} "
                f"queries fire): generation ({inf['max_new_tokens']} tokens) edited / unedited = "
                f"**{inf['generation_overhead_ratio']:.3f}**, teacher-forced scoring "
                f"**{inf['scoring_overhead_ratio']:.3f}** (goal <= {inf['goal_ratio']}); retrieval is "
                f"{100 * inf['retrieval_share_generate']:.1f}% of edited generation time and "
                f"{100 * inf['retrieval_share_score']:.1f}% of scoring time.", ""]
    rows = [load("train_throughput_smoke"), load("train_throughput_small")]
    if any(rows):
        out += ["| training config | samples/s (bucketed) | samples/s (one padded forward) | speed-up | s/step | peak RSS MiB |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r:
                out.append(f"| {r['config']} | {r['samples_per_second_bucketed']} | {r['samples_per_second_one_padded_forward']} "
                           f"| {r['speedup_ratio']} | {r['seconds_per_step_bucketed']} | {r['peak_rss_mib']} |")
        out.append("")
    e2e = load("end_to_end")
    if e2e:
        parts = [f"`make test` {e2e['make_test_s']:.0f} s (venv already built), of which the smoke pipeline "
                 f"(every notebook, tiny models) {e2e['smoke_pipeline_s']:.0f} s"]
        out += ["**End to end**: " + ", ".join(parts) + ".", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default=str(HERE.parent / "README.md"))
    args = parser.parse_args()
    text = render()
    (HERE / "results" / "TABLE.md").write_text(text)
    readme = Path(args.readme)
    if readme.exists():
        content = readme.read_text()
        if START in content and END in content:
            head, rest = content.split(START, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{START}\n{text}{END}{tail}")
            print(f"updated {readme}")
    print(text)


if __name__ == "__main__":
    main()
