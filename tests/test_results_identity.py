"""`results/small` holds only what the committed editors made with the current settings.

Every row of the results tables must trace to a per-request file whose recorded identity is the
fingerprint of the committed checkpoint that `params/small.yaml` names (read from the checkpoint's
files; no model is loaded), or, for a baseline, the settings the params give it now.
"""

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medrek.baselines.ft import FTConfig, default_layer
from medrek.baselines.grace import GRACEConfig
from medrek.baselines.ike import IKE_TEMPLATE
from medrek.baselines.memit import MEMITConfig
from medrek.baselines.wise import WISEConfig
from medrek.editor import checkpoint_fingerprint
from medrek.evaluate.results import read_growth_records, read_per_record, read_results
from medrek.io import read_json
from medrek.methods import PRESETS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "small"
PARAMS = yaml.safe_load((ROOT / "params" / "small.yaml").read_text())["notebooks"]
SPLIT = PARAMS["05_paper_figures"]["split"]
SMOLLM2_LAYERS = 30  # SmolLM2-135M's decoder layers: where GRACE and WISE hook in (80% up) follows from it


def _fingerprints() -> dict[str, str]:
    return {m: checkpoint_fingerprint(ROOT / folder) for m, folder in PARAMS["03_single_edit"]["editor_checkpoints"].items()}


def expected_identity(method: str, fingerprints: dict[str, str], stage: str) -> dict:
    """What the committed params and editors would record for ``method`` now."""
    params = PARAMS[stage]
    if method in PRESETS:
        return {"editor": fingerprints[method]}
    if method == "ike":
        return {"retriever": fingerprints[params["retriever"]], "template": IKE_TEMPLATE}
    if method == "ft-l":
        return {"config": asdict(FTConfig(**params.get("ft", {})))}
    if method == "memit":
        return {"config": asdict(MEMITConfig(**params.get("memit", {})))}
    if method == "grace":
        return {"config": asdict(GRACEConfig(**params.get("grace", {}))), "layer": default_layer(SMOLLM2_LAYERS, 0.8)}
    if method == "wise":  # plus what the LM and data decide: the shared template prefix, the irrelevant pairs' hash
        return {"config": asdict(WISEConfig(**params.get("wise", {}))), "layer": default_layer(SMOLLM2_LAYERS, 0.8)}
    if method == "unedited":
        return {}
    raise AssertionError(f"results/small has rows of {method!r}, which params/small.yaml does not evaluate")


def _sidecars() -> list[Path]:
    return sorted((RESULTS / "metrics" / "records").glob("*.json")) + sorted((RESULTS / "metrics").glob("growth_*_*.json"))


@pytest.fixture(scope="module")
def fingerprints():
    return _fingerprints()


@pytest.mark.parametrize("sidecar", _sidecars(), ids=lambda p: p.stem)
def test_every_per_request_file_was_made_by_a_committed_editor(sidecar, fingerprints):
    meta = read_json(sidecar)
    labels = meta.get("labels") or {}
    stage = "04_batch_edit" if meta.get("protocol") == "growth" or labels.get("protocol") == "batch" else "03_single_edit"
    identity = dict(meta["identity"])
    if meta["method"] == "wise":
        assert identity.pop("gap_after") == 24, sidecar.name  # SmolLM2's chat-template system turn
        assert len(identity.pop("irrelevant")) == 16, sidecar.name
    if meta["method"] in ("ft-l", "memit") and meta.get("protocol") == "growth":  # the sequential protocol
        assert identity.pop("edits") == "one at a time", sidecar.name
    assert identity == expected_identity(meta["method"], fingerprints, stage), sidecar.name
    assert labels.get("lm") == PARAMS[stage]["lm"] and labels.get("chat_template") == PARAMS[stage]["chat_template"]
    assert labels["split"] in (SPLIT, "test"), sidecar.name  # growth labels the split it padded from


def test_every_result_row_has_its_per_request_file():
    summary = read_results([RESULTS])
    per_record = read_per_record([RESULTS])
    assert set(summary["split"]) == {SPLIT}, "results/small holds rows of another split"
    made = set(zip(per_record["method"], per_record["protocol"], per_record["batch_size"].astype(int)))
    rows = set(zip(summary["method"], summary["protocol"], summary["batch_size"].astype(int)))
    assert rows <= made, f"rows without a per-request file: {sorted(rows - made)}"
    for (method, protocol, batch), part in per_record.groupby(["method", "protocol", "batch_size"]):
        efficacy = summary[(summary["method"] == method) & (summary["protocol"] == protocol)
                           & (summary["batch_size"] == batch) & (summary["metric"] == "efficacy")]
        last = part[part["eval_at"] == part["eval_at"].max()]
        assert efficacy["value"].iloc[-1] == pytest.approx(last["efficacy"].mean(), abs=1e-9), (method, protocol, batch)


def test_growth_rows_match_their_per_request_files():
    growth = pd.read_csv(RESULTS / "metrics" / "growth.csv")
    records = read_growth_records([RESULTS])
    for (method, stored), part in records.groupby(["method", "stored"]):
        row = growth[(growth["method"] == method) & (growth["eval_at"] == stored) & (growth["metric"] == "locality")]
        assert len(row) == 1, (method, stored)
        assert row["value"].iloc[0] == pytest.approx(part["locality"].mean(), abs=1e-9), (method, stored)
    assert set(growth["method"]) == set(records["method"])


def test_a_row_from_another_editor_is_caught(fingerprints):
    # the check above can fail: an editor retrained (other weights) has another fingerprint
    other = dict(fingerprints, medrek="0" * 64)
    meta = read_json(RESULTS / "metrics" / "records" / f"medversa_{SPLIT}_medrek_single.json")
    assert meta["identity"] != expected_identity("medrek", other, "03_single_edit")
