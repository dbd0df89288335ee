"""bon: best-of-N sampling with FLIP, a reward model that infers the instruction behind a response.

Stages (each also a `bon` CLI command): `generate` samples N candidates per prompt, `score` scores
them, `select` keeps the best; `rerank` is score + select; `run` is all three.
"""

from bon.api import (
    FileOptions,
    export,
    export_records,
    fit,
    generate,
    generate_records,
    rerank,
    rerank_records,
    run,
    run_records,
    score,
    score_records,
    select,
    select_records,
)
from bon.errors import BonError, ConfigError, EngineError, InputError, RecordError
from bon.evals.curve import curve_file as curve
from bon.evals.pref import eval_pref
from bon.export import ExportOptions
from bon.fitting import FitOptions
from bon.generator import GenerateOptions
from bon.outputs import Report
from bon.recipes import load_recipe
from bon.scorers import ScoreOptions
from bon.select import SelectOptions

__version__ = "0.2.0"

__all__ = [
    "BonError",
    "ConfigError",
    "EngineError",
    "ExportOptions",
    "FileOptions",
    "FitOptions",
    "GenerateOptions",
    "InputError",
    "RecordError",
    "Report",
    "ScoreOptions",
    "SelectOptions",
    "curve",
    "eval_pref",
    "export",
    "export_records",
    "fit",
    "generate",
    "generate_records",
    "load_recipe",
    "rerank",
    "rerank_records",
    "run",
    "run_records",
    "score",
    "score_records",
    "select",
    "select_records",
]
