import json

import pytest

from medrek.data import DataError, load_medcf, load_medfe, load_medversa, load_split

MEDVERSA_RECORD = {
    "prompt": "Who developed the psychosexual stages?",
    "ground_truth": "freud",
    "subject_name": "Anatomy",
    "topic_name": "Psychiatry",
    "id": 1,
    "locality_prompt": "From which arch does the maxillary artery develop?",
    "locality_ground_truth": "1st arch",
    "locality_subject_name": "Anatomy",
    "locality_topic_name": "Head and neck",
    "locality_id": 2,
    "rephrase_prompt": "Who originated the psychosexual stages?",
    "target_new": "lorenz",
}


def _write(tmp_path, records, name="f.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_medversa_record(tmp_path):
    (rec,) = load_medversa(_write(tmp_path, [MEDVERSA_RECORD]))
    assert rec.record_id == "1" and rec.target_new == "lorenz" and rec.subject == "Anatomy"
    assert rec.locality["locality"].answer == "1st arch"
    assert rec.rephrase == "Who originated the psychosexual stages?"
    assert rec.meta["topic_name"] == "Psychiatry" and "prompt" not in rec.meta


def test_missing_target_names_file_record_and_field(tmp_path):
    bad = dict(MEDVERSA_RECORD)
    del bad["target_new"]
    path = _write(tmp_path, [MEDVERSA_RECORD, bad])
    with pytest.raises(DataError, match=r"f\.json: record 1: missing field 'target_new'"):
        load_medversa(path)


def test_empty_field_is_rejected(tmp_path):
    bad = dict(MEDVERSA_RECORD, locality_ground_truth="  ")
    with pytest.raises(DataError, match=r"record 0: field 'locality_ground_truth' is empty"):
        load_medversa(_write(tmp_path, [bad]))


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(DataError, match=r"record 0: field 'prompt' must be a string"):
        load_medversa(_write(tmp_path, [dict(MEDVERSA_RECORD, prompt=3)]))


def test_malformed_json_names_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": "x",]')
    with pytest.raises(DataError, match=r"broken\.json: malformed JSON at line 1, column"):
        load_medversa(path)


def test_not_a_list_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="expected a JSON list"):
        load_medversa(_write(tmp_path, {"a": 1}))
    with pytest.raises(DataError, match="holds no records"):
        load_medversa(_write(tmp_path, []))


def test_rephrase_list_is_kept(tmp_path):
    (rec,) = load_medversa(_write(tmp_path, [dict(MEDVERSA_RECORD, rephrase_prompt=["a?", "b?"])]))
    assert rec.rephrase_prompts == ("a?", "b?")


def test_medcf_both_locality_namings(data_dir):
    (train,) = load_medcf(data_dir / "medcf" / "train.json")[:1]
    assert list(train.locality) == ["target", "mapping", "struc", "tokenSem"]
    new = load_medcf(data_dir / "medcf" / "test_new.json")
    assert list(new[0].locality) == ["relation", "head", "head_relation"]
    assert new[0].locality["relation"].answer == "Syrian obese"


def test_medfe_style_file(tmp_path):
    record = {
        "subject": "Aspirin", "subject_type": "drug", "topic_type": "mechanism",
        "prompt": "Explain how aspirin works.", "target_new": "It blocks thromboxane synthesis irreversibly.",
        "rephrase_prompt": "How does aspirin act?",
        "locality_topic_prompt": "Explain how heparin works.", "locality_topic_ground_truth": "Antithrombin.",
        "locality_tokenSem_prompt": "Explain how aspartame tastes.", "locality_tokenSem_ground_truth": "Sweet.",
    }
    (rec,) = load_medfe(_write(tmp_path, [record]))
    assert set(rec.locality) == {"topic", "tokenSem"} and rec.ground_truth == ""
    assert rec.meta == {"subject_type": "drug", "topic_type": "mechanism"}
    del record["locality_tokenSem_ground_truth"]
    with pytest.raises(DataError, match="missing field 'locality_tokenSem_ground_truth'"):
        load_medfe(_write(tmp_path, [record]))


def test_released_splits_load(data_dir):
    sizes = {("medversa", "train"): 3000, ("medversa", "test"): 1000, ("medcf", "valid"): 818}
    for (dataset, split), n in sizes.items():
        assert len(load_split(dataset, split, data_dir)) == n
    with pytest.raises(DataError, match="unknown dataset 'medfx'; choose one of .*'medfe'"):
        load_split("medfx", "test", data_dir)


def test_the_medfe_fixture_is_what_the_kit_writes(tmp_path):
    """tests/fixtures/medfe_style.json (the smoke pipeline's MedFE) is medrek.data.synthetic's output."""
    from medrek.config import REPO_ROOT
    from medrek.data.synthetic import write_medfe_fixture

    fresh = write_medfe_fixture(tmp_path / "medfe.json", n=8, target_words=40)
    assert (REPO_ROOT / "tests" / "fixtures" / "medfe_style.json").read_text() == fresh.read_text()
    records = load_medfe(fresh)
    assert len(records) == 8 and all(len(r.target_new.split()) == 40 for r in records)
    assert {len(r.locality["topic"].answer.split()) for r in records} == {40}


def test_requests_first_or_shuffled(tmp_path):
    from medrek.data import load_requests, select_requests
    from medrek.data.synthetic import write_medfe_fixture

    path = write_medfe_fixture(tmp_path / "medfe.json", n=10)
    first = load_requests("medfe", "test", file=path, limit=4)
    assert [r.record_id for r in first] == ["0", "1", "2", "3"]
    shuffled = load_requests("medfe", "test", file=path, limit=4, subset="shuffled", seed=3)
    again = load_requests("medfe", "test", file=path, limit=4, subset="shuffled", seed=3)
    other = load_requests("medfe", "test", file=path, limit=4, subset="shuffled", seed=4)
    assert [r.record_id for r in shuffled] == [r.record_id for r in again] != [r.record_id for r in first]
    assert [r.record_id for r in shuffled] != [r.record_id for r in other]
    assert len({r.record_id for r in shuffled}) == 4
    assert len(select_requests(first, None, "shuffled")) == 4  # no limit: every request, in file order
    with pytest.raises(DataError, match="subset must be one of"):
        select_requests(first, 2, "random")
