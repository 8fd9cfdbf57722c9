"""The trainer: MedREK's objective for every method preset, with validation and resumable runs.

One step on a batch of B edit records (LM frozen; heads, prototype and prompt encoder trained)
computes every loss term (:class:`~medrek.train.objective.Objective`: the retrieval terms q1-q3,
the edit terms and locality, all LM rows in one batched forward) and takes one Adam step, then
``retrieval_steps`` steps on the retrieval terms alone. Every training record's rows are
tokenised once (``rows.TrainingRows``) and, with a frozen encoder backbone, the pooled features
of every training text are computed once (``rows.warm_feature_cache``). Validation selects the
best checkpoint (``select``); checkpoints (``checkpoint.py``) hold weights, optimizer, RNG and
data position, so a killed run resumes where it stopped and refuses another config or other
data. ``precision: bf16`` runs the LM under autocast (trained parts stay fp32); ``group``
(``parallel.ProcessGroup``) shards the LM rows over processes started by ``accelerate launch``
(``medrek.train.distributed``).
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from ..data.records import EditRecord, records_sha256
from ..config import check_fields
from ..editor import Editor, EditorConfig
from ..evaluate.editing import evaluate_batch_edit, unedited_locality_predictions
from ..io import read_tensors, recover_folder
from .checkpoint import (check_resumable, init_fingerprint, load_training_state, restore_optimizer,
                         save_training_checkpoint)
from .objective import Objective
from .parallel import SingleProcess
from .rows import TrainingRows, warm_feature_cache

__all__ = ["TrainConfig", "Trainer", "LOSS_TERMS", "PRECISIONS", "SELECTIONS", "selectable", "records_from_parameters",
           "init_from_parameters", "method_configs", "configs_from_parameters",
           "read_training_logs"]


LOSS_TERMS = ("q1", "q2", "q3", "edit_rel", "edit_gen", "locality")
# Fields that may change when a run is resumed (the schedule's length and the bookkeeping).
RESUMABLE_CHANGES = {"steps", "eval_every", "checkpoint_every", "log_every", "progress", "select"}
PRECISIONS = ("fp32", "bf16")
# An editor a run starts from (Trainer init_from) must agree on these; the rest (gate, n_tokens cap) may differ.
INIT_MUST_MATCH = ("method", "lm", "encoder", "chat_template", "key_dim", "n_heads", "n_prototype_tokens",
                   "n_prefix_tokens", "n_suffix_tokens", "train_backbone")
SELECTIONS = ("avg", "avg_firing")  # how the best checkpoint is chosen (TrainConfig.select)
STEP_PHASES = ("data", "forward", "backward", "optimizer")  # the step-time breakdown in the log


@dataclass
class TrainConfig(EditorConfig):
    """Every knob of a training run (all of them are notebook parameters): the editor's own
    (inherited from :class:`EditorConfig`) and the optimisation's."""

    key_dim: int = 1024  # smaller than the editor's 4096 default: CPU training
    # optimisation
    batch_size: int = 8
    steps: int = 1000
    lr_encoder: float = 1e-5
    lr_prompt: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (after warm-up)
    grad_clip: float | None = None
    rows_per_chunk: int = 8  # LM rows per length-sorted forward chunk (less padding; same result)
    retrieval_steps: int = 0  # extra optimizer steps on q1 + q2 + q3 alone after each full step
    precision: str = "fp32"  # fp32 | bf16: the LM forward under bf16 autocast (trained parts and optimizer in fp32)
    # objective (the paper: every weight 1, hinge scales 1.2, temperatures 1)
    weight_q1: float = 1.0
    weight_q2: float = 1.0
    weight_q3: float = 1.0
    weight_edit_rel: float = 1.0
    weight_edit_gen: float = 1.0
    weight_locality: float = 1.0
    contrastive_hinge: float = 1.2
    edit_hinge: float = 1.2
    temperature_query_key: float = 1.0
    temperature_query_prototype: float = 1.0
    # bookkeeping
    eval_every: int = 200
    eval_size: int = 100
    select: str = "avg"  # best checkpoint: avg | avg_firing (only validations where some own edit fired)
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 42
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, TrainConfig, "TrainConfig")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose constant or cosine")
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown select {self.select!r}; choose one of {SELECTIONS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (the contrastive terms compare records)")

    def editor_config(self) -> EditorConfig:
        """The editor this run trains (the inherited fields)."""
        return EditorConfig(**{f.name: getattr(self, f.name) for f in fields(EditorConfig)})


def method_configs(base: TrainConfig, methods: Sequence[str],
                   settings: dict[str, dict[str, Any]] | None = None) -> dict[str, TrainConfig]:
    """One config per method: ``base`` with ``method`` set and that method's own ``settings``
    (e.g. ``{"medrek-lm-embedding": {"n_tokens": 30}}``). Unknown methods or fields are refused."""
    from ..config import check_keys

    settings = dict(settings or {})
    check_keys(settings, methods, "method_settings (methods not in `methods`)")
    known = [f.name for f in fields(TrainConfig) if f.name != "method"]
    out = {}
    for method in methods:
        own = dict(settings.get(method) or {})
        check_keys(own, known, f"method_settings.{method}")
        out[method] = replace(base, method=method, **own)
    return out


def configs_from_parameters(values: Mapping[str, Any]) -> dict[str, TrainConfig]:
    """Notebook 02's parameter values (what ``check_parameters`` returns, or the same names from a
    params file) -> one config per method: every parameter named like a :class:`TrainConfig`
    field sets it, then ``method_settings`` per method (what notebook 02 and
    ``medrek.train.distributed`` both call)."""
    names = {f.name for f in fields(TrainConfig)} - {"method", "progress", "log_every"}
    base = TrainConfig(**{k: values[k] for k in names if k in values})
    return method_configs(base, list(values["methods"]), values.get("method_settings"))


def records_from_parameters(values: Mapping[str, Any]) -> tuple[list[EditRecord], list[EditRecord], dict[str, Any]]:
    """Notebook 02's training records (the split, its ``train_limit``, then any ``long_edits``; with
    ``hard_neighbours`` each gets a hard-neighbour locality probe), validation records and the
    ``data`` description the trainer checks on resume (what notebook 02 and
    ``medrek.train.distributed`` both call)."""
    from ..config import check_keys
    from ..data import load_split
    from ..data.synthetic import long_edit_records

    dataset, data_dir, long_edits = values["dataset"], values.get("data_dir"), values.get("long_edits")
    train = load_split(dataset, values.get("train_split", "train"), data_dir, limit=values.get("train_limit"))
    if long_edits:
        check_keys(long_edits, ["n", "target_words", "seed"], "long_edits")
        train += long_edit_records(**long_edits)
    data = {"dataset": dataset, "train_limit": values.get("train_limit"), "long_edits": long_edits}
    if values.get("hard_neighbours"):
        from .cross_encoder import sentence_embedder
        from .neighbours import with_hard_neighbours

        train = with_hard_neighbours(train, sentence_embedder(values["encoder"]))
        data["hard_neighbours"] = True  # absent when off, so runs saved before the setting still resume
    valid = load_split(dataset, values.get("valid_split", "valid"), data_dir)
    return train, valid, data


def init_from_parameters(values: Mapping[str, Any], method: str) -> Path | None:
    """The saved editor ``method`` starts from (``init_from``, relative to the repository root), if any."""
    from ..config import check_keys, repo_path

    init_from = values.get("init_from") or {}
    check_keys(init_from, list(values["methods"]), "init_from")
    return repo_path(init_from[method]) if method in init_from else None


class _CsvLog:
    """Append-only CSV whose rows beyond a resumed step are dropped on reopening."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until_step: int) -> None:
        self.path, self.columns = path, list(columns)
        rows = []
        if path.exists() and keep_until_step > 0:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    if None not in row.values() and row.get("step", "").isdigit() and int(row["step"]) <= keep_until_step:
                        rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns, lineterminator="\n").writerows(rows)


class Trainer:
    """Train an editor's retriever and prompt encoder; ``run_dir`` gets logs and checkpoints."""

    def __init__(self, config: TrainConfig, train_records: Sequence[EditRecord],
                 valid_records: Sequence[EditRecord], run_dir: str | os.PathLike[str],
                 lm: tuple[Any, Any] | None = None, name: str | None = None,
                 data: Mapping[str, Any] | None = None, group: SingleProcess | None = None,
                 init_from: str | os.PathLike[str] | None = None) -> None:
        """``data`` names what the records came from (e.g. ``{"dataset": "medversa",
        "train_limit": None}``); it is saved in checkpoints with a hash of the training records,
        and resuming on other data is refused. ``group``: the processes sharing each step
        (default: this one alone); only the main process writes logs and checkpoints.
        ``init_from``: a saved editor (:meth:`Editor.save`) of the same method, LM and encoder
        whose trained weights a fresh run starts from (fine-tuning; its fingerprint is recorded
        with the data, so a resume from another start is refused)."""
        if len(train_records) < config.batch_size:
            raise ValueError(f"{len(train_records)} training records, fewer than one batch of {config.batch_size}")
        self.config = config
        self.name = name or config.method
        self.train_records = list(train_records)
        self.data = {**dict(data or {}), "train_records": len(self.train_records),
                     "train_sha256": records_sha256(self.train_records)}
        self.run_dir = Path(run_dir)
        self.last_checkpoint = self.run_dir / "checkpoints" / self.name / "last"  # resumable
        self.best_checkpoint = self.run_dir / "checkpoints" / self.name / "best"  # the selected editor
        self.log_path = self.run_dir / "metrics" / f"train_log_{self.name}.csv"
        self.valid_log_path = self.run_dir / "metrics" / f"train_valid_{self.name}.csv"
        self.group = group or SingleProcess()
        self.synchronize_timings = False  # wait for the GPU at each phase boundary (bench/train_gpu.py)
        self.editor = Editor.build(config.editor_config(), seed=config.seed, device=config.device, lm=lm)
        self.init_from = Path(init_from) if init_from is not None else None
        if self.init_from is not None:
            self.data["init_from"] = init_fingerprint(self.init_from, config, INIT_MUST_MATCH)
        self.editor.model.eval()
        self.editor.encoder.backbone.train(config.train_backbone)
        order = torch.randperm(len(valid_records), generator=torch.Generator().manual_seed(config.seed + 1))
        self.valid_records = [valid_records[int(i)] for i in order[: config.eval_size]]
        self.optimizer = torch.optim.Adam([
            {"params": [p for p in self.editor.encoder.parameters() if p.requires_grad], "lr": config.lr_encoder},
            {"params": list(self.editor.prompt_encoder.parameters()), "lr": config.lr_prompt},
        ])
        self.generator = torch.Generator().manual_seed(config.seed)
        self.retrieval_generator = torch.Generator().manual_seed(config.seed + 2)
        self.step = 0
        self.position = 0  # index into the current epoch's permutation
        self.epoch = 0
        self.permutation = self._new_permutation()
        self.best_avg = -math.inf
        self._valid_reference: dict[str, list[torch.Tensor]] | None = None
        self.rows = TrainingRows(self.editor.model, self.train_records, self.editor.model.device)
        self.objective = Objective(config, self.editor, self.train_records, self.rows, self.group)
        if not config.train_backbone:  # a frozen backbone: every training text's features once
            warm_feature_cache(self.editor.encoder, self.train_records, len(self.valid_records))

    # ---- data --------------------------------------------------------------------------------
    def _new_permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.train_records), generator=self.generator)

    def _next_batch(self) -> list[EditRecord]:
        B = self.config.batch_size
        if self.position + B > len(self.permutation):  # drop the ragged tail, start a new epoch
            self.epoch += 1
            self.position = 0
            self.permutation = self._new_permutation()
        rows = self.permutation[self.position: self.position + B]
        self.position += B
        return [self.train_records[int(i)] for i in rows]

    # ---- the objective (medrek.train.objective) -----------------------------------------------
    def compute_losses(self, batch: Sequence[EditRecord]) -> dict[str, torch.Tensor]:
        """Every loss term for one batch (each a scalar tensor attached to the graph)."""
        return self.objective.losses(batch, self.generator)

    def edit_losses(self, batch: Sequence[EditRecord], prompt_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """edit_rel, edit_gen and locality with the batch's prompt tokens [B, T, H] prepended."""
        return self.objective.edit_losses(batch, prompt_tokens)

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            span = max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    def _clock(self) -> float:
        if self.synchronize_timings and self.editor.model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def train_step(self) -> dict[str, float]:
        factor = self._lr_factor(self.step)
        base = (self.config.lr_encoder, self.config.lr_prompt)
        for group, lr in zip(self.optimizer.param_groups, base):
            group["lr"] = lr * factor
        t0 = self._clock()
        batch = self._next_batch()
        _ = self.objective.reference  # computed once, at the first step (counted as that step's data)
        t1 = self._clock()
        terms = self.compute_losses(batch)
        weights = self.objective.weights()
        total = sum(weights[k] * v for k, v in terms.items())
        t2 = self._clock()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        t3 = self._clock()
        self.group.average_gradients(self._trained_parameters())
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._trained_parameters(), self.config.grad_clip)
        self.optimizer.step()
        for _ in range(self.config.retrieval_steps):
            self._retrieval_step()
        t4 = self._clock()
        self.step += 1
        names = list(terms)
        values = torch.stack([terms[k].detach().float() for k in names] + [total.detach().float()])
        values = (self.group.sum(values) / self.group.world_size).tolist()  # the step's global values
        row = {"step": self.step, "epoch": self.epoch, "loss": values[-1]}
        row.update(dict(zip(names, values)))
        row.update({"lr_encoder": base[0] * factor, "lr_prompt": base[1] * factor})
        row.update({f"seconds_{phase}": round(b - a, 5) for phase, a, b in
                    zip(STEP_PHASES, (t0, t1, t2, t3), (t1, t2, t3, t4))})
        return row

    def _retrieval_step(self) -> None:
        """One optimizer step on the retrieval terms alone, for a random batch.

        With a frozen encoder these terms only involve the heads over cached features (and the
        prototype through the encoder body), so a step costs milliseconds, not an LM pass.
        The prompt encoder gets no gradient and Adam leaves it untouched.
        """
        rows = torch.randperm(len(self.train_records), generator=self.retrieval_generator)[: self.config.batch_size]
        batch = [self.train_records[int(i)] for i in rows]
        keys = self.editor.edit_keys([r.prompt for r in batch], [r.target_new for r in batch])
        terms = self.objective.retrieval_losses(batch, keys, self.retrieval_generator)
        weights = self.objective.weights()
        self.optimizer.zero_grad(set_to_none=True)
        sum(weights[k] * v for k, v in terms.items()).backward()
        self.group.average_gradients(self._trained_parameters())  # equal already; kept equal on GPUs too
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._trained_parameters(), self.config.grad_clip)
        self.optimizer.step()

    # ---- validation and checkpoints ----------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        if self._valid_reference is None:
            self._valid_reference = unedited_locality_predictions(self.editor.model, self.valid_records)
        return evaluate_batch_edit(self.editor, self.valid_records, reference=self._valid_reference)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state(), "retrieval_generator": self.retrieval_generator.get_state(),
                "permutation": self.permutation, "torch_rng": torch.get_rng_state()}

    def save_checkpoint(self, folder: Path) -> None:
        meta = {"config": asdict(self.config), "data": self.data, "step": self.step, "epoch": self.epoch,
                "position": self.position, "best_avg": self.best_avg if math.isfinite(self.best_avg) else None,
                "world_size": self.group.world_size}
        save_training_checkpoint(folder, self.editor, self.optimizer, self._state_tensors(), meta)

    def resume_from(self, folder: Path) -> None:
        """Restore weights, optimizer, RNG and data position from a checkpoint of the same config."""
        tensors, meta = load_training_state(folder)
        check_resumable(folder, meta, asdict(self.config), asdict(TrainConfig()), RESUMABLE_CHANGES, self.data)
        self.editor.load_weights(read_tensors(folder / "editor.safetensors"), str(folder / "editor.safetensors"))
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.generator.set_state(tensors["generator"])
        if "retrieval_generator" in tensors:  # absent before retrieval_steps existed: never advanced
            self.retrieval_generator.set_state(tensors["retrieval_generator"])
        torch.set_rng_state(tensors["torch_rng"])
        self.permutation = tensors["permutation"]
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self.best_avg = meta["best_avg"] if meta["best_avg"] is not None else -math.inf
        saved_world = meta.get("world_size", 1)
        if saved_world != self.group.world_size:
            warnings.warn(f"{folder}: saved by {saved_world} process(es), resumed by {self.group.world_size}: the "
                          "same steps, but sums are taken in another order, so not bit for bit", stacklevel=2)

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run to ``config.steps`` (or ``stop_after`` more steps); returns a summary."""
        from tqdm.auto import tqdm

        cfg, main = self.config, self.group.is_main
        if main:
            recover_folder(self.best_checkpoint)  # finish or undo a save interrupted by a crash
            recover_folder(self.last_checkpoint)
        self.group.barrier()
        if resume and self.last_checkpoint.exists():
            self.resume_from(self.last_checkpoint)
        elif self.init_from is not None and self.step == 0:
            weights = self.init_from / "editor.safetensors"
            self.editor.load_weights(read_tensors(weights), str(weights))
        elif resume and main and self.log_path.exists() and self.log_path.stat().st_size > 200:
            warnings.warn(f"resume: no checkpoint at {self.last_checkpoint}; training {self.name} from step 0 "
                          f"and starting {self.log_path.name} anew", stacklevel=2)
        columns = ["step", "epoch", "loss", *LOSS_TERMS, "lr_encoder", "lr_prompt", "seconds",
                   *(f"seconds_{phase}" for phase in STEP_PHASES)]
        log = _CsvLog(self.log_path, columns, self.step) if main else None
        valid_log = _CsvLog(self.valid_log_path, ["step", "metric", "value"], self.step) if main else None
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.method}", disable=not (cfg.progress and main),
                   unit="step")
        started, start_step, rows = time.perf_counter(), self.step, []
        while self.step < end:
            t0 = time.perf_counter()
            row = self.train_step()
            row["seconds"] = round(time.perf_counter() - t0, 4)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", rel=f"{row['edit_rel']:.3f}",
                            samples_s=f"{cfg.batch_size * (self.step - start_step) / (time.perf_counter() - started):.1f}")
            at_eval = cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps)
            at_ckpt = self.step % cfg.checkpoint_every == 0 or self.step == end
            if main and (at_eval or at_ckpt or self.step % cfg.log_every == 0):
                log.append(rows)
                rows = []
            if at_eval and main:
                result = self.validate()
                valid_log.append([{"step": self.step, "metric": k, "value": round(v, 6)} for k, v in result.items()])
                if selectable(result, cfg.select) and result["avg"] > self.best_avg:
                    self.best_avg = result["avg"]
                    self.save_checkpoint(self.best_checkpoint)
            if at_ckpt and main:
                self.save_checkpoint(self.last_checkpoint)
            if at_eval or at_ckpt:
                self.group.barrier()  # the others wait for validation and checkpoints
        if main:
            log.append(rows)
            if self.step == cfg.steps and not math.isfinite(self.best_avg):  # no validation, or none selectable
                if cfg.eval_every:
                    warnings.warn(f"{cfg.method}: no validation fired an own edit (select: {cfg.select}); the best "
                                  "checkpoint is the last one", stacklevel=2)
                self.save_checkpoint(self.best_checkpoint)
        bar.close()
        elapsed = time.perf_counter() - started
        done = self.step - start_step
        return {"steps": self.step, "precision": cfg.precision, "processes": self.group.world_size,
                "seconds": round(elapsed, 2),
                "samples_per_second": round(cfg.batch_size * done / elapsed, 3) if done else None,
                "best_avg": self.best_avg if math.isfinite(self.best_avg) else None}


def selectable(result: Mapping[str, float], select: str) -> bool:
    """May a validation ``result`` become the best checkpoint? ``avg``: always; ``avg_firing``: only
    if the retrieval gate fired some record's own edit (a gate that never fires is the unedited LM,
    whose Avg can beat every editor that edits)."""
    if select == "avg":
        return True
    return result["retrieval_prompt"] > 0 or result["retrieval_rephrase"] > 0


def read_training_logs(run_dir: str | os.PathLike[str], names: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy tables of the logged loss terms (method, step, term, value) and validation metrics."""
    metrics = Path(run_dir) / "metrics"
    logs, valids = [], []
    for name in names:
        log = pd.read_csv(metrics / f"train_log_{name}.csv")
        repeated = sorted(set(log.loc[log["step"].duplicated(), "step"]))
        if repeated:
            raise ValueError(f"{metrics / f'train_log_{name}.csv'}: step(s) {repeated[:5]} logged more than once "
                             "(two trainings wrote into this run directory before run-dir locking existed); "
                             "retrain into a fresh run_dir")
        logs.append(log.melt(id_vars=["step"], value_vars=["loss", *LOSS_TERMS], var_name="term").assign(method=name))
        valids.append(pd.read_csv(metrics / f"train_valid_{name}.csv").assign(method=name))
    columns = ["method", "step", "term", "value"]
    return pd.concat(logs)[columns].reset_index(drop=True), pd.concat(valids)[["method", "step", "metric", "value"]].reset_index(drop=True)
