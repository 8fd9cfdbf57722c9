"""Parameter sets (``params/*.yaml``) and dataclass configs, with errors for unknown keys.

A params file looks like::

    name: smoke            # the run directory is runs/<name>/
    data_dir: null         # null: $MEDREK_DATA_DIR, else the download cache
    seed: 42
    notebooks:
      01_build_medversa:   # keys must exist in that notebook's `parameters` cell
        split_sizes: [3000, 2000, 1000]

``data_dir``, ``run_dir`` and ``seed`` are passed to every notebook; each section adds its own.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = ["ParamsError", "Params", "load_params", "check_keys", "check_fields", "check_settings", "check_value",
           "REPO_ROOT", "repo_path", "read_yaml"]

COMMON_KEYS = ("data_dir", "run_dir", "seed")
REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | os.PathLike[str]) -> Path:
    """A path from params: absolute as given; a relative one is taken from the repository root
    (``checkpoints/small/medrek``), so it means the same from notebooks/, a run's executed
    copy or the shell."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path
TOP_LEVEL_KEYS = ("name", "data_dir", "seed", "notebooks")


class ParamsError(ValueError):
    """A params file or config mapping is malformed or names an unknown key."""


def check_keys(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`ParamsError` naming the first unknown key and the closest known one."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{where}: unknown parameter '{key}'{hint}; known: {', '.join(sorted(allowed))}")


@dataclass
class Params:
    """A parsed params file."""

    name: str
    path: Path
    data_dir: str | None = None
    seed: int = 42
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_notebook(self, notebook: str, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """The parameters papermill injects into ``notebook`` (common keys first)."""
        section = dict(self.notebooks.get(notebook) or {})
        common = {"data_dir": self.data_dir, "run_dir": str(run_dir), "seed": self.seed}
        return {**common, **section}


class _Loader(yaml.SafeLoader):
    """YAML with ``1e-4`` read as a float (YAML 1.1 wants ``1.0e-4``; everyone writes ``1e-4``)
    and a key given twice in one mapping refused (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                        "which one is meant?", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file (``1e-4`` is a float); unreadable or malformed files are named."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: no such params file") from exc
    except IsADirectoryError as exc:
        raise ParamsError(f"{path}: is a folder, not a params file") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: malformed YAML: {exc}") from exc


def load_params(path: str | os.PathLike[str]) -> Params:
    """Parse a params YAML file; structural errors name the file and the key."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    check_keys(raw, TOP_LEVEL_KEYS, str(path))
    notebooks = raw.get("notebooks") or {}
    if not isinstance(notebooks, dict) or not all(isinstance(v, (dict, type(None))) for v in notebooks.values()):
        raise ParamsError(f"{path}: 'notebooks' must map notebook names to parameter mappings")
    for nb, section in notebooks.items():
        if section and "run_dir" in section:
            raise ParamsError(f"{path}: notebooks.{nb}: 'run_dir' is set by the pipeline, not per notebook")
    seed = raw.get("seed", 42)
    if not isinstance(seed, int):
        raise ParamsError(f"{path}: 'seed' must be an integer, got {seed!r}")
    return Params(
        name=str(raw.get("name") or path.stem),
        path=path,
        data_dir=raw.get("data_dir"),
        seed=seed,
        notebooks={k: dict(v or {}) for k, v in notebooks.items()},
    )


# ---------------------------------------------------------------------------------------------
# Types and ranges of parameters: notebook parameters cells and dataclass configs
# ---------------------------------------------------------------------------------------------
# Counts that must be at least 1, and counts or sizes that may be 0 (checked by name wherever
# the name occurs: a notebook parameter, a TrainConfig / EditorConfig field, a method setting).
POSITIVE = frozenset({
    "key_dim", "n_tokens", "n_heads", "n_prototype_tokens", "max_length", "batch_size", "steps", "eval_size",
    "checkpoint_every", "log_every", "rows_per_chunk", "limit", "train_limit", "calibration_size", "fluency_tokens",
    "generation_tokens", "explain_tokens", "threads", "lr_encoder", "lr_prompt", "lr", "grad_clip",
    "temperature_query_key", "temperature_query_prototype", "hnsw_m", "hnsw_ef_search", "ivf_nprobe",
    "verifier_layers", "retriever_steps", "retriever_batch_size", "verifier_epochs", "calibration_edits",
    "stored",
})
NON_NEGATIVE = frozenset({
    "seed", "warmup_steps", "retrieval_steps", "eval_every", "n_prefix_tokens", "n_suffix_tokens", "fluency_n",
    "generation_n", "example_index", "edit_hinge", "contrastive_hinge", "weight_q1", "weight_q2", "weight_q3",
    "weight_edit_rel", "weight_edit_gen", "weight_locality", "ivf_nlist", "min_margin", "verify_k",
    "min_verified",
})


# Upper bounds: past them a value fails deep inside a library (a seed numpy cannot take, a tensor
# no machine can allocate), so it is refused first, by name.
UPPER = {"seed": 2**32 - 1, "key_dim": 65536, "n_tokens": 8192, "n_heads": 256, "n_prototype_tokens": 1024,
         "max_length": 131072, "batch_size": 1_000_000, "steps": 100_000_000, "eval_size": 1_000_000,
         "n_prefix_tokens": 1024, "n_suffix_tokens": 1024, "verify_k": 1024, "stored": 100_000_000}
PROBABILITIES = frozenset({"min_verified", "max_false_fire", "max_neighbour_fire"})
PROBABILITY_MAPS = {"gate_max_false_fire": "max_false_fire"}  # {method: rate} parameters


def _alternatives(node: ast.expr) -> list[ast.expr]:
    """``A | B | None`` and ``Optional[A]`` as a flat list of alternatives."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _alternatives(node.left) + _alternatives(node.right)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Optional":
        return _alternatives(node.slice) + [ast.Constant(None)]
    return [node]


def _matches(value: Any, node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return value is None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _matches(value, ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        outer, inner = node.value.id, node.slice
        if outer in ("list", "List", "tuple", "Sequence"):
            if not isinstance(value, (list, tuple)):
                return False
            items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            if len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis:
                items = items[:1]
            return len(items) != 1 or all(_type_ok(v, items[0]) for v in value)
        if outer in ("dict", "Dict", "Mapping"):
            if not isinstance(value, dict):
                return False
            key, val = inner.elts if isinstance(inner, ast.Tuple) else (inner, ast.Name("Any"))
            return all(_type_ok(k, key) and _type_ok(v, val) for k, v in value.items())
        if outer == "Optional":
            return _type_ok(value, node)
    if isinstance(node, ast.Name):
        name = node.id
        if name == "Any":
            return True
        if name == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if name == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "bool":
            return isinstance(value, bool)
        if name == "str":
            return isinstance(value, str)
        if name in ("list", "List", "tuple", "Sequence"):
            return isinstance(value, (list, tuple))
        if name in ("dict", "Dict", "Mapping"):
            return isinstance(value, dict)
    return True  # a type this checker does not know: not checked


def _type_ok(value: Any, node: ast.expr) -> bool:
    return any(_matches(value, alt) for alt in _alternatives(node))


def check_value(name: str, value: Any, type_name: str | None, where: str) -> None:
    """Refuse ``value`` for parameter ``name`` if it is not of ``type_name`` (an annotation such
    as ``int``, ``Optional[int]``, ``float | None``, ``dict[str, float]``) or out of range."""
    if type_name and type_name != "None":
        try:
            node = ast.parse(type_name, mode="eval").body
        except SyntaxError:
            node = None
        if node is not None and not _type_ok(value, node):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9._]+(?:[eE][-+]?[0-9]+)?", value.strip()):
                hint = " (a number in quotes? write it without quotes, e.g. 3.0e-4)"
            raise ParamsError(f"{where}: parameter '{name}' must be {type_name}, got {value!r}{hint}")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and value != value:
        raise ParamsError(f"{where}: parameter '{name}' is NaN")
    if numeric and value in (float("inf"), float("-inf")):
        raise ParamsError(f"{where}: parameter '{name}' must be a finite number, got {value!r}")
    if numeric and name in POSITIVE and not value > 0:
        raise ParamsError(f"{where}: parameter '{name}' must be positive, got {value!r}")
    if numeric and name in NON_NEGATIVE and not value >= 0:
        raise ParamsError(f"{where}: parameter '{name}' must be at least 0, got {value!r}")
    if numeric and name in UPPER and value > UPPER[name]:
        raise ParamsError(f"{where}: parameter '{name}' must be at most {UPPER[name]:,}, got {value!r}")
    if numeric and name in PROBABILITIES and not 0 <= value <= 1:
        raise ParamsError(f"{where}: parameter '{name}' is a probability (0 to 1), got {value!r}")
    if isinstance(value, dict):  # a mapping of per-method values: each checked as the named parameter
        for key, item in value.items():
            if isinstance(item, (int, float)) and not isinstance(item, bool) and name in PROBABILITY_MAPS:
                check_value(PROBABILITY_MAPS[name], item, None, f"{where}: {name}.{key}")


def _annotation(field_: Any) -> str | None:
    """A dataclass field's annotation as text (a string under ``from __future__ import annotations``)."""
    return field_.type if isinstance(field_.type, str) else getattr(field_.type, "__name__", None)


def check_fields(obj: Any, cls: type, where: str) -> None:
    """Check every field of dataclass ``cls`` on ``obj`` against its annotation and range."""
    for f in dataclass_fields(cls):
        check_value(f.name, getattr(obj, f.name), _annotation(f), where)


def check_settings(values: Mapping[str, Any], cls: type, where: str) -> None:
    """Check a mapping meant for dataclass ``cls`` before building it: every key is a field
    (did-you-mean otherwise) and every value has the field's type and range."""
    known = {f.name: f for f in dataclass_fields(cls)}
    check_keys(values, known, where)
    for name, value in values.items():
        check_value(name, value, _annotation(known[name]), where)
