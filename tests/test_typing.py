"""Static types of the API: `bon/keywords.py` is current, and mypy catches misspelled keywords.

The mypy tests are slow on a fresh machine (mypy first reads torch and transformers, about a
minute and a half); with the cache CI's `mypy` step leaves in `.mypy_cache` they take seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bon import keywords_gen

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "typing_examples.py"


def test_the_keywords_module_is_generated_from_the_declarations():
    """Regenerate with `python -m bon.keywords_gen` when this fails."""
    assert keywords_gen.TARGET.read_text(encoding="utf-8") == keywords_gen.render()


def test_tuple_options_are_sequences():
    assert keywords_gen.annotation("tuple[str, ...]") == "Sequence[str]"
    assert keywords_gen.annotation("tuple[str, ...] | None") == "Sequence[str] | None"
    assert keywords_gen.annotation("tuple[int, str]") == "tuple[int, str]"


def _mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    """mypy with the project's configuration, from the root so that `bon` is this tree's."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_the_typed_examples_pass_mypy():
    result = _mypy(EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_catches_misspelled_keywords_and_wrong_types(tmp_path):
    calls = {
        "temperture": 'bon.run("p.jsonl", "out", temperture=0.7)',
        '"batch_size" to "score" has incompatible type "str"': (
            'bon.score("a", "b", batch_size="16")'
        ),
        "max_new_token": 'bon.generate("p.jsonl", "c.jsonl", max_new_token=64)',
        '"score" to "score" has incompatible type "SelectOptions"': (
            'bon.score("a", "b", score=bon.SelectOptions())'
        ),
        "concurrent": 'bon.generate("p.jsonl", "c.jsonl", concurrent=True)',  # run's alone
    }
    source = tmp_path / "misspelled.py"
    source.write_text("import bon\n\n" + "\n".join(calls.values()) + "\n")
    result = _mypy(source)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = {
        int(m["line"]): m["message"]
        for m in re.finditer(r"misspelled\.py:(?P<line>\d+): error: (?P<message>.*)", result.stdout)
    }
    for line, expected in enumerate(calls, start=3):
        assert expected in errors.get(line, ""), (line, result.stdout)
    assert len(errors) == len(calls), result.stdout
