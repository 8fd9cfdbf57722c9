"""The retrieval ladder: which retrieval keeps a question's own edit and fires nothing for an
unrelated one as the memory grows from 200 to 6,000 stored edits.

Retrieval only, over cached encoder features (the frozen MiniLM backbone's pooled features of
every MedVersa prompt, rephrase and locality prompt, and of the kit's neighbour questions), so
each lead takes seconds. The first 200 test edits are scored while the memory holds 200, 1,000
or 6,000 edits (the rest of test, then valid, then train); thresholds are calibrated on valid
edits (their locality prompts) with the 5,000 valid and train edits stored, never on test. One lead at a
time; every lead is written to ``studies/results/retrieval_ladder.json``, failures too:

    python studies/retrieval_ladder.py                      # every lead
    python studies/retrieval_ladder.py --only cosine-threshold
    python studies/render_retrieval_ladder.py               # the Markdown table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from medrek.data.loaders import load_split  # noqa: E402
from medrek.data.sources import cache_dir  # noqa: E402
from medrek.evaluate.growth import (VALID_NEIGHBOURS_FILE, load_locality_duplicates, load_neighbours,  # noqa: E402
                                   padded_memory, probes_for, retrieval_rates, vector_memory)
from medrek.io import read_json, read_tensors, write_json  # noqa: E402
from medrek.memory import MemoryConfig  # noqa: E402
from medrek.models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig, ResidualHead  # noqa: E402
from medrek.models.registry import load_encoder  # noqa: E402
from medrek.models.verifier import QuestionVerifier, VerifierConfig  # noqa: E402
from medrek.train.cross_encoder import CrossEncoderVerifier  # noqa: E402
from medrek.train.retriever import (RetrieverTrainConfig, VerifierTrainConfig, calibrate_at_size, mine_pairs,  # noqa: E402
                                    train_query_head, train_verifier)
from safetensors.torch import save_file  # noqa: E402

OUT = ROOT / "studies" / "results" / "retrieval_ladder.json"
SIZES = (200, 1000, 6000)
N_EVAL = 200
CALIBRATION_STORED = 5000  # every valid and train edit: the largest memory that holds no test edit


# ---------------------------------------------------------------------------------------------
# data and features
# ---------------------------------------------------------------------------------------------
@dataclass
class Split:
    records: list
    prompt: torch.Tensor = field(default=None)  # [n, 4h] backbone features
    rephrase: torch.Tensor = field(default=None)
    locality: torch.Tensor = field(default=None)


def load_retriever(folder: Path) -> tuple[KnowledgeEncoder, dict]:
    """The committed editor's KnowledgeEncoder (backbone, heads, prototype), without its LM."""
    meta = read_json(folder / "editor.json")
    cfg = meta["config"]
    backbone, tok = load_encoder(cfg["encoder"])
    enc = KnowledgeEncoder(backbone, tok, KnowledgeEncoderConfig(cfg["encoder"], cfg["key_dim"], cfg["n_prototype_tokens"],
                                                                 cfg["max_length"], cfg["train_backbone"]))
    tensors = read_tensors(folder / "editor.safetensors")
    enc.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}, strict=False)
    return enc.eval(), cfg


def cached_features(encoder: KnowledgeEncoder, texts: list[str], tag: str) -> dict[str, torch.Tensor]:
    """Backbone features [4h] of every distinct text, computed once and kept in the cache folder."""
    unique = sorted(set(texts))
    digest = hashlib.sha256(("\n".join(unique) + tag).encode()).hexdigest()[:16]
    path = cache_dir() / "retrieval_ladder" / f"features-{digest}.safetensors"
    if path.exists():
        feats = read_tensors(path)["features"]
    else:
        from tqdm.auto import tqdm
        chunks = []
        with torch.no_grad():
            for start in tqdm(range(0, len(unique), 256), desc="features"):
                chunks.append(encoder.features(unique[start:start + 256]))
                encoder.clear_cache()
        feats = torch.cat(chunks)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": feats.contiguous()}, str(path))
    return dict(zip(unique, feats))


# ---------------------------------------------------------------------------------------------
# a lead = keys and queries from features, a memory config, a calibration
# ---------------------------------------------------------------------------------------------
@dataclass
class Lead:
    name: str
    change: str
    score: str = "dot"
    exact_match: bool = False
    gate: str = "committed-margin"  # committed-margin | prototype | margin | similarity
    head: str = "committed"  # committed | raw (MiniLM sentence embedding) | trained
    train: RetrieverTrainConfig | None = None
    verify_k: int = 0  # > 0: a QuestionVerifier reads the top verify_k (gate: verified)
    verifier: VerifierTrainConfig | None = None
    max_false_fire: float | None = None  # the calibration budget (None: --max-false-fire)
    cache_as: str | None = None  # reuse the trained verifier of this lead
    cross_encoder: str | None = None  # a trained cross-encoder folder (medrek.train.cross_encoder) as the verifier
    distinct: bool = False  # calibrate on distinct valid locality prompts and the valid neighbour questions
    max_neighbour_fire: float | None = None  # with distinct: the valid neighbours' budget (None: max_false_fire)

LEADS = [
    Lead("baseline", "committed editor: dot score, prototype gate + min_margin 2.05 (calibrated with 100 stored)"),
    Lead("exact-match", "baseline + a question equal to a stored prompt (folded) fires it", exact_match=True),
    Lead("dot-margin@5000", "dot score, min_margin recalibrated on valid with 5,000 stored (2% locality fires)",
         exact_match=True, gate="margin"),
    Lead("cosine-prototype", "cosine score, prototype gate only", score="cosine", exact_match=True, gate="prototype"),
    Lead("cosine-threshold", "cosine score, threshold on similarity calibrated on valid at 5,000 stored (2% fires)",
         score="cosine", exact_match=True, gate="similarity"),
    Lead("minilm-cosine", "no learned head: MiniLM sentence embeddings (mean-pooled, unit), cosine threshold calibrated at 5,000",
         score="cosine", exact_match=True, gate="similarity", head="raw"),
    Lead("hard-negatives", "query head retrained on cached features: InfoNCE against all 3,000 train keys + "
         "locality prompts and other edits pushed below a cosine threshold; cosine threshold calibrated at 5,000",
         score="cosine", exact_match=True, gate="similarity", head="trained", train=RetrieverTrainConfig()),
    Lead("hard-negatives-no-locality", "as hard-negatives without locality prompts as negatives (bank only)",
         score="cosine", exact_match=True, gate="similarity", head="trained",
         train=RetrieverTrainConfig(locality_weight=0.0)),
    Lead("hard-negatives-batch-only", "as hard-negatives with the batch's own keys instead of the 3,000-key bank",
         score="cosine", exact_match=True, gate="similarity", head="trained", train=RetrieverTrainConfig(bank=False)),
    Lead("hard-negatives@10%", "hard-negatives, its cosine threshold calibrated to let 10% of valid locality prompts "
         "fire at 5,000 stored (as verifier@10%)", score="cosine", exact_match=True, gate="similarity", head="trained",
         train=RetrieverTrainConfig(), max_false_fire=0.10),
    Lead("verifier", "hard-negatives head, top-5 by cosine read again by a cross-encoder verifier (MiniLM, top 2 "
         "layers + head trained 1 epoch on train pairs mined with that head); its probability calibrated at 5,000 stored",
         score="cosine", exact_match=True, gate="verified", head="trained", train=RetrieverTrainConfig(),
         verify_k=5, verifier=VerifierTrainConfig()),
    Lead("verifier@5%", "verifier, calibrated to let 5% of valid locality prompts fire at 5,000 stored",
         score="cosine", exact_match=True, gate="verified", head="trained", train=RetrieverTrainConfig(),
         verify_k=5, verifier=VerifierTrainConfig(), max_false_fire=0.05, cache_as="verifier"),
    Lead("verifier@10%", "verifier, calibrated to let 10% of valid locality prompts fire at 5,000 stored (about the "
         "share that asks the question of a stored edit)", score="cosine", exact_match=True, gate="verified",
         head="trained", train=RetrieverTrainConfig(), verify_k=5, verifier=VerifierTrainConfig(), max_false_fire=0.10,
         cache_as="verifier"),
    Lead("verifier@distinct", "verifier, calibrated on distinct valid locality prompts (none within MiniLM cosine 0.80 "
         "of a stored prompt) at 5% and the kit's valid neighbour questions at 10%", score="cosine", exact_match=True,
         gate="verified", head="trained", train=RetrieverTrainConfig(), verify_k=5, verifier=VerifierTrainConfig(),
         max_false_fire=0.05, cache_as="verifier", distinct=True, max_neighbour_fire=0.10),
    Lead("cross-encoder-minilm@distinct", "hard-negatives head, top-10 by cosine read by a cross-encoder (MiniLM, every "
         "layer but the embeddings, 4 epochs with sentence-transformers on 18k train pairs: 3 mined hard negatives per "
         "rephrase, 1 per prompt and locality prompt, near-duplicates dropped); calibrated as verifier@distinct",
         score="cosine", exact_match=True, gate="verified", head="trained", train=RetrieverTrainConfig(), verify_k=10,
         cross_encoder="runs/verifier-minilm/model", max_false_fire=0.05, distinct=True, max_neighbour_fire=0.10),
    Lead("cross-encoder-minilm@distinct-10%", "cross-encoder-minilm, calibrated to 10% of distinct valid locality "
         "prompts and 20% of valid neighbours", score="cosine", exact_match=True, gate="verified", head="trained",
         train=RetrieverTrainConfig(), verify_k=10, cross_encoder="runs/verifier-minilm/model", max_false_fire=0.10,
         distinct=True, max_neighbour_fire=0.20),
    Lead("cross-encoder-medcf@distinct-10%", "as cross-encoder-minilm@distinct-10% with the cross-encoder's top 5 layers "
         "trained 3 epochs on MedVersa train plus the first 1,000 MedCF train edits (their locality probes, the same "
         "template on another drug or another relation of the same drug, as negatives against their own prompt) and "
         "each prompt against its rephrase as a second positive (`--extra-train medcf --extra-limit 1000 "
         "--own-locality-negatives true --symmetric true --trained-layers 5 --epochs 3`)", score="cosine",
         exact_match=True, gate="verified", head="trained", train=RetrieverTrainConfig(), verify_k=10,
         cross_encoder="runs/verifier-minilm-medcf/model", max_false_fire=0.10, distinct=True, max_neighbour_fire=0.20),
]


def keys_of(lead: Lead, encoder: KnowledgeEncoder, head: ResidualHead | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if lead.head == "raw":
        h = encoder.config.hidden_size
        return lambda f: torch.nn.functional.normalize(f[:, h:2 * h], dim=-1)  # the mean-pool block
    module = head if lead.head == "trained" else encoder.query_head
    return lambda f: module(f)


def run_lead(lead: Lead, encoder: KnowledgeEncoder, committed: dict, data: dict, feats: dict, max_false_fire: float,
             seed: int, verifiers: dict) -> dict:
    start = time.perf_counter()
    f = lambda texts: torch.stack([feats[t] for t in texts])  # noqa: E731
    head, train_log = None, None
    if lead.head == "trained":  # leads with the same training share one head (trained once per process)
        key = ("head", json.dumps(vars(lead.train), sort_keys=True), seed)
        if key not in verifiers:
            verifiers[key] = train_query_head(encoder.query_head, data["train"], f, lead.train, seed=seed)
        head, train_log = verifiers[key]
    embed = keys_of(lead, encoder, head)
    verify, verifier_log = None, None
    if lead.cross_encoder:
        folder = ROOT / lead.cross_encoder
        if folder not in verifiers:
            verifiers[folder] = (CrossEncoderVerifier(folder), read_json(folder.parent / "train_log.json"))
        verify, verifier_log = verifiers[folder]
        verifier_log = {k: verifier_log[k] for k in ("config", "train_pairs", "seconds")} | {"folder": lead.cross_encoder}
    elif lead.verify_k:
        key = lead.cache_as or lead.name  # leads sharing a verifier share its answers too
        if key not in verifiers:
            verifiers[key] = cached_verifier(lead, encoder, data["train"], lambda t: embed(f(t)), seed)
        verify, verifier_log = verifiers[key]
    keys = lambda texts: embed(f(texts))  # noqa: E731
    with torch.no_grad():
        # a retrained or raw head has no prototype in its space: a zero one, and only the threshold gates
        committed_head = lead.head == "committed"
        prototype = encoder.prototype_key() if committed_head else torch.zeros(keys([data["test"][0].prompt]).shape[1])
        base = MemoryConfig(int(prototype.shape[0]), 1, 1, score=lead.score, exact_match=lead.exact_match,
                            min_margin=committed["min_margin"] if lead.gate == "committed-margin" else None,
                            prototype_gate=committed_head, verify_k=lead.verify_k)
        calibration = None
        if lead.gate in ("margin", "similarity", "verified"):
            budget = lead.max_false_fire if lead.max_false_fire is not None else max_false_fire
            extra = {}
            if lead.distinct:
                h = encoder.config.hidden_size
                extra = dict(neighbours=[n.prompt for n in data["valid_neighbours"]],
                             max_neighbour_fire=lead.max_neighbour_fire, sentence=lambda t: f(t)[:, h:2 * h])
            calibration = calibrate_at_size(base, keys, prototype, data["valid"], data["train"], CALIBRATION_STORED,
                                            lead.gate, budget, verify, **extra)
            if calibration["threshold"] is not None:
                setattr(base, calibration["setting"], calibration["threshold"])
        evaluated = data["test"][:N_EVAL]
        rows = []
        for size in SIZES:
            stored = padded_memory(evaluated, data["test"] + data["valid"] + data["train"], size)
            memory = vector_memory(base, keys([r.prompt for r in stored]), prototype, [r.prompt for r in stored], verify)
            probes = probes_for(evaluated, stored, keys, data["neighbours"], data["duplicates"])
            rows.append({"stored": size, **{k: round(v, 4) for k, v in retrieval_rates(memory, probes).items()
                                            if k != "stored"}})
    return {"lead": lead.name, "change": lead.change, "score": lead.score, "exact_match": lead.exact_match,
            "gate": lead.gate, "head": lead.head, "calibration": calibration, "train": train_log,
            "verifier": verifier_log,
            "evaluated": f"medversa test first {N_EVAL}", "neighbours": len(data["neighbours"]),
            "rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def cached_verifier(lead: Lead, encoder: KnowledgeEncoder, train: list, embed, seed: int):
    """The lead's verifier, trained once on pairs mined with ``embed`` and kept in the cache
    folder; returns a memoised probability function and the training log."""
    config = VerifierConfig(candidates=lead.verify_k)
    verifier = QuestionVerifier(encoder.backbone, encoder.tokenizer, config)
    tag = json.dumps([lead.cache_as or lead.name, vars(lead.train or {}), vars(lead.verifier), config.to_dict(), seed],
                     sort_keys=True, default=str)
    path = cache_dir() / "retrieval_ladder" / f"verifier-{hashlib.sha256(tag.encode()).hexdigest()[:16]}"
    if (path / "verifier.safetensors").exists():
        verifier.load_state_dict(read_tensors(path / "verifier.safetensors"), strict=False)
        log = read_json(path / "log.json")
    else:
        with torch.no_grad():
            questions, stored, labels = mine_pairs(train, embed, lead.verifier.negatives)
        torch.manual_seed(seed)
        log = train_verifier(verifier, questions, stored, labels, lead.verifier, seed=seed, progress=True)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in verifier.trainable_state_dict().items()}, str(path / "verifier.safetensors"))
        write_json(path / "log.json", log)
    verifier.round_to_stored()  # as an editor's checkpoint stores it
    verifier.eval()
    memo: dict[tuple[str, str], float] = {}

    def verify(questions, stored):
        todo = [(q, s) for q, s in zip(questions, stored) if (q, s) not in memo]
        todo = list(dict.fromkeys(todo))
        if todo:
            probs = verifier.probabilities([q for q, _ in todo], [s for _, s in todo])
            memo.update(zip(todo, probs.tolist()))
        return torch.tensor([memo[(q, s)] for q, s in zip(questions, stored)])

    return verify, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "small" / "medrek-lm-embedding"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="lead names (default: all)")
    ap.add_argument("--max-false-fire", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT), help="the JSON the leads are written to (another retriever: another file)")
    args = ap.parse_args()
    out_path = Path(args.out)
    torch.manual_seed(args.seed)
    data_dir = args.data_dir
    data = {s: load_split("medversa", s, data_dir) for s in ("train", "valid", "test")}
    data["neighbours"] = load_neighbours()
    data["duplicates"] = load_locality_duplicates()
    data["valid_neighbours"] = load_neighbours(VALID_NEIGHBOURS_FILE)
    encoder, committed = load_retriever(Path(args.checkpoint))
    texts = [t for s in ("train", "valid", "test") for r in data[s]
             for t in (r.prompt, r.rephrase, r.locality["locality"].prompt)] + \
        [n.prompt for key in ("neighbours", "valid_neighbours") for n in data[key]]
    feats = cached_features(encoder, texts, args.checkpoint)
    results = json.loads(out_path.read_text())["leads"] if out_path.exists() else []
    verifiers: dict = {}
    for lead in LEADS:
        if args.only and lead.name not in args.only:
            continue
        out = run_lead(lead, encoder, committed, data, feats, args.max_false_fire, args.seed, verifiers)
        results = [r for r in results if r["lead"] != lead.name] + [out]
        print(json.dumps({"lead": out["lead"], "calibration": out["calibration"], "rows": out["rows"]}), flush=True)
        write_json(out_path, {"machine": machine(), "checkpoint": str(Path(args.checkpoint).resolve().relative_to(ROOT))
                         if Path(args.checkpoint).resolve().is_relative_to(ROOT) else args.checkpoint,
                         "max_false_fire": args.max_false_fire, "sizes": list(SIZES),
                         "leads": sorted(results, key=lambda r: [l.name for l in LEADS].index(r["lead"])
                                         if r["lead"] in [l.name for l in LEADS] else 99)})


if __name__ == "__main__":
    main()
