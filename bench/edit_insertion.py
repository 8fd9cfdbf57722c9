"""Edit insertion cost: MedREK (encoder forwards only) vs FT-L and MEMIT on the same edits.

    python bench/edit_insertion.py [--n-edits 32] [--lm smollm2-135m]

The same MedVersa requests are edited as one batch and one by one (the first 4) by each method
on the same LM, restoring in between; MEMIT's covariance statistics are computed once before
timing (reported separately, as the one-off cost they are). Ratios are within this run.
"""

from __future__ import annotations

import argparse

import torch

from common import save, timed

from medrek import Editor, EditorConfig, load_split
from medrek.baselines import FTConfig, FTLMethod, MEMITConfig, MEMITMethod
from medrek.editor import EditedModel
from medrek.models.registry import load_causal_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-edits", type=int, default=16)
    parser.add_argument("--n-single", type=int, default=2)
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--stats-texts", type=int, default=500)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = load_causal_lm(args.lm, seed=0)
    records = load_split("medversa", "train", args.data_dir, limit=args.n_edits)
    editor = Editor.build(EditorConfig(method="medrek", lm=args.lm, encoder=args.encoder, key_dim=1024), lm=lm)
    editor.edit(records[:4], check_retrieval=False)  # warm-up
    editor.clear()
    model = EditedModel(*lm)
    stats = [f"{r.prompt} {r.target_new}" for r in load_split("medversa", "train", args.data_dir)]
    stats_s, memit = timed(lambda: MEMITMethod(model, stats, MEMITConfig(stats_texts=args.stats_texts), lm_name=args.lm))
    ft = FTLMethod(model, FTConfig())

    def medrek_edit(recs):
        editor.encoder.clear_cache()  # new requests: their texts have not been encoded before
        editor.edit(recs, batch_size=128, check_retrieval=False)

    methods = {"medrek": (medrek_edit, editor.clear), "ft-l": (ft.edit, ft.restore), "memit": (memit.edit, memit.restore)}
    result: dict = {"lm": args.lm, "n_edits": len(records), "n_single": args.n_single,
                    "memit_covariance_s": stats_s, "memit_layers": list(memit.layers), "ft_layer": ft.layer,
                    "ft_steps": ft.config.steps, "memit_v_steps": memit.config.v_steps}
    for name, (edit, restore) in methods.items():
        batch_s, _ = timed(lambda: edit(records))
        restore()
        single = []
        for r in records[: args.n_single]:
            single.append(timed(lambda r=r: edit([r]))[0])
            restore()
        result[name] = {"batch_s": batch_s, "batch_edits_per_s": len(records) / batch_s,
                        "single_edit_s": sum(single) / len(single)}
        print(name, result[name], flush=True)
    for name in ("ft-l", "memit"):
        result[f"{name}_vs_medrek_batch"] = result[name]["batch_s"] / result["medrek"]["batch_s"]
        result[f"{name}_vs_medrek_single"] = result[name]["single_edit_s"] / result["medrek"]["single_edit_s"]
    save("edit_insertion", result)


if __name__ == "__main__":
    main()
