"""The README's two commands, timed as a newcomer runs them: each in a fresh clone of HEAD, in a
fresh virtual environment, with pip's cache off (every package is fetched again) and an empty
bon cache folder (the default model is converted again).

    python benchmarks/fresh_clone.py

Writes benchmarks/results/fresh_clone.md: each command's wall time, its last output lines, and
the stage times the progress bars printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, revision  # noqa: E402

HEADINGS = {
    "quick start": "Set up and run the whole best-of-N job",
    "tests": "Set up and run the fast tests",
}


def readme_command(heading: str) -> str:
    """The first command line after the README paragraph that starts with `heading`."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    return next(line for line in lines[start:] if line.startswith("python3 -m venv"))


def timed(command: str, folder: Path) -> tuple[float, int, str]:
    """(seconds, exit code, output) of `command` run by bash in a fresh clone under `folder`."""
    clone = folder / "bon"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "BON_CACHE_DIR": str(folder / "cache")}
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True
    )
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr


def stage_times(output: str) -> list[str]:
    """The final reading of each progress bar (`stage: 100%|...| 8/8 [02:58<00:00, ...]`) and
    pytest's closing line."""
    found = {}
    for name, total in re.findall(
        r"(generate|score|select): 100%\|[^|]*\| \S+ \[([0-9:]+)<", output
    ):
        found[name] = total
    out = [f"{name} {total}" for name, total in found.items()]
    out += re.findall(r"^\d+ passed.*$", output, flags=re.M)
    return out


def main() -> None:
    load = load_average()
    rows = []
    for name, heading in HEADINGS.items():
        command = readme_command(heading)
        with tempfile.TemporaryDirectory() as scratch:
            seconds, code, output = timed(command, Path(scratch))
        print(f"{name}: {seconds:.0f} s, exit {code}", file=sys.stderr)
        rows.append((name, command, seconds, code, stage_times(output)))
    lines = [
        "# The README's commands from a fresh clone",
        "",
        f"Command: `{command_line()}`",
        "",
        f"bon {revision()}; {machine()}; load before: {load}. Each command ran in a fresh clone "
        "of HEAD and a fresh virtual environment, with pip's cache off and an empty bon cache.",
        "",
        "| command | exit | seconds | minutes | stages (from the progress bars) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, _, seconds, code, stages in rows:
        lines.append(
            f"| {name} | {code} | {seconds:.0f} | {seconds / 60:.1f} | {'; '.join(stages)} |"
        )
    lines += ["", *[f"- {name}: `{command}`" for name, command, *_ in rows]]
    path = ROOT / "benchmarks/results/fresh_clone.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
