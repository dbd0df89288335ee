"""Wall time of `bon run --ray` (a local Ray cluster) against the plain local `bon run`.

The same small job both ways: the packaged SmolLM2 generates N candidates for the first prompts
of data/sample_prompts.jsonl, `flip-tokens` scores them, the selector picks one. The Ray run
starts its cluster inside this process (timed apart) and runs generation and scoring on a pool
of actors; the outputs are checked to be byte-identical. Writes a Markdown table:

    python benchmarks/ray_vs_local.py --prompts 8 --n 4 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=0.5, help="CPUs per actor")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/ray_vs_local.md"))
    args = parser.parse_args()

    import ray

    import bon
    from bon.api import RUN_FILES

    work = Path(tempfile.mkdtemp(prefix="bon-ray-bench-"))
    prompts = work / "prompts.jsonl"
    lines = (ROOT / "data/sample_prompts.jsonl").read_text().splitlines()[: args.prompts]
    prompts.write_text("\n".join(lines) + "\n")
    options = {
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model,
        "reranker_model": args.model,
        "scorers": ("flip-tokens",),
        "no_cache": True,
        "quiet": True,
    }

    start = time.perf_counter()
    bon.run(prompts, work / "local", **options)
    local_s = time.perf_counter() - start

    start = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=os.cpu_count(),
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    bon.run(
        prompts,
        work / "ray",
        ray="local",
        ray_actors=args.actors,
        ray_cpus=args.cpus,
        **options,
    )
    ray_s = time.perf_counter() - start
    ray.shutdown()

    same = all(
        (work / "local" / f).read_bytes() == (work / "ray" / f).read_bytes() for f in RUN_FILES
    )
    result = {
        "prompts": len(lines),
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model,
        "actors": args.actors,
        "cpus_per_actor": args.cpus,
        "local_s": round(local_s, 1),
        "ray_init_s": round(init_s, 1),
        "ray_run_s": round(ray_s, 1),
        "identical_outputs": same,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))
    write_report(Path(args.out), result, " ".join(sys.argv[1:]))


def write_report(path: Path, r: dict, argv: str) -> None:
    text = f"""# `bon run --ray` against the local `bon run`

Written by `python benchmarks/ray_vs_local.py {argv}` on {platform.machine()} with
{r["cpu_count"]} CPUs (1-minute load average {r["load_average_1m"]} at the end: the machine was
shared with other jobs, so the times are indicative). Job: {r["prompts"]} prompts x
{r["n"]} candidates x {r["max_new_tokens"]} new tokens from `{r["model"]}`, scored by
`flip-tokens`, then selected; no score cache. Ray: a local cluster started in the process,
{r["actors"]} actors per stage at {r["cpus_per_actor"]} CPU each.

| run | wall time (s) |
|---|---|
| local `bon run` | {r["local_s"]} |
| Ray cluster start (`ray.init`) | {r["ray_init_s"]} |
| `bon run --ray` (cluster running) | {r["ray_run_s"]} |
| Ray total | {round(r["ray_init_s"] + r["ray_run_s"], 1)} |

Outputs of the two runs byte-identical: {"yes" if r["identical_outputs"] else "NO"}.

The Ray time includes what the local run does not have: starting actors that each load the
model (per stage), and passing the batches through Ray Data (a spool file, `read_json`,
`map_batches`). Selection runs locally in both.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
