import io
import json
import shutil
import urllib.error

import pytest

from medrek.data import sources
from medrek.data.sources import RELEASED_FILES, DataSourceError, released_path, resolve_data_dir


def test_every_released_file_verifies(data_dir):
    present = {name for name in RELEASED_FILES if (data_dir / name).is_file()}
    assert {n for n in RELEASED_FILES if not n.startswith("medfe/")} <= present  # MedFE: downloaded by users
    for name in present:
        assert sources.sha256_of(released_path(name, data_dir)) == RELEASED_FILES[name].sha256


def _serve(monkeypatch, payload: bytes) -> list[str]:
    """Answer downloads with ``payload`` (no network); returns the URLs asked for."""
    asked = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout=None):
        asked.append(url)
        return Response(payload)

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    return asked


def test_medfe_downloads_from_the_pinned_commit_and_is_checksummed(monkeypatch, tmp_path):
    import dataclasses
    import hashlib

    from medrek.data import load_split
    from medrek.data.synthetic import medfe_style_records

    payload = json.dumps(medfe_style_records(5, target_words=40)).encode()
    monkeypatch.delenv("MEDREK_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDREK_CACHE_DIR", str(tmp_path))
    asked = _serve(monkeypatch, payload)
    spec = RELEASED_FILES["medfe/test.json"]
    assert (spec.records, spec.sha256[:12]) == (842, "01d452821c7e")
    with pytest.raises(DataSourceError, match=r"downloaded medfe/test\.json has sha256 .* expected 01d452821c7e"):
        load_split("medfe", "test")  # the fixture is not the release: refused, nothing cached
    assert asked == [f"https://raw.githubusercontent.com/mylittleriver/MedREK/{sources.COMMIT}/"
                     "medrek/data/evaluation/medfe/test.json"]
    assert not list(tmp_path.rglob("test.json"))
    monkeypatch.setitem(RELEASED_FILES, "medfe/test.json",
                        dataclasses.replace(spec, sha256=hashlib.sha256(payload).hexdigest()))
    records = load_split("medfe", "test", limit=3)
    assert len(records) == 3 and set(records[0].locality) == {"topic", "tokenSem"}


def test_medfe_in_a_data_folder_must_be_the_release(tmp_path):
    from medrek.data import load_split
    from medrek.data.synthetic import write_medfe_fixture

    with pytest.raises(DataSourceError, match=r"medfe/test\.json: missing.*medrek/data/evaluation/medfe/test\.json"):
        load_split("medfe", "test", tmp_path)
    write_medfe_fixture(tmp_path / "medfe" / "test.json", n=4)
    with pytest.raises(DataSourceError, match=r"sha256 mismatch for medfe/test\.json: expected 01d452821c7e"):
        load_split("medfe", "test", tmp_path)


def test_corrupted_file_names_file_and_checksum(data_dir, tmp_path):
    (tmp_path / "medcf").mkdir()
    copy = tmp_path / "medcf" / "valid.json"
    shutil.copy(data_dir / "medcf" / "valid.json", copy)
    copy.chmod(0o644)
    raw = bytearray(copy.read_bytes())
    raw[100] ^= 1
    copy.write_bytes(bytes(raw))
    with pytest.raises(DataSourceError, match=r"valid\.json: sha256 mismatch"):
        released_path("medcf/valid.json", tmp_path)


def test_missing_file_tells_what_to_set(tmp_path):
    with pytest.raises(DataSourceError, match="MEDREK_DATA_DIR"):
        released_path("medversa/train.json", tmp_path)


def test_unknown_file_is_refused(tmp_path):
    with pytest.raises(DataSourceError, match="unknown released file"):
        released_path("medversa/dev.json", tmp_path)


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDREK_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("MEDREK_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_data_dir(tmp_path / "explicit") == (tmp_path / "explicit", False)
    assert resolve_data_dir(None) == (tmp_path / "env", False)
    monkeypatch.delenv("MEDREK_DATA_DIR")
    folder, may_download = resolve_data_dir(None)
    assert folder.is_relative_to(tmp_path / "cache") and may_download


def test_no_network_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDREK_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDREK_CACHE_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataSourceError, match="set MEDREK_DATA_DIR"):
        released_path("medcf/test.json")


def test_bad_download_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDREK_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDREK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"[]"))
    with pytest.raises(DataSourceError, match="expected"):
        released_path("medcf/test.json")
    assert not list(tmp_path.rglob("test.json"))


def test_good_download_is_cached_and_verified(monkeypatch, tmp_path, data_dir):
    monkeypatch.delenv("MEDREK_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDREK_CACHE_DIR", str(tmp_path))
    payload = (data_dir / "medcf" / "test.json").read_bytes()
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload))
    path = released_path("medcf/test.json")
    assert path.is_relative_to(tmp_path) and path.read_bytes() == payload
