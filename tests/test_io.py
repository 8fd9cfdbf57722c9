import pytest

from medrek.io import atomic_path, write_json, write_text


def test_failed_write_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_write_json_is_byte_stable(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {"b": 1, "a": [1, 2]})
    write_json(b, {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()


def test_written_files_are_world_readable(tmp_path):
    path = write_text(tmp_path / "x.txt", "hi")
    assert path.stat().st_mode & 0o777 == 0o644
