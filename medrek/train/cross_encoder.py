"""A cross-encoder verifier trained for real: every layer, several epochs, mined hard negatives.

The retriever compares one vector per question, so a question on the same organ or drug as a
stored edit but asking another fact scores as high as a paraphrase of it. A cross-encoder reads
the question and a stored prompt together::

    [CLS] question [SEP] stored prompt [SEP] -> BERT-like encoder -> classifier -> logit

This module mines its training pairs from MedVersa *train* edits and trains it with
``sentence-transformers`` (``CrossEncoderTrainer``, ``BinaryCrossEntropyLoss``), checkpointing
every ``save_steps`` so that a killed run resumes where it stopped:

* positives: each rephrase with its own prompt;
* hard negatives, mined with the base model's own sentence embeddings over every train prompt:
  each rephrase with its ``negatives`` closest other prompts, each prompt with its closest
  other prompt (the neighbour case: its own edit is not stored) and each locality prompt with
  its ``locality_negatives`` closest prompts;
* with ``own_locality_negatives``, each locality prompt against its own record's prompt: for MedCF
  these are neighbours by construction (the same template on another drug, another relation of
  the same drug), so the near-duplicate rule below does not apply to them; with ``symmetric``,
  each prompt as a question against its rephrase as the stored prompt, a second positive;
* a mined prompt that asks the anchor's own question is dropped, not used as a negative: equal
  once folded, cosine >= ``near_duplicate`` to the anchor's own prompt (to the locality prompt
  itself for a locality anchor), or cosine >= ``same_answer_similar`` with the same old answer
  (the released pool asks some questions twice, in other words, with the same answer).

The trained model is saved with ``save_pretrained`` (safetensors and a JSON config) next to a
``train_log.json``; :class:`CrossEncoderVerifier` loads it and gives P(same question).

Run in the background, resumable::

    python -m medrek.train.cross_encoder --out runs/verifier-minilm --base minilm-l6 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..data.records import EditRecord, fold_question

__all__ = ["CrossEncoderTrainConfig", "mine_cross_encoder_pairs", "closest_other_questions", "train_cross_encoder", "CrossEncoderVerifier",
           "sentence_embedder"]


@dataclass
class CrossEncoderTrainConfig:
    base: str = "minilm-l6"  # registry name (minilm-l6, mpnet-base) or a local folder of a BERT-like encoder
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-5
    warmup_ratio: float = 0.1
    negatives: int = 3  # per rephrase: its closest other prompts
    locality_negatives: int = 1  # per locality prompt: its closest prompts
    near_duplicate: float = 0.9  # a mined prompt this close (cosine) to the anchor's own question is not a negative
    same_answer_similar: float = 0.7  # ... nor one this close with the same old answer
    max_length: int = 96  # tokens of one (question, stored prompt) pair
    freeze_embeddings: bool = True  # the token embeddings stay the released ones (faster; smaller checkpoint)
    trained_layers: int = 0  # top encoder layers trained, with the pooler and classifier (0: every layer)
    save_steps: int = 200  # a resumable checkpoint every this many steps
    own_locality_negatives: bool = False  # each locality prompt against its own record's prompt (MedCF: a neighbour)
    symmetric: bool = False  # each prompt as a question against its rephrase, too (positive)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "negatives", "max_length", "save_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CrossEncoderTrainConfig.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.trained_layers, int) and self.trained_layers >= 0):
            raise ValueError(f"CrossEncoderTrainConfig.trained_layers must be an integer >= 0, got {self.trained_layers!r}")
        if not (isinstance(self.locality_negatives, int) and self.locality_negatives >= 0):
            raise ValueError(f"CrossEncoderTrainConfig.locality_negatives must be an integer >= 0, "
                             f"got {self.locality_negatives!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"CrossEncoderTrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        for name in ("near_duplicate", "same_answer_similar"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"CrossEncoderTrainConfig.{name} must be in (0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"CrossEncoderTrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


def base_folder(name: str) -> str:
    """A local folder for ``name``: the offline package of a registry name, else ``name`` itself."""
    from ..models.registry import resolve_encoder_folder

    return str(resolve_encoder_folder(name))


def sentence_embedder(name: str, device: str | None = None):
    """``embed(texts) -> unit vectors [n, h]``: the base model as a sentence-transformers
    ``SentenceTransformer`` (its own pooling, or mean pooling for a plain BERT folder)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_folder(name), device=device or "cpu", local_files_only=True)

    @torch.no_grad()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        return model.encode(list(texts), batch_size=128, convert_to_tensor=True, normalize_embeddings=True,
                            show_progress_bar=False).float().cpu()

    return embed


class _Duplicates:
    """The rule that a prompt asks the same question as an anchor (module docstring): equal once
    folded, cosine >= ``near_duplicate``, or cosine >= ``same_answer_similar`` with the same old answer."""

    def __init__(self, records: Sequence[EditRecord], near_duplicate: float, same_answer_similar: float) -> None:
        self.folded = [fold_question(r.prompt) for r in records]
        self.answers = [fold_question(r.ground_truth) for r in records]
        self.near, self.same_answer = near_duplicate, same_answer_similar

    def __call__(self, fold: str, answer: str, cosine: float, j: int) -> bool:
        return self.folded[j] == fold or cosine >= self.near or (
            cosine >= self.same_answer and bool(answer) and self.answers[j] == answer)


def _closest(sims: torch.Tensor, k: int, skip, own: int | None = None) -> tuple[list[int], int]:
    """The ``k`` best rows of ``sims`` [N] that ``skip`` lets through (``own`` never), and how many it skipped."""
    out, skipped = [], 0
    for j in sims.argsort(descending=True).tolist():
        if len(out) == k:
            break
        if j == own:
            continue
        if skip(j):
            skipped += 1
            continue
        out.append(j)
    return out, skipped


@torch.no_grad()
def closest_other_questions(records: Sequence[EditRecord], embed, k: int = 1, near_duplicate: float = 0.9,
                            same_answer_similar: float = 0.7) -> list[list[int]]:
    """For each record, the ``k`` records whose prompts are closest to its own (``embed``: unit
    sentence vectors) and ask another question (the module docstring's rule): its hardest neighbours."""
    keys = embed([r.prompt for r in records])
    same = keys @ keys.T  # [N, N]
    rule = _Duplicates(records, near_duplicate, same_answer_similar)
    return [_closest(same[i], k, lambda j: rule(rule.folded[i], rule.answers[i], float(same[i, j]), j), own=i)[0]
            for i in range(len(records))]


@torch.no_grad()
def mine_cross_encoder_pairs(records: Sequence[EditRecord], embed, config: CrossEncoderTrainConfig
                             ) -> tuple[list[str], list[str], list[float], dict]:
    """(questions, stored prompts, labels, counts) mined from ``records`` with ``embed`` (unit
    sentence vectors), as the module docstring says."""
    prompts = [r.prompt for r in records]
    rule = _Duplicates(records, config.near_duplicate, config.same_answer_similar)
    keys = embed(prompts)  # [N, h]
    same = keys @ keys.T  # [N, N] prompt-prompt cosine: near-duplicates of the own question
    questions: list[str] = []
    stored: list[str] = []
    labels: list[float] = []
    dropped = 0

    def add(question: str, rows: list[int], label: float) -> None:
        questions.extend([question] * len(rows))
        stored.extend(prompts[j] for j in rows)
        labels.extend([label] * len(rows))

    rephrases = [r.rephrase for r in records]
    rs = embed(rephrases) @ keys.T  # [N, N]
    for i in range(len(records)):
        duplicate = lambda j: rule(rule.folded[i], rule.answers[i], float(same[i, j]), j)  # noqa: E731
        add(rephrases[i], [i], 1.0)
        if config.symmetric:
            questions.append(prompts[i])
            stored.append(rephrases[i])
            labels.append(1.0)
        if config.own_locality_negatives:
            for probe in records[i].locality.values():
                if fold_question(probe.prompt) != rule.folded[i]:
                    add(probe.prompt, [i], 0.0)
        for question, sims, k in ((rephrases[i], rs[i], config.negatives), (prompts[i], same[i], 1)):
            rows, skipped = _closest(sims, k, duplicate, own=i)
            add(question, rows, 0.0)
            dropped += skipped
    if config.locality_negatives:
        probes = [p for r in records for p in r.locality.values()]
        ls = embed([p.prompt for p in probes]) @ keys.T  # [L, N]
        for a, probe in enumerate(probes):
            fold, answer = fold_question(probe.prompt), fold_question(probe.answer)
            rows, skipped = _closest(ls[a], config.locality_negatives, lambda j: rule(fold, answer, float(ls[a, j]), j))
            add(probe.prompt, rows, 0.0)
            dropped += skipped
    counts = {"records": len(records), "pairs": len(labels), "positives": int(sum(labels)),
              "negatives": len(labels) - int(sum(labels)), "near_duplicates_dropped": dropped}
    return questions, stored, labels, counts


def _latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return done[-1] if done else None


def train_cross_encoder(train: Sequence[EditRecord], out: str | Path, config: CrossEncoderTrainConfig | None = None,
                        valid: Sequence[EditRecord] = (), seed: int = 0, progress: bool = True) -> dict:
    """Train a cross-encoder verifier on pairs mined from ``train`` into ``out`` (resumes from the
    newest checkpoint under ``out/checkpoints``); the finished model is ``out/model`` and the log
    ``out/train_log.json`` (also returned). ``valid`` pairs, mined the same way, give a loss and
    an accuracy per epoch; they must not be test records."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from ..io import write_json

    from ..data.records import records_sha256
    from ..io import read_json

    config = config or CrossEncoderTrainConfig()
    out = Path(out)
    identity = {"config": asdict(config), "seed": seed, "train_sha256": records_sha256(train),
                "valid_sha256": records_sha256(valid)}
    if (out / "identity.json").exists():
        saved = read_json(out / "identity.json")
        # a folder trained before a config field existed was trained with that field's default
        saved["config"] = {**asdict(CrossEncoderTrainConfig()), **saved.get("config", {})}
        if saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            raise ValueError(f"{out / 'identity.json'}: this folder holds a cross-encoder trained with other "
                             f"{', '.join(changed)}; delete the folder or train into another one")
        if (out / "train_log.json").exists() and (out / "model").is_dir():
            return read_json(out / "train_log.json")
    else:
        write_json(out / "identity.json", identity)
    start = time.perf_counter()
    torch.manual_seed(seed)
    embed = sentence_embedder(config.base)
    questions, stored, labels, counts = mine_cross_encoder_pairs(train, embed, config)
    train_set = Dataset.from_dict({"question": questions, "stored": stored, "label": labels})
    eval_set, eval_counts = None, None
    if valid:
        vq, vs, vl, eval_counts = mine_cross_encoder_pairs(valid, embed, config)
        eval_set = Dataset.from_dict({"question": vq, "stored": vs, "label": vl})
    del embed
    model = CrossEncoder(base_folder(config.base), num_labels=1, max_length=config.max_length, device="cpu",
                         local_files_only=True)
    if torch.cuda.is_available():
        model.to("cuda")
    base = model.model.base_model
    if config.freeze_embeddings:
        base.embeddings.requires_grad_(False)
    if config.trained_layers:
        for layer in base.encoder.layer[: max(0, len(base.encoder.layer) - config.trained_layers)]:
            layer.requires_grad_(False)
    pos_weight = torch.tensor(counts["negatives"] / max(1, counts["positives"]))
    loss = BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=128, learning_rate=config.lr, warmup_steps=config.warmup_ratio, seed=seed,  # < 1: a ratio
        data_seed=seed, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="epoch" if eval_set is not None else "no", logging_steps=50, report_to="none",
        disable_tqdm=not progress, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, loss=loss)
    resume = _latest_checkpoint(out / "checkpoints")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.save_pretrained(str(out / "model"))
    history = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in trainer.state.log_history]
    log = {"config": asdict(config), "seed": seed, "train_pairs": counts, "valid_pairs": eval_counts,
           "resumed_from": resume.name if resume else None, "history": history,
           "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / "train_log.json", log)
    return log


class CrossEncoderVerifier:
    """P(question asks what the stored prompt asks) from a trained cross-encoder folder, with a
    memo of pairs already read (a lookup asks the same pairs again across protocols)."""

    def __init__(self, folder: str | Path, device: str | None = None, batch_size: int = 64) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        self.folder = Path(folder)
        self.model = CrossEncoder(str(self.folder), device=device or "cpu", local_files_only=True)
        self.batch_size = batch_size
        self._memo: dict[tuple[str, str], float] = {}

    @torch.no_grad()
    def __call__(self, questions: Sequence[str], stored: Sequence[str]) -> torch.Tensor:
        pairs = list(zip(questions, stored))
        todo = list(dict.fromkeys(p for p in pairs if p not in self._memo))
        if todo:
            logits = self.model.predict(todo, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                        convert_to_tensor=True, show_progress_bar=False)
            self._memo.update(zip(todo, torch.sigmoid(logits.float().reshape(-1)).cpu().tolist()))
        return torch.tensor([self._memo[p] for p in pairs])


def main() -> None:
    from ..data.loaders import load_split

    ap = argparse.ArgumentParser(description="Train a cross-encoder verifier on MedVersa train (resumable).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-train", nargs="*", default=[], metavar="DATASET",
                    help="train splits of other datasets added to MedVersa train (e.g. medcf)")
    ap.add_argument("--extra-limit", type=int, default=None, help="the first this many records of each extra split")
    for name, value in asdict(CrossEncoderTrainConfig()).items():
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = vars(ap.parse_args())
    config = CrossEncoderTrainConfig(**{k: args[k] for k in asdict(CrossEncoderTrainConfig())})
    train = load_split("medversa", "train", args["data_dir"])
    for name in args["extra_train"]:
        train = train + load_split(name, "train", args["data_dir"])[: args["extra_limit"]]
    valid = load_split("medversa", "valid", args["data_dir"])[:300]
    log = train_cross_encoder(train, args["out"], config, valid=valid, seed=args["seed"])
    print(json.dumps({k: log[k] for k in ("train_pairs", "seconds")}))


if __name__ == "__main__":
    main()
