"""Helpers shared by the benchmarks: another revision's `bon/`, unpacked; one measured
`python -m bon` process; the facts a results file records about its run."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import resource
import subprocess
import sys
import time
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


def run_bon(arguments: list[str], code: Path = ROOT) -> tuple[str, resource.struct_rusage, float]:
    """(stderr, resource usage, wall seconds) of one `python -m bon ARGUMENTS` process running
    `code`'s bon; a failed run stops the benchmark with its stderr."""
    command = [sys.executable, "-m", "bon", *arguments]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=code, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bon {arguments[0]} failed:\n{stderr[-2000:]}")
    return stderr, usage, seconds


def revision() -> str:
    """The short hash of the checkout's HEAD (the working tree a results file measured)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def command_line() -> str:
    """This script's command line, as a results file quotes it."""
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def versions(packages: tuple[str, ...]) -> str:
    """Python's version and those of the `packages` that are installed."""
    found = [f"python {platform.python_version()}"]
    for package in packages:
        with contextlib.suppress(md.PackageNotFoundError):
            found.append(f"{package} {md.version(package)}")
    return ", ".join(found)


def machine() -> str:
    """OS, architecture and core count."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def provenance(packages: tuple[str, ...] = ("torch", "transformers")) -> dict[str, str]:
    """What a results file records of how it was made: the command, revision, machine, load
    average and versions (of Python and of `packages`)."""
    return {
        "command": command_line(),
        "revision": revision(),
        "machine": machine(),
        "load": load_average(),
        "versions": versions(packages),
    }
