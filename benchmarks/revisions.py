"""Helpers shared by the before/after benchmarks: another revision's `bon/`, unpacked."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, folder: Path) -> Path:
    """`bon/` of git revision `rev`, unpacked under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", rev, "bon"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
