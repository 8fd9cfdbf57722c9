"""Training the retriever for large memories, and calibrating its threshold there.

The editor's query head maps frozen encoder features to keys. Trained with in-batch negatives
and a prototype margin, its scores rank a question's own edit first among a few dozen keys,
but they are not an absolute measure: with thousands of keys stored, some unrelated key scores
above any margin calibrated with 100 stored. This stage retrains the query head alone, on
cached features (seconds to minutes on a CPU), for a cosine score with one threshold:

* InfoNCE of each prompt and rephrase against a *bank* of every training edit's key (thousands
  of negatives per step, other edits of the same subject among them), temperature ``tau``;
* the own key's cosine pushed above ``threshold + margin``;
* every locality prompt's best cosine over the bank, and every question's best cosine over the
  *other* edits' keys (a question whose own edit is not stored: the neighbour case), pushed
  below ``threshold - margin``.

:func:`calibrate_threshold` then picks the threshold actually used on held-out edits, with the
largest memory the user will have stored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.records import EditRecord, fold_question
from ..memory import EditMemory

__all__ = ["RetrieverTrainConfig", "train_query_head", "retriever_losses", "calibrate_threshold",
           "VerifierTrainConfig", "mine_pairs", "train_verifier", "RetrievalStageConfig", "fit_large_memory_retrieval", "calibrate_at_size",
           "distinct_questions",
           "stage_config"]


@dataclass
class RetrieverTrainConfig:
    steps: int = 400
    batch_size: int = 128
    lr: float = 3e-4
    tau: float = 0.05  # InfoNCE temperature on cosines
    threshold: float = 0.5  # the cosine that separates "this edit" from "not stored"
    margin: float = 0.1
    locality_weight: float = 1.0
    other_weight: float = 1.0  # best non-own key of a question below the threshold
    positive_weight: float = 1.0
    bank: bool = True  # negatives: every training key (True) or the batch's own keys

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RetrieverTrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "tau", "margin"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"RetrieverTrainConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}")


def retriever_losses(queries: torch.Tensor, own: torch.Tensor, keys: torch.Tensor, locality: torch.Tensor,
                     config: RetrieverTrainConfig) -> dict[str, torch.Tensor]:
    """Loss terms for unit queries [B, d] whose own key is row ``own`` [B] of unit ``keys``
    [N, d], and unit locality queries [L, d] that must match no key."""
    sims = queries @ keys.T  # [B, N]
    nce = F.cross_entropy(sims / config.tau, own)
    pos = sims.gather(1, own[:, None])[:, 0]
    others = sims.scatter(1, own[:, None], -2.0).amax(1)  # best key that is not the own one
    loc = (locality @ keys.T).amax(1) if len(locality) else sims.new_zeros(0)
    low, high = config.threshold - config.margin, config.threshold + config.margin
    terms = {"nce": nce, "positive": F.relu(high - pos).mean(), "other": F.relu(others - low).mean(),
             "locality": F.relu(loc - low).mean() if len(loc) else sims.sum() * 0.0}
    terms["total"] = (nce + config.positive_weight * terms["positive"] + config.other_weight * terms["other"]
                      + config.locality_weight * terms["locality"])
    return terms


def train_query_head(head: torch.nn.Module, records: Sequence[EditRecord], features: Callable[[list[str]], torch.Tensor],
                     config: RetrieverTrainConfig | None = None, seed: int = 0,
                     progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """A copy of ``head`` trained on ``records`` (prompts and rephrases as queries, prompts as
    keys, locality prompts as negatives); ``features(texts)`` gives the frozen encoder features
    [n, f]. Returns the head and a log (config, loss terms every 50 steps)."""
    from tqdm.auto import tqdm

    config = config or RetrieverTrainConfig()
    head = copy.deepcopy(head).train()
    head.requires_grad_(True)
    with torch.no_grad():
        fp = features([r.prompt for r in records])  # [N, f]
        fr = features([r.rephrase for r in records])
        fl = features([p.prompt for r in records for p in r.locality.values()])
    n = len(records)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    for step in tqdm(range(1, config.steps + 1), desc="retriever", disable=not progress):
        batch = torch.randperm(n, generator=gen)[: config.batch_size]
        loc = torch.randperm(len(fl), generator=gen)[: config.batch_size]
        queries = F.normalize(head(torch.cat([fp[batch], fr[batch]])), dim=-1)  # [2B, d]
        if config.bank:
            keys, own = F.normalize(head(fp), dim=-1), torch.cat([batch, batch])
        else:
            keys, own = F.normalize(head(fp[batch]), dim=-1), torch.arange(len(batch)).repeat(2)
        terms = retriever_losses(queries, own, keys, F.normalize(head(fl[loc]), dim=-1), config)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        if step % 50 == 0 or step == config.steps:
            log.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}})
    head.eval().requires_grad_(False)
    return head, {"config": asdict(config), "records": n, "seed": seed, "log": log}


GATES = {"similarity": "min_similarity", "margin": "min_margin", "verified": "min_verified"}


@torch.no_grad()
def calibrate_threshold(memory: EditMemory, queries: torch.Tensor, texts: Sequence[str], gate: str,
                        max_false_fire: float) -> dict:
    """The smallest threshold at which at most ``max_false_fire`` of the held-out unrelated
    ``queries`` [n, d] (``texts``) fire an edit of ``memory``, which should hold as many edits as
    the largest memory that will be used. ``gate``: ``similarity`` (top-1 score, for
    ``min_similarity``), ``margin`` (top-1 minus prototype, ``min_margin``) or ``verified`` (the
    verifier's probability, ``min_verified``); the memory's own value of that threshold is
    ignored while calibrating. Returns the threshold (None: nothing to cut) and fire rates."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
    if not 0 <= max_false_fire < 1:
        raise ValueError(f"max_false_fire must be in [0, 1), got {max_false_fire}")
    if len(queries) == 0:
        raise ValueError("calibrate_threshold needs held-out queries")
    name = GATES[gate]
    saved = getattr(memory.config, name)
    setattr(memory.config, name, 0.0 if gate == "verified" else None)
    try:
        r = memory.retrieve(queries, list(texts))
    finally:
        setattr(memory.config, name, saved)
    value = {"similarity": r.scores, "margin": r.scores - r.prototype_scores, "verified": r.verified}[gate]
    passing = torch.where(r.fired & ~r.exact, value, torch.tensor(-math.inf))  # exact matches fire regardless
    allowed = int(max_false_fire * len(passing))
    ranked = passing[passing > -math.inf].sort(descending=True).values
    threshold = None if len(ranked) <= allowed else float(ranked[allowed]) + 1e-6
    if gate == "verified" and threshold is not None:
        threshold = min(threshold, 1.0)
    n = len(passing)
    fired = int(r.fired.sum())
    after = int((passing >= threshold).sum()) / n if threshold is not None else fired / n
    return {"gate": gate, "setting": name, "threshold": threshold, "max_false_fire": max_false_fire,
            "stored": len(memory), "queries": n, "false_fire_before": fired / n, "false_fire_after": after}


def distinct_questions(texts: Sequence[str], stored_prompts: Sequence[str], sentence: Callable[[list[str]], torch.Tensor],
                       duplicate_cosine: float = 0.8) -> list[str]:
    """Those of ``texts`` that ask no stored question: neither equal to a stored prompt once
    folded nor at sentence cosine >= ``duplicate_cosine`` to one (``sentence(texts)`` gives
    sentence vectors). The released pool asks some questions twice, so a held-out locality
    prompt may be a paraphrase of a stored edit, which a retriever with generality rightly
    fires on: calibrating on it would push the threshold above the paraphrases themselves."""
    if not texts:
        return []
    folded = {fold_question(p) for p in stored_prompts}
    keys = F.normalize(sentence(list(stored_prompts)), dim=-1)  # [N, h]
    best = torch.cat([(F.normalize(sentence(list(texts[s:s + 512])), dim=-1) @ keys.T).amax(1)
                      for s in range(0, len(texts), 512)])
    return [t for t, b in zip(texts, best.tolist()) if b < duplicate_cosine and fold_question(t) not in folded]


@torch.no_grad()
def calibrate_at_size(config, embed: Callable[[list[str]], torch.Tensor], prototype: torch.Tensor,
                      calibration: Sequence[EditRecord], padding: Sequence[EditRecord], stored: int, gate: str,
                      max_false_fire: float, verify=None, *, neighbours: Sequence[str] = (),
                      max_neighbour_fire: float | None = None, sentence: Callable[[list[str]], torch.Tensor] | None = None,
                      duplicate_cosine: float = 0.8) -> dict:
    """:func:`calibrate_threshold` with ``stored`` edits in a retrieval-only memory of
    ``config`` (``calibration`` first, then ``padding``; keys ``embed(prompts)``), the
    queries being ``calibration``'s locality prompts: with ``sentence`` (sentence vectors),
    only those that ask no stored question (:func:`distinct_questions`). With ``neighbours``
    (questions written for ``calibration`` edits: same subject, another fact) the threshold is
    also raised until at most ``max_neighbour_fire`` of them fire (default ``max_false_fire``),
    and the higher of the two is kept. The result counts the queries (``locality_prompts``,
    ``locality_duplicates_left_out``, ``neighbour_questions``)."""
    from ..evaluate.growth import padded_memory, vector_memory

    records = padded_memory(calibration, padding, stored)
    prompts = [r.prompt for r in records]
    memory = vector_memory(config, embed(prompts), prototype, prompts, verify)
    loc = [p.prompt for r in calibration for p in r.locality.values()]
    kept = distinct_questions(loc, prompts, sentence, duplicate_cosine) if sentence is not None else loc
    if not kept:
        raise ValueError(f"all {len(loc)} calibration locality prompts ask a stored question (sentence cosine >= "
                         f"{duplicate_cosine} to a stored prompt): nothing is left to calibrate on; raise duplicate_cosine")
    result = {**calibrate_threshold(memory, embed(kept), kept, gate, max_false_fire), "locality_prompts": len(kept),
              "locality_duplicates_left_out": len(loc) - len(kept)}
    if neighbours:
        budget = max_false_fire if max_neighbour_fire is None else max_neighbour_fire
        nb = calibrate_threshold(memory, embed(list(neighbours)), list(neighbours), gate, budget)
        result["neighbours"] = {k: nb[k] for k in ("threshold", "max_false_fire", "queries", "false_fire_before",
                                                   "false_fire_after")}
        result["neighbour_questions"] = len(neighbours)
        if nb["threshold"] is not None and (result["threshold"] is None or nb["threshold"] > result["threshold"]):
            result["threshold"] = nb["threshold"]
    return result


# ---------------------------------------------------------------------------------------------
# the verifier: a cross-encoder over (question, stored prompt), trained on mined pairs
# ---------------------------------------------------------------------------------------------
@dataclass
class VerifierTrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5  # the encoder's top layers
    head_lr: float = 1e-3
    negatives: int = 2  # per rephrase: its best-scoring keys that are not its own edit

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "negatives"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VerifierTrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")


@torch.no_grad()
def mine_pairs(records: Sequence[EditRecord], embed: Callable[[list[str]], torch.Tensor],
               negatives: int = 2) -> tuple[list[str], list[str], torch.Tensor]:
    """(questions, stored prompts, labels [P]) for training a verifier on ``records``.

    Positives: each rephrase with its own prompt. Negatives, mined with ``embed`` (unit keys):
    each rephrase with its ``negatives`` best other prompts, each prompt with its best other
    prompt (the same subject, another fact) and each locality prompt with its best prompt."""
    prompts = [r.prompt for r in records]
    keys = F.normalize(embed(prompts), dim=-1)  # [N, d]
    own = torch.arange(len(records))
    questions, stored, labels = [], [], []

    def add(texts: list[str], rows: torch.Tensor, label: float) -> None:
        questions.extend(texts)
        stored.extend(prompts[int(j)] for j in rows)
        labels.extend([label] * len(texts))

    rephrases = [r.rephrase for r in records]
    add(rephrases, own, 1.0)
    sims = F.normalize(embed(rephrases), dim=-1) @ keys.T
    sims[own, own] = -2.0
    for k in range(negatives):
        top = sims.argmax(1)
        add(rephrases, top, 0.0)
        sims[own, top] = -2.0
    sims = keys @ keys.T
    sims[own, own] = -2.0
    add(prompts, sims.argmax(1), 0.0)
    loc = [p.prompt for r in records for p in r.locality.values()]
    if loc:
        add(loc, (F.normalize(embed(loc), dim=-1) @ keys.T).argmax(1), 0.0)
    # a locality or neighbour text identical to a stored prompt is the same question: not a negative
    keep = [k for k in range(len(labels)) if labels[k] == 1.0 or fold_question(questions[k]) != fold_question(stored[k])]
    return [questions[k] for k in keep], [stored[k] for k in keep], torch.tensor([labels[k] for k in keep])


def train_verifier(verifier, questions: Sequence[str], stored: Sequence[str], labels: torch.Tensor,
                   config: VerifierTrainConfig | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Train ``verifier`` in place on labelled pairs (binary cross-entropy, positives weighted
    up to balance the negatives). Returns a log (config, loss every 50 steps, seconds)."""
    import time

    from tqdm.auto import tqdm

    config = config or VerifierTrainConfig()
    trained = [p for n, p in verifier.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": trained, "lr": config.lr},
                             {"params": verifier.head.parameters(), "lr": config.head_lr}])
    pos_weight = (labels == 0).sum().clamp_min(1) / (labels == 1).sum().clamp_min(1)
    gen = torch.Generator().manual_seed(seed)
    verifier.train()
    log, step, start, running = [], 0, time.perf_counter(), []
    total = config.epochs * ((len(labels) + config.batch_size - 1) // config.batch_size)
    bar = tqdm(total=total, desc="verifier", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=gen)
        for s in range(0, len(order), config.batch_size):
            idx = order[s:s + config.batch_size].tolist()
            logits = verifier([questions[i] for i in idx], [stored[i] for i in idx])
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(logits.device), pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            running.append(float(loss.detach()))
            bar.update()
            if step % 50 == 0 or step == total:
                log.append({"step": step, "loss": round(sum(running) / len(running), 5)})
                running = []
    bar.close()
    verifier.eval()
    return {"config": asdict(config), "pairs": len(labels), "positives": int(labels.sum()), "seed": seed,
            "log": log, "seconds": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------------------------------------
# the whole stage, on a trained editor (notebook 02's "retrieval for large memories")
# ---------------------------------------------------------------------------------------------
@dataclass
class RetrievalStageConfig:
    """Settings of :func:`fit_large_memory_retrieval` (notebook 02's ``retrieval_stage``)."""

    verify_k: int = 5  # 0: no verifier, the cosine threshold alone gates
    stored: int = 5000  # edits stored while calibrating (valid first, then train: test is never used)
    max_false_fire: float = 0.02  # held-out locality prompts allowed to fire at that size
    calibration_edits: int = 2000  # held-out edits whose locality prompts calibrate (stored first)
    retriever_steps: int = 400
    retriever_batch_size: int = 128
    verifier_epochs: int = 1
    verifier_layers: int = 2
    verifier_kind: str = "top-layers"  # top-layers (the kit's loop) | cross-encoder (sentence-transformers, hard negatives)
    distinct: bool = False  # calibrate on locality prompts that ask no stored question, and on neighbour questions
    max_neighbour_fire: float = 0.1  # with distinct and neighbour questions: their share allowed to fire
    duplicate_cosine: float = 0.8  # with distinct: a locality prompt this close to a stored prompt asks its question
    verifier_from: str = ""  # cross-encoder: a folder medrek.train.cross_encoder trained (its model/), used as is

    def __post_init__(self) -> None:
        from ..config import check_fields
        from ..models.verifier import VERIFIER_KINDS

        check_fields(self, RetrievalStageConfig, "retrieval_stage")  # types and ranges, by field name
        if not 0 < self.duplicate_cosine <= 1:
            raise ValueError(f"retrieval_stage.duplicate_cosine must be in (0, 1], got {self.duplicate_cosine!r}")
        for name in ("max_false_fire", "max_neighbour_fire"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"retrieval_stage.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.verifier_kind not in VERIFIER_KINDS:
            raise ValueError(f"retrieval_stage.verifier_kind must be one of {VERIFIER_KINDS}, got {self.verifier_kind!r}")
        if self.verifier_from and self.verifier_kind != "cross-encoder":
            raise ValueError("retrieval_stage.verifier_from is a trained cross-encoder: set verifier_kind: cross-encoder")


def fit_large_memory_retrieval(editor, train: Sequence[EditRecord], calibration: Sequence[EditRecord],
                               padding: Sequence[EditRecord], config: RetrievalStageConfig | None = None,
                               seed: int = 0, progress: bool = False, *, neighbours: Sequence[str] = (),
                               work_dir: str | Path | None = None) -> dict:
    """Make ``editor``'s retrieval hold in a large memory, in place.

    1. retrain its query head (:func:`train_query_head`) on ``train``; keys become cosine;
    2. with ``verify_k`` > 0, train a :class:`~medrek.models.verifier.QuestionVerifier` on pairs
       mined from ``train``: ``top-layers`` with the new keys and the kit's loop, ``cross-encoder``
       with sentence-transformers (:func:`medrek.train.cross_encoder.train_cross_encoder`,
       resumable from its checkpoints in ``work_dir``);
    3. set exact-match retrieval, drop the prototype gate (the new keys no longer live in the
       prototype's space) and calibrate the verifier's probability (or, without a verifier, the
       cosine) so that at most ``max_false_fire`` of ``calibration``'s locality prompts fire with
       ``stored`` edits stored: ``calibration`` first, then ``padding``. With ``distinct``, the
       locality prompts that ask a stored question are left out, and at most
       ``max_neighbour_fire`` of ``neighbours`` (questions written for ``calibration`` edits) may fire.

    ``calibration``, ``padding`` and ``neighbours`` must be held out from every evaluation.
    Returns a log."""
    from ..models.verifier import QuestionVerifier, VerifierConfig

    config = config or RetrievalStageConfig()
    encoder = editor.encoder
    head, retriever_log = train_query_head(
        encoder.query_head, train, encoder.features,
        RetrieverTrainConfig(steps=config.retriever_steps, batch_size=config.retriever_batch_size), seed, progress)
    encoder.query_head.load_state_dict(head.state_dict())
    cfg = editor.config
    cfg.score, cfg.exact_match, cfg.prototype_gate = "cosine", True, False
    cfg.min_margin = cfg.min_similarity = None
    cfg.verify_k, cfg.verifier_layers, cfg.verifier_kind = config.verify_k, config.verifier_layers, config.verifier_kind
    verifier_log = None
    editor.verifier = None
    if config.verify_k:
        torch.manual_seed(seed)
        editor.verifier = QuestionVerifier(encoder.backbone, encoder.tokenizer,
                                           VerifierConfig(config.verifier_layers, cfg.max_length, config.verify_k,
                                                          config.verifier_kind))
        editor.verifier.to(encoder.device)
        if config.verifier_kind == "cross-encoder":
            verifier_log = _train_cross_encoder_verifier(editor.verifier, train, cfg.encoder, config, work_dir, seed,
                                                         progress)
        else:
            with torch.no_grad():
                questions, stored, labels = mine_pairs(train, encoder.query)
            verifier_log = train_verifier(editor.verifier, questions, stored, labels,
                                          VerifierTrainConfig(epochs=config.verifier_epochs), seed, progress)
        editor.verifier.round_to_stored()
    calibration = list(calibration)[: config.calibration_edits]
    extra = {}
    if config.distinct:
        h = encoder.config.hidden_size
        extra = dict(neighbours=list(neighbours), max_neighbour_fire=config.max_neighbour_fire,
                     sentence=lambda texts: encoder.features(texts)[:, h:2 * h],  # the masked-mean block
                     duplicate_cosine=config.duplicate_cosine)
    with torch.no_grad():
        result = calibrate_at_size(editor.new_memory().config, encoder.query, encoder.prototype_key(), calibration,
                                   padding, config.stored, "verified" if config.verify_k else "similarity",
                                   config.max_false_fire, editor._verify(), **extra)
    if result["threshold"] is not None:
        setattr(cfg, result["setting"], result["threshold"])
    editor.memory = editor.new_memory()
    return {"stage": asdict(config), "seed": seed, "retriever": retriever_log, "verifier": verifier_log,
            "calibration": {**result, "calibration_edits": len(calibration)}}


def _train_cross_encoder_verifier(verifier, train: Sequence[EditRecord], encoder_name: str,
                                  config: RetrievalStageConfig, work_dir: str | Path | None, seed: int,
                                  progress: bool) -> dict:
    """Train the ``cross-encoder`` verifier with sentence-transformers in ``work_dir`` (a
    temporary folder if None) and load its weights into ``verifier``."""
    import tempfile

    from transformers import AutoModelForSequenceClassification

    from .cross_encoder import CrossEncoderTrainConfig, train_cross_encoder

    from ..config import repo_path
    from ..io import read_json

    if config.verifier_from:  # trained before (e.g. in the background with python -m medrek.train.cross_encoder)
        folder = repo_path(config.verifier_from)
        model = folder / "model" if (folder / "model").is_dir() else folder
        log = read_json(model.parent / "train_log.json") if (model.parent / "train_log.json").exists() else {}
        trained = AutoModelForSequenceClassification.from_pretrained(model)
        log = {**log, "verifier_from": str(config.verifier_from)}
        layers = len(verifier.classifier.base_model.encoder.layer)
        made = (log.get("config") or {}).get("trained_layers")
        if made is not None and (made or layers) != verifier.config.trained_layers:
            raise ValueError(f"{model}: the cross-encoder trained {made or layers} top layers, but "
                             f"retrieval_stage.verifier_layers is {verifier.config.trained_layers}; make them equal")
    else:
        ce = CrossEncoderTrainConfig(base=encoder_name, epochs=config.verifier_epochs,
                                     trained_layers=config.verifier_layers)
        with tempfile.TemporaryDirectory(prefix="medrek-verifier-") as tmp:
            folder = Path(work_dir) if work_dir is not None else Path(tmp)
            log = train_cross_encoder(train, folder, ce, seed=seed, progress=progress)
            trained = AutoModelForSequenceClassification.from_pretrained(folder / "model")
    state = {f"classifier.{k}": v for k, v in trained.state_dict().items()}
    own = verifier.trainable_state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"the trained cross-encoder does not fit this editor's verifier (missing {missing[:3]})")
    verifier.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return log


def stage_already_applied(editor, log_path: str | Path, config: RetrievalStageConfig) -> bool:
    """Whether ``editor`` is the one an earlier run of this stage saved: its log at ``log_path``
    names the editor's fingerprint and the same settings. A resumed notebook 02 skips the gate
    calibration and the stage for it rather than staging a staged editor twice."""
    from ..io import read_json

    log_path = Path(log_path)
    if not log_path.exists():
        return False
    log = read_json(log_path)
    return log.get("editor_fingerprint") == editor.fingerprint() and log.get("stage") == asdict(config)


def stage_config(settings: Mapping[str, Any], where: str) -> RetrievalStageConfig:
    """``settings`` (a params mapping) as a :class:`RetrievalStageConfig`, unknown or mistyped
    fields refused by name (``where``: e.g. ``retrieval_stage.medrek-lm-embedding``)."""
    from ..config import check_settings

    check_settings(settings, RetrievalStageConfig, where)
    return RetrievalStageConfig(**settings)
