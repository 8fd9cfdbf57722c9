from pathlib import Path

import pytest

from medrek.config import ParamsError, load_params
from medrek.pipeline import notebook_parameters, notebook_paths, validate_params

REPO = Path(__file__).resolve().parent.parent
PARAM_FILES = sorted((REPO / "params").glob("*.yaml"))


def test_there_are_params_and_notebooks():
    assert {p.stem for p in PARAM_FILES} >= {"smoke", "small", "paper"}
    assert "01_build_medversa" in notebook_paths()


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_every_params_key_exists_in_its_notebook(path):
    params = load_params(path)
    notebooks = notebook_paths()
    validate_params(params, notebooks)  # raises on an unknown section or key
    for name, section in params.notebooks.items():
        declared = notebook_parameters(notebooks[name])
        assert set(section) <= set(declared), (name, set(section) - set(declared))


def test_every_notebook_declares_the_common_keys():
    for path in notebook_paths().values():
        assert {"data_dir", "run_dir", "seed"} <= set(notebook_parameters(path))


def test_unknown_notebook_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: t\nnotebooks:\n  01_build_medversa:\n    split_size: [1, 1, 1]\n")
    with pytest.raises(ParamsError, match=r"typo\.yaml: notebooks\.01_build_medversa: unknown parameter "
                                          r"'split_size' \(did you mean 'split_sizes'\?\)"):
        validate_params(load_params(path), notebook_paths())


def test_unknown_top_level_key_and_notebook(tmp_path):
    path = tmp_path / "top.yaml"
    path.write_text("name: t\nsed: 1\n")
    with pytest.raises(ParamsError, match=r"unknown parameter 'sed' \(did you mean 'seed'\?\)"):
        load_params(path)
    path.write_text("name: t\nnotebooks:\n  01_build_medversaa: {}\n")
    with pytest.raises(ParamsError, match="unknown parameter '01_build_medversaa'"):
        validate_params(load_params(path), notebook_paths())


def test_malformed_yaml_and_reserved_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ParamsError, match="malformed YAML"):
        load_params(path)
    path.write_text("name: t\nnotebooks:\n  01_build_medversa:\n    run_dir: x\n")
    with pytest.raises(ParamsError, match="'run_dir' is set by the pipeline"):
        load_params(path)
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.stem)
def test_every_training_section_makes_its_configs(path):
    from medrek.train import configs_from_parameters

    section = load_params(path).notebooks.get("02_train_medrek")
    if section is None:
        pytest.skip("no training section")
    configs = configs_from_parameters(section)  # unknown methods or fields are refused by name
    assert list(configs) == list(section["methods"])
    for method, own in (section.get("method_settings") or {}).items():
        for field, value in own.items():
            assert getattr(configs[method], field) == value, (method, field)
