"""The user-edit probe: its file is read field by field, and its counts follow what fires."""

import json

import pytest

from medrek.evaluate.user_probe import load_user_probe, probe_answers, probe_retrieval, probe_summary
from medrek.memory import fold_question


def test_the_shipped_probe_is_well_formed_and_asks_no_released_question(data_dir):
    from medrek.data.loaders import load_split

    edits = load_user_probe()
    assert len(edits) == 30 and all(len(e.paraphrases) == 2 and len(e.neighbours) == 2 for e in edits)
    released = set()
    for split in ("train", "valid", "test"):
        for r in load_split("medversa", split, data_dir):
            released |= {fold_question(r.prompt), fold_question(r.rephrase)}
            released |= {fold_question(p.prompt) for p in r.locality.values()}
    asked = [q for e in edits for q in (e.prompt, *e.paraphrases, *e.neighbours)]
    assert len({fold_question(q) for q in asked}) == len(asked), "a question appears twice in the probe"
    assert not [q for q in asked if fold_question(q) in released]


@pytest.mark.parametrize("field,value,match", [("paraphrases", [], "paraphrases"), ("target_new", " ", "target_new"),
                                               ("neighbours", "one question", "neighbours")])
def test_a_bad_probe_file_names_the_edit_and_field(tmp_path, field, value, match):
    row = {"id": "a", "prompt": "Which organ secretes insulin?", "target_new": "the spleen",
           "paraphrases": ["Insulin is made by which organ?"], "neighbours": ["Which organ secretes bile?"]}
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"edits": [{**row, field: value}]}))
    with pytest.raises(ValueError, match=rf"probe\.json: edit 0.*'{match}'"):
        load_user_probe(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_user_probe(path)


def test_probe_counts_follow_what_fires(make_editor, tmp_path):
    editor = make_editor("medrek-lm-embedding", n_tokens=12, exact_match=True)
    path = tmp_path / "probe.json"
    rows = [{"id": f"e{k}", "prompt": p, "target_new": t, "paraphrases": [p.upper()], "neighbours": [n]}
            for k, (p, t, n) in enumerate([("Which organ secretes insulin?", "the spleen", "Which organ secretes bile?"),
                                           ("Which virus causes chickenpox?", "Rotavirus", "Which virus causes shingles?")])]
    path.write_text(json.dumps({"edits": rows}))
    edits = load_user_probe(path)
    table = probe_answers(editor, edits, max_new_tokens=3)
    assert len(editor.memory) == 0  # the probe leaves the memory as it found it
    summary = probe_summary(table)
    # exact match: each prompt and its upper-cased paraphrase fire their own edit whatever the scores
    assert summary["prompt_fires_own"] == 1.0 and summary["paraphrase_fires_own"] == 1.0
    neighbours = table[table["kind"] == "neighbour"]
    assert summary["neighbour_fires"] == pytest.approx(neighbours["fired"].notna().mean())
    # a neighbour that fired nothing is answered exactly as the unedited LM answers it
    assert not neighbours[neighbours["fired"].isna()]["changed"].any()
    assert summary["questions"] == 6
    with pytest.raises(ValueError, match="empty memory"):
        editor.edit([{"id": "x", "prompt": "q?", "target_new": "a"}], check_retrieval=False)
        probe_retrieval(editor, edits)
