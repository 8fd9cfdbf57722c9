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


def at_target(entry: dict | None) -> str:
    """The first swept setting reaching the target agreement, or what the widest one reached."""
    if not entry or not entry.get("sweep"):
        return "-"
    knob = next(k for k in entry["sweep"][0] if k not in ("agreement_top1", "p50_s"))
    hit = entry.get("reaches_target_at")
    if hit:
        return f"{knob} {hit[knob]}: {ms(hit['p50_s'])} ms"
    last = entry["sweep"][-1]
    return f"not reached ({last['agreement_top1']:.3f} at {knob} {last[knob]})"


def index_bytes(row: dict) -> str:
    sizes = [row[k].get("index_bytes_per_edit") if k in row else None for k in ("flat", "ivf", "hnsw")]
    return " / ".join("-" if b is None else f"{b:,.0f}" for b in sizes)


def memory_table(data: dict) -> list[str]:
    lines = ["| stored edits | dim | exact p50 / p99 ms | FAISS default p50 ms | torch p50 ms | exact / torch "
             "| IVF p50 ms | IVF top-1 agree | IVF for 0.99 | HNSW p50 ms | HNSW top-1 agree | HNSW for 0.99 "
             "| exact adds/s | index bytes/edit (exact / IVF / HNSW) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|"]
    for r in data["rows"]:
        approx = []
        for entry in (r.get("ivf"), r.get("hnsw")):
            approx += [ms(entry["p50_s"]), f"{entry['agreement_top1']:.3f}", at_target(entry)] if entry else ["-"] * 3
        flat = r["flat"]
        default = flat.get("faiss_default_dispatch")
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {ms(flat['p50_s'])} / {ms(flat['p99_s'])} "
            f"| {ms(default['p50_s']) if default else '-'} | {ms(r['torch']['p50_s'])} "
            f"| {r['flat_vs_torch_p50']:.2f} | " + " | ".join(approx) + f" | {flat['adds_per_s']:,.0f} "
            f"| {index_bytes(r)} |")
    for s in data.get("skipped", []):
        keys_gb = 4 * s["n"] * s["dim"] / 1e9
        lines.append(f"| {s['n']:,} | {s['dim']} | skipped: {s['reason']} (the keys alone are {keys_gb:.1f} GB) |"
                     + "|" * 11)
    return lines


def _machine(data: dict) -> str:
    m = data.get("machine", {})
    return f"{m.get('cores', '?')}-core {m.get('cpu', 'CPU')}, torch {m.get('torch', '?')}"


def _share(shares: dict | None, phase: str) -> str:
    value = (shares or {}).get(phase)
    return "-" if value is None else f"{value:.1%}"


def training_tables(cpu_rows: list[dict | None], gpu: dict | None) -> list[str]:
    """CPU and GPU training throughput side by side, each with the machine that measured it."""
    out = []
    if any(cpu_rows):
        out += ["| training config | machine | samples/s (bucketed) | samples/s (one padded forward) | speed-up | s/step "
                "| data / forward / backward / optimizer share | peak RSS MiB |",
                "|---|---|---:|---:|---:|---:|---|---:|"]
        for r in cpu_rows:
            if r:
                shares = r.get("step_share_bucketed")
                split = " / ".join(_share(shares, p) for p in ("data", "forward", "backward", "optimizer"))
                out.append(f"| {r['config']} | {_machine(r)} | {r['samples_per_second_bucketed']} "
                           f"| {r['samples_per_second_one_padded_forward']} | {r['speedup_ratio']} "
                           f"| {r['seconds_per_step_bucketed']} | {split} | {r['peak_rss_mib']} |")
        out.append("")
        for r in cpu_rows:
            cmp = (r or {}).get("compare")
            if cmp:
                before, after = cmp["before"], cmp["after"]
                out.append(f"Before / after the pre-tokenised step ({r['config']}, revision {cmp['ref']} vs this tree, "
                           f"alternating fresh processes, best of {cmp['repeat']}): {before['samples_per_second']} -> "
                           f"{after['samples_per_second']} samples/s (**{cmp['after_over_before']}x**); inside the timed "
                           f"steps, tokenisation {_share(before['phases'], 'in_step_tokenise')} -> "
                           f"{_share(after['phases'], 'in_step_tokenise')} and unedited locality forwards "
                           f"{_share(before['phases'], 'in_step_locality_reference')} -> "
                           f"{_share(after['phases'], 'in_step_locality_reference')} of the step.")
                out.append("")
    if gpu:
        out += [f"GPU training (train_gpu.json; {gpu['device']}, config {gpu['config']}, {_machine(gpu)}):", "",
                "| batch | precision | samples/s | s/step | peak GPU MiB | GPU util % | data / forward / backward / optimizer |",
                "|---:|---|---:|---:|---:|---:|---|"]
        for r in gpu["rows"]:
            split = " / ".join(_share(r["step_share"], p) for p in ("data", "forward", "backward", "optimizer"))
            out.append(f"| {r['batch_size']} | {r['precision']} | {r['samples_per_second']} | {r['seconds_per_step']} "
                       f"| {r['peak_memory_mib']} | {r['gpu_utilisation_percent']} | {split} |")
        out.append("")
    else:
        out += ["GPU training: not measured yet (`bench/train_gpu.py` needs a CUDA device; none was lent to the "
                "session that wrote it).", ""]
    return out


def long_targets_table(data: dict | None) -> list[str]:
    """Scoring speed by target length (bench/long_targets.py)."""
    if not data:
        return []
    lo, hi = min(data["lengths"]), max(data["lengths"])
    out = [f"**Long targets** (long_targets.json; synthetic MedFE-style records, {data['n_records']} per length, "
           "target and both locality answers exactly N LM tokens, single protocol, no fluency; rows/s counts the "
           "prompt, rephrase and two locality rows of each request, the unedited LM's locality rows being the "
           "reference's; share of the wall time in the LM decoder / vocabulary projection / metric / rest):", "",
           "| target tokens | method | rows/s | target tokens/s | LM forward | projection | metric | rest |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        split = r["split"]
        rest = 1 - split.get("lm_forward", 0) - split.get("vocab_projection", 0) - split.get("metric", 0)
        out.append(f"| {r['target_tokens']} | {r['method']} | {r['rows_per_s']:.2f} | {r['target_tokens_per_s']:.0f} "
                   f"| {split.get('lm_forward', 0):.0%} | {split.get('vocab_projection', 0):.0%} "
                   f"| {split.get('metric', 0):.0%} | {rest:.0%} |")
    ratios = data.get(f"tokens_per_s_ratio_{hi}_vs_{lo}", {})
    line = (f"Target tokens/s at {hi} vs {lo} tokens: "
            + ", ".join(f"{m} **{v:.2f}**" for m, v in ratios.items()) + " (goal >= 0.5).")
    check = data.get("check_100x100")
    if check:
        line += (f" {check['records']} records with 100-token targets, unedited, single protocol: scoring "
                 f"{check['scoring_seconds']:.0f} s + locality reference {check['reference_seconds']:.0f} s = "
                 f"**{check['total_seconds']:.0f} s** (goal < {check['target_seconds']} s).")
    return out + ["", line, ""]


def inference_overhead(inf: dict | None) -> list[str]:
    if not inf:
        return []
    if "goal_scoring_ratio" not in inf:  # written before the working preset was the default
        return [f"**Inference overhead** (an earlier run with {inf.get('checkpoint', 'the paper preset')}): generation "
                f"**{inf['generation_overhead_ratio']:.3f}**, scoring **{inf['scoring_overhead_ratio']:.3f}**.", ""]
    mixed = (f"; scoring a mix of those pairs and as many locality prompts ({inf['fired_on_mixed']} of "
             f"{inf['n_mixed']} rows fire) **{inf['mixed_scoring_overhead_ratio']:.3f}**") if "n_mixed" in inf else ""
    if "mixed_generation_overhead_ratio" in inf:
        mixed += (f"; generating for the prompts and as many locality prompts ({inf['fired_on_mixed_queries']} of "
                  f"{inf['n_mixed_queries']} fire) **{inf['mixed_generation_overhead_ratio']:.3f}**")
    return [f"**Inference overhead** ({inf['method']} from `{inf['checkpoint']}`, its memory storing "
            f"{inf['prompt_store']}, {inf['n_edits']:,} stored edits, SmolLM2-135M; best of {inf['repeat']} "
            f"alternating runs, query encoding included): generation ({inf['n_queries']} prompts, "
            f"{inf['max_new_tokens']} tokens, {inf['fired_on_queries']} fire) edited / unedited = "
            f"**{inf['generation_overhead_ratio']:.3f}** (goal <= {inf['goal_generation_ratio']}); teacher-forced "
            f"scoring ({inf['n_score']} pairs, {inf['fired_on_scored']} fire) **{inf['scoring_overhead_ratio']:.3f}** "
            f"(goal <= {inf['goal_scoring_ratio']}){mixed}. Of the edited time, retrieval (query encoding, search, "
            f"building the fired edits' prompts) is {100 * inf['retrieval_share_generate']:.1f}% in generation and "
            f"{100 * inf['retrieval_share_score']:.1f}% in scoring; the LM reading the prompt positions of the rows "
            f"that fired is {100 * inf['prompt_positions_share_generate']:.1f}% and "
            f"{100 * inf['prompt_positions_share_score']:.1f}%.", ""]


def working_memory_table(data: dict | None) -> list[str]:
    if not data:
        return []
    out = [f"**Working-preset memory** (working_memory.json; an EditMemory storing each edit's key and its edit "
           f"text's last {data['slots']} SmolLM2 token ids, filled with MedVersa's {data['released_edits']:,} released "
           "edits cycled with unique strings; RSS = the growth of a fresh process's resident set while it builds and "
           "holds the memory, requests and ids included; search = exact top-1 of 16 queries):", "",
           "| stored edits | key dim | memory bytes/edit | token ids/edit | RSS bytes/edit | RSS GB | saved bytes/edit "
           "| search p50 ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        saved = f"{r['saved_bytes_per_edit']:,.0f}" if "saved_bytes_per_edit" in r else "-"
        out.append(f"| {r['stored']:,} | {r['key_dim']} | {r['memory_bytes_per_edit']:,.0f} | {r['token_ids_per_edit']} "
                   f"| {r['rss_bytes_per_edit']:,.0f} | {r['rss_gb']:.2f} | {saved} | {ms(r['search_16']['p50_s'])} |")
    return out + [""]


def render() -> str:
    out = ["Measured with the scripts in `bench/` (`bench/run.py` runs them all; 2-core CPU unless the JSON says "
           "otherwise; a row exists only for the scripts that have been run); every ratio compares "
           "two numbers of the same run. Latencies are per batch of 16 queries.", ""]
    for name in ("memory_scale_full", "memory_scale"):
        data = load(name)
        if data:
            out += [f"**Edit memory scale** ({name}.json; queries are noisy copies of stored random keys, cosine "
                    "~0.8; exact = the kit's FAISS IndexFlatIP searched through BLAS, FAISS default = the same index "
                    "with FAISS's own small-batch kernels, torch = `topk(q @ K.T)` as in the official code; "
                    "approximate indexes at the kit's defaults (IVF about 4 sqrt(N) lists, nprobe 16; HNSW M 32, "
                    "efSearch 128), then the narrowest swept setting that reaches 0.99 agreement with exact top-1). "
                    "Index bytes per edit are the serialised index over the number of edits; an EditMemory "
                    "also keeps each key as a tensor (4 x dim bytes) and its T x H float32 prompt tokens "
                    "(6.9 KB for SmolLM2-135M with T = 3).", ""]
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
    out += inference_overhead(load("inference_overhead"))
    out += working_memory_table(load("working_memory"))
    out += training_tables([load("train_throughput_smoke"), load("train_throughput_small")], load("train_gpu"))
    out += long_targets_table(load("long_targets"))
    runs = [(name, load(name)) for name in ("run", "run_full")]
    runs = [f"`{'make bench FULL=1' if name == 'run_full' else 'make bench'}` {r['total_s'] / 60:.1f} min"
            for name, r in runs if r]
    if runs:
        out += ["**Whole benchmark suite**: " + ", ".join(runs) + " (every script above, one after the other).", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default=str(HERE.parent / "docs" / "benchmarks.md"))
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
