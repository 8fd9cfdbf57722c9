"""The shell commands of README.md and docs/ run as pasted: what each names exists.

Every ``bash`` block is read line by line (continuations joined, comments dropped), in order, so
a ``mkdir -p`` or ``cp`` earlier in a block counts. A ``make`` target must exist in the Makefile
and a ``PARAMS=`` file must exist; a papermill input notebook must exist, its output folder
must exist or be made earlier, and every ``-p`` name and ``-y`` key must be a parameter of that
notebook; a ``python -m`` / ``-m`` module must be importable from here; a ``params/*.yaml``
argument must exist. Nothing is executed: the long commands train or evaluate for hours.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import yaml

from medrek.pipeline import notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)


def commands(text: str) -> list[list[str]]:
    """The commands of every bash block of ``text``, each split as the shell would."""
    out = []
    for block in BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def problems(cmds: list[list[str]], root: Path = ROOT) -> list[str]:
    """What the commands name that does not exist (in order: earlier mkdir / cp count)."""
    made: set[Path] = set()
    targets = set(re.findall(r"^([a-z][\w-]*):", (root / "Makefile").read_text("utf-8"), re.M))
    bad = []
    for words in cmds:
        exe = Path(words[0]).name
        if exe == "mkdir":
            made |= {root / w for w in words[1:] if not w.startswith("-")}
        elif exe == "cp":
            made.add(root / words[-1])
        elif exe == "make":
            for w in words[1:]:
                if "=" in w:
                    name, value = w.split("=", 1)
                    if name == "PARAMS" and not ((root / value).exists() or root / value in made):
                        bad.append(f"make {name}={value}: no such file")
                elif w not in targets:
                    bad.append(f"make {w}: no such target")
        elif exe == "papermill":
            bad += _papermill(words, root, made)
        elif "-m" in words:
            module = words[words.index("-m") + 1]
            if importlib.util.find_spec(module) is None:
                bad.append(f"-m {module}: no such module")
        for w in words:
            if re.fullmatch(r"params/[\w.-]+\.yaml", w) and not ((root / w).exists() or root / w in made):
                bad.append(f"{w}: no such params file")
    return bad


def _papermill(words: list[str], root: Path, made: set[Path]) -> list[str]:
    if "--help-notebook" in words:
        nb = words[words.index("--help-notebook") + 1]
        return [] if (root / nb).exists() else [f"papermill --help-notebook {nb}: no such notebook"]
    args = [w for w in words[1:] if not w.startswith("-")]
    source, output = root / args[0], root / args[1]
    if not source.exists():
        return [f"papermill {args[0]}: no such notebook"]
    bad = [] if output.parent.exists() or output.parent in made else [
        f"papermill output {args[1]}: its folder does not exist (papermill will not make it)"]
    declared = notebook_parameters(source)
    names = [words[i + 1] for i, w in enumerate(words) if w == "-p"]
    for i, w in enumerate(words):
        if w == "-y":
            names += list(yaml.safe_load(words[i + 1]))
    return bad + [f"papermill {args[0]}: no parameter {n!r}" for n in names if n not in declared]


def test_every_readme_and_docs_command_names_what_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/*/README.md"))]
    found = {str(p.relative_to(ROOT)): problems(commands(p.read_text("utf-8"))) for p in pages}
    assert sum(len(commands(p.read_text("utf-8"))) for p in pages) > 5, "no shell commands found"
    assert not {k: v for k, v in found.items() if v}, found


def test_the_checker_catches_what_a_paste_would_trip_on(tmp_path):
    text = ("```bash\n.venv/bin/papermill notebooks/03_single_edit.ipynb runs/new/03.ipynb -p limit 5 -p limt 5 \\\n"
            "    -y '{methods: [ike]}'\nmake reproduce PARAMS=params/own.yaml\nmake reproduc\n"
            "python -m medrek.nowhere\n```\n")
    assert problems(commands(text)) == [
        "papermill output runs/new/03.ipynb: its folder does not exist (papermill will not make it)",
        "papermill notebooks/03_single_edit.ipynb: no parameter 'limt'",
        "make PARAMS=params/own.yaml: no such file",
        "make reproduc: no such target", "-m medrek.nowhere: no such module"]
    fixed = "```bash\nmkdir -p runs/new\ncp params/small.yaml params/own.yaml\nmake reproduce PARAMS=params/own.yaml\n```\n"
    assert problems(commands(fixed)) == []
