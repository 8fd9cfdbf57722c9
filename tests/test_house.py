"""The package stays readable: no class in ``medrek/`` grows past the 250 lines a reader can hold."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medrek"
MAX_CLASS_LINES = 250


def class_lengths(root: Path = PACKAGE) -> dict[str, int]:
    """``module.py:Class`` -> lines from its ``class`` line to its last, for every class under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                out[f"{path.relative_to(root.parent)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_class_in_the_package_is_over_250_lines():
    lengths = class_lengths()
    assert lengths["medrek/editor.py:Editor"] > 100  # the walk finds the classes it should
    too_long = {name: n for name, n in lengths.items() if n > MAX_CLASS_LINES}
    assert not too_long, f"split these along their seams (see docs/architecture.md): {too_long}"


def test_the_length_rule_counts_a_long_class(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("class A:\n" + "    x = 1\n" * 300 + "\nclass B:\n    pass\n")
    assert class_lengths(tmp_path / "pkg") == {"pkg/m.py:A": 301, "pkg/m.py:B": 2}
