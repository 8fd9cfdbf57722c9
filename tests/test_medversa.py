import json

import pytest
import torch

from medrek.data import DataError
from medrek.data import medversa as mv


def _record(i, **over):
    base = {
        "prompt": f"What is question {i}?", "ground_truth": f"old {i}", "subject_name": "A" if i % 2 else "B",
        "topic_name": "t", "id": i, "locality_prompt": f"Unrelated question {i}?",
        "locality_ground_truth": "x", "locality_subject_name": "A", "locality_topic_name": "t",
        "locality_id": 1000 + i, "rephrase_prompt": f"Question number {i} is what?", "target_new": f"new {i}",
    }
    return {**base, **over}


def _pool(n=12):
    return [_record(i) for i in range(n)]


def test_clean_pool_passes():
    audit = mv.audit_pool(_pool(), "pool.json")
    assert audit.violations == [] and audit.counts()["records"] == 12
    audit.raise_if_invalid()


@pytest.mark.parametrize(
    "rule, change",
    [
        ("schema", lambda p: p[3].pop("rephrase_prompt")),
        ("empty-target", lambda p: p[3].update(target_new=" ")),
        ("duplicate-id", lambda p: p[3].update(id=1)),
        ("duplicate-prompt", lambda p: p[3].update(prompt=p[1]["prompt"])),
        ("strict-locality", lambda p: p[3].update(locality_prompt=p[7]["prompt"])),
    ],
)
def test_each_hard_rule_fails_with_record_and_rule(rule, change):
    pool = _pool()
    change(pool)
    audit = mv.audit_pool(pool, "pool.json")
    assert [v.rule for v in audit.hard] == [rule]
    with pytest.raises(mv.PoolValidationError, match=rf"pool\.json: record 3 \(id \d+\): rule '{rule}'"):
        audit.raise_if_invalid()


@pytest.mark.parametrize(
    "rule, change",
    [
        ("target-equals-ground-truth", lambda p: p[3].update(target_new="OLD 3")),
        ("case-duplicate-prompt", lambda p: p[3].update(prompt=p[1]["prompt"].upper())),
        ("case-strict-locality", lambda p: p[3].update(locality_prompt="what is  question 7?")),
    ],
)
def test_soft_rules_are_reported_not_fatal(rule, change):
    pool = _pool()
    change(pool)
    audit = mv.audit_pool(pool, "pool.json")
    assert [v.rule for v in audit.soft] == [rule] and audit.hard == []
    assert audit.soft[0].index == 3
    audit.raise_if_invalid()


def test_near_duplicates_from_embeddings():
    pool = _pool(3)
    edit = torch.eye(3)
    loc = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]), dim=-1)
    near = mv.near_duplicate_locality(pool, edit, loc, threshold=0.9)
    assert near["index"].tolist() == [1, 0] and near["nearest_index"].tolist() == [2, 0]
    assert near["cosine"].iloc[0] == pytest.approx(1.0)


def test_split_is_stratified_seeded_and_disjoint():
    pool = _pool(40)
    a = mv.split_pool(pool, sizes=(20, 10, 10), seed=1)
    b = mv.split_pool(pool, sizes=(20, 10, 10), seed=1)
    c = mv.split_pool(pool, sizes=(20, 10, 10), seed=2)
    assert a == b and a != c
    ids = [r["id"] for s in mv.SPLITS for r in a[s]]
    assert sorted(ids) == list(range(40))
    assert sum(r["subject_name"] == "A" for r in a["train"]) == 10
    with pytest.raises(ValueError, match="split sizes"):
        mv.split_pool(pool, sizes=(30, 10, 10))


def test_default_build_reproduces_the_release_byte_for_byte(data_dir, tmp_path):
    pool = json.loads((data_dir / "medversa" / "pool.json").read_text())
    splits = mv.split_pool(mv.apply_errata(pool, mv.load_errata()))
    for split in mv.SPLITS:
        written = mv.write_split(splits[split], tmp_path / f"{split}.json")
        assert written.read_bytes() == (data_dir / "medversa" / f"{split}.json").read_bytes(), split


def test_without_errata_exactly_one_record_differs(data_dir):
    pool = json.loads((data_dir / "medversa" / "pool.json").read_text())
    released = {s: json.loads((data_dir / "medversa" / f"{s}.json").read_text()) for s in mv.SPLITS}
    table = mv.compare_splits(mv.split_pool(pool), released)
    assert table["identical"].tolist() == [2999, 2000, 1000]
    assert table["first_difference"].tolist() == [1, -1, -1]


def test_errata_must_match_the_pool():
    pool = _pool()
    entry = {"id": 3, "field": "prompt", "pool_value": "something else", "released_value": "y", "reason": "r"}
    with pytest.raises(DataError, match="record id 3 field 'prompt'"):
        mv.apply_errata(pool, [entry])
    with pytest.raises(DataError, match="no record with id 99"):
        mv.apply_errata(pool, [dict(entry, id=99)])
    fixed = mv.apply_errata(pool, [dict(entry, pool_value=pool[3]["prompt"])])
    assert fixed[3]["prompt"] == "y" and pool[3]["prompt"] != "y"  # the input is not modified


def test_subject_counts_and_lengths():
    splits = mv.split_pool(_pool(40), sizes=(20, 10, 10))
    counts = mv.subject_counts(splits)
    assert counts.loc["A"].tolist() == [10, 5, 5, 20]
    lengths = mv.length_stats(splits)
    row = lengths[(lengths.split == "train") & (lengths.field == "target_new") & (lengths.stat == "max")]
    assert row["value"].item() == 2.0


# ---- cross-field leaks: one hand-made instance of every rule ---------------------
def _leaky_pool():
    """A clean pool plus exactly one exact instance of each cross-field rule, and one folded one."""
    pool = _pool(20)
    pool[1]["rephrase_prompt"] = pool[1]["prompt"]                          # rephrase-is-own-prompt
    pool[2]["rephrase_prompt"] = pool[3]["prompt"]                          # rephrase-is-other-prompt
    pool[4]["locality_prompt"] = pool[5]["rephrase_prompt"]                 # locality-is-other-rephrase
    pool[6]["locality_prompt"] = pool[6]["rephrase_prompt"]                 # locality-is-own-rephrase
    pool[7]["locality_prompt"] = pool[8]["prompt"]                          # locality-is-other-prompt
    pool[9]["locality_prompt"] = pool[9]["prompt"]                          # locality-is-own-prompt
    pool[10]["locality_prompt"] = pool[11]["locality_prompt"] = "Shared?"   # shared-locality
    pool[12]["rephrase_prompt"] = pool[13]["rephrase_prompt"] = "Same?"     # shared-rephrase
    pool[14]["prompt"] = pool[15]["prompt"]                                 # shared-prompt
    pool[16]["rephrase_prompt"] = pool[17]["prompt"].upper()                # folded only
    return pool


def test_every_cross_field_rule_finds_its_hand_made_instance():
    counts = mv.cross_field_counts(mv.cross_field_audit(_leaky_pool())).set_index(["rule", "comparison"])
    for rule in mv.CROSS_FIELD_RULES:  # a rule removed from the list, or one that finds nothing, fails here
        expected = 2 if rule.name == "rephrase-is-other-prompt" else 1  # + the folded-only instance
        assert counts.loc[(rule.name, "exact"), "findings"] == 1, rule.name
        assert counts.loc[(rule.name, "folded"), "findings"] == expected, rule.name
    assert len(counts) == 2 * len(mv.CROSS_FIELD_RULES)
    assert counts["findings"].sum() == 2 * len(mv.CROSS_FIELD_RULES) + 1


def test_cross_field_findings_name_both_records_and_the_splits():
    pool = _leaky_pool()
    splits = {"train": pool[:4] + pool[5:], "valid": [], "test": [pool[4]]}
    findings = mv.cross_field_audit(pool, splits)
    row = findings[(findings["rule"] == "locality-is-other-rephrase") & (findings["comparison"] == "exact")].iloc[0]
    assert (row["id"], row["related_ids"], row["field"], row["related_field"]) == ("4", "5", "locality_prompt",
                                                                                   "rephrase_prompt")
    assert (row["split"], row["splits"]) == ("across", "train+test")
    counts = mv.cross_field_counts(findings).set_index(["rule", "comparison"])
    assert counts.loc[("locality-is-other-rephrase", "exact"), ["train", "across", "train+test"]].tolist() == [0, 1, 1]
    assert counts.loc[("shared-locality", "exact"), ["train", "across", "train+test"]].tolist() == [1, 0, 0]


def test_semantic_cross_field_uses_cosine_across_records_only():
    pool = _pool(4)
    basis = torch.eye(12)
    prompts, rephrases, localities = basis[:4], basis[4:8].clone(), basis[8:]
    rephrases[2] = torch.nn.functional.normalize(basis[0] + 0.1 * basis[1], dim=0)  # rephrase 2 ~ prompt 0 (cos 0.995)
    rephrases[3] = basis[3]  # rephrase 3 == prompt 3: its own record, never a semantic finding
    findings = mv.cross_field_audit(pool, embeddings={"prompt": prompts, "rephrase_prompt": rephrases,
                                                      "locality_prompt": localities}, threshold=0.95)
    semantic = findings[findings["comparison"] == "semantic"]
    assert semantic[["rule", "id", "related_ids"]].values.tolist() == [["rephrase-is-other-prompt", "2", "0"]]
    assert semantic["cosine"].iloc[0] == pytest.approx(0.995, abs=1e-3)


def test_semantic_shared_text_groups_are_connected_components():
    pool = _pool(5)
    e = torch.nn.functional.normalize(torch.tensor([[1, 0, 0], [1, .05, 0], [1, .1, 0], [0, 1, 0], [0, 0, 1.]]), dim=1)
    findings = mv.cross_field_audit(pool, embeddings={f: e for f in mv.QUESTION_FIELDS}, threshold=0.99,
                                    rules=[r for r in mv.CROSS_FIELD_RULES if r.name == "shared-prompt"])
    semantic = findings[findings["comparison"] == "semantic"]
    assert semantic[["id", "related_ids", "records"]].values.tolist() == [["0", "1 2", 3]]
