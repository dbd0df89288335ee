"""`bon fit` and the `mix` scorer: fits on synthetic labelled records with model-free scorers,
the selector file's determinism and errors, mix reproducing the fit, and the CLI end to end."""

from __future__ import annotations

import inspect
import json
import math
import random
import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

import bon
from bon import api
from bon.entrypoints.cli import main
from bon.errors import ConfigError, InputError
from bon.fitting import Example, FitOptions, fit_examples
from bon.scorers import ScoreOptions, scorers
from bon.scorers.mix import load_selector, standardise
from tests.conftest import costless, read_jsonl, write_jsonl

MODEL_FREE = ("longest", "shortest", "random", "vote", "mbr")
VOCAB = ["apple", "brick", "cloud", "delta", "eagle", "flame", "grape", "house"]


def synthetic(n: int, seed: int, label_by: str, candidates: int = 4) -> list[dict]:
    """Records of `candidates` texts with distinct word counts (5-letter words, so characters
    follow words) and a final number; the preferred one is the longest, or a random one."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        counts = rng.sample(range(3, 40), candidates)
        texts = [
            " ".join(rng.choice(VOCAB) for _ in range(c)) + f" answer {rng.randint(1, 3)}"
            for c in counts
        ]
        best = counts.index(max(counts)) if label_by == "length" else rng.randrange(candidates)
        out.append(
            {
                "id": f"{label_by}-{i}",
                "prompt": f"Question {i}?",
                "candidates": [{"text": t, "label": int(j == best)} for j, t in enumerate(texts)],
            }
        )
    return out


@pytest.fixture
def length_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "length.jsonl", synthetic(60, 0, "length"))


def fit(files, output, **options):
    options.setdefault("scorers", MODEL_FREE)
    return bon.fit(files, output, **options)


# --- standardisation ---------------------------------------------------------------------------


def test_standardise_is_a_z_score_in_the_scorers_direction():
    third = math.sqrt(1.5)
    assert standardise([1.0, 2.0, 3.0]) == pytest.approx([-third, 0.0, third])
    assert standardise([1.0, 2.0, 3.0], higher_is_better=False) == pytest.approx(
        [third, 0.0, -third]
    )


def test_standardise_gives_zeros_for_equal_scores_and_for_missing_ones():
    # 0.1 three times has a float mean of 0.10000000000000002: still all zeros, not noise.
    assert standardise([0.1, 0.1, 0.1]) == [0.0, 0.0, 0.0]
    assert standardise([None, float("nan"), 2.0]) == [0.0, 0.0, 0.0]
    assert standardise([None, 1.0, 3.0, float("inf")]) == [0.0, -1.0, 1.0, 0.0]


# --- fitting -----------------------------------------------------------------------------------


def test_labels_that_follow_length_give_positive_length_weights_and_full_accuracy(
    tmp_path, length_file
):
    report = fit(length_file, tmp_path / "sel.yaml")
    assert report.weights["longest"] > 0
    assert report.weights["length"] > 0
    assert report.cv_accuracy >= 0.95
    assert report.train_accuracy >= 0.95
    assert report.single["longest"] == 1.0
    assert report.single["shortest"] == 0.0
    assert (report.records, report.pairs) == (60, 180)
    assert list(report.weights) == [*MODEL_FREE, "length"]


def test_random_labels_give_chance_accuracy(tmp_path):
    path = write_jsonl(tmp_path / "noise.jsonl", synthetic(160, 1, "random"))
    report = fit(path, tmp_path / "sel.yaml")
    assert abs(report.cv_accuracy - 0.25) < 0.12
    assert report.train_accuracy < 0.5


def test_the_same_inputs_write_the_same_bytes_and_another_seed_the_same_weights(
    tmp_path, length_file
):
    out = tmp_path / "sel.yaml"
    first = fit(length_file, out).weights
    before = out.read_bytes()
    fit(length_file, out)
    assert out.read_bytes() == before
    other = fit(length_file, out, fold_seed=1)
    assert other.weights == first  # the full-data fit does not shuffle
    text = out.read_text()
    assert "fold_seed: 1" in text and "--fold-seed 1" in text
    assert out.read_bytes() != before


def test_the_selector_file_says_how_it_was_made(tmp_path, length_file):
    out = tmp_path / "sel.yaml"
    report = fit(length_file, out, folds=3, seed=7)
    text = out.read_text()
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert f"(bon {bon.__version__})" in head[0]
    assert any("--folds 3 --seed 7" in line and "--scorer mbr" in line for line in head)
    assert any(f"{length_file}: 60 used, 0 skipped" in line for line in head)
    assert any(f"cross-validated {report.cv_accuracy:g} (3 folds" in line for line in head)
    data = yaml.safe_load(text)
    assert data["format"] == 1
    assert data["scorers"]["random"] == {"seed": 7}
    assert data["scorers"]["mbr"] == {"max_response_words": 256, "similarity": "f1"}
    assert data["scorers"]["vote"] == {
        "answer": "number",
        "answer_pattern": None,
        "weight_by": None,
    }
    assert data["features"] == {"standardise": "within-record-z", "length": "log1p-words"}
    assert data["weights"] == report.weights
    assert data["fit"]["cv_accuracy"] == report.cv_accuracy
    assert not list(tmp_path.glob(".sel.yaml.*"))  # written through a temporary file


def test_fit_examples_weighs_each_record_once():
    """A record with many pairs counts as much as one with a single pair: two records whose
    preferences disagree on the only feature that differs cancel out (weight 0)."""
    many = Example([True, True, False, False], {"s": [2.0, 2.0, 1.0, 1.0]}, ["a"] * 4)
    one = Example([True, False], {"s": [1.0, 2.0]}, ["a"] * 2)
    report = fit_examples([many, one], ["s"], FitOptions(folds=2))
    assert report.weights == {"s": 0.0, "length": 0.0}


def test_records_without_label_variation_are_skipped_and_counted(tmp_path):
    rows = synthetic(20, 2, "length")
    rows[3]["candidates"] = [{**c, "label": 0} for c in rows[3]["candidates"]]
    rows[5]["candidates"] = rows[5]["candidates"][:1]
    path = write_jsonl(tmp_path / "some.jsonl", rows)
    out = tmp_path / "sel.yaml"
    report = fit(path, out, scorers=("longest",))
    assert report.records == 18
    assert [(e.line, e.problem) for e in report.skipped] == [
        (4, "no preferred candidate (label 1): nothing to find"),
        (6, "one candidate only: nothing to compare it with"),
    ]
    assert report.files == {str(path): (18, 2)}
    assert "18 used, 2 skipped" in out.read_text()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([[0, 0], [1, 1]], r"no record has label variation \(2 skipped"),
        ([[1], [0]], "every record has one candidate only"),
    ],
)
def test_a_file_with_nothing_to_fit_on_is_an_error_naming_it(tmp_path, labels, message):
    good = write_jsonl(tmp_path / "good.jsonl", synthetic(10, 3, "length"))
    rows = [
        {"prompt": f"q{i}", "candidates": [{"text": f"t{j}", "label": v} for j, v in enumerate(r)]}
        for i, r in enumerate(labels)
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=rf"bad\.jsonl: {message}") as caught:
        fit([good, bad], tmp_path / "sel.yaml", scorers=("longest",), folds=2)
    assert caught.value.path == str(bad)
    assert not (tmp_path / "sel.yaml").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scorers": ("longest", "mix")}, "`scorers` must not include mix"),
        ({"folds": 11}, r"`folds` must be at most the number of usable records \(10\), got 11"),
        ({"folds": 1}, "`folds` must be an integer >= 2, got 1"),
        ({"l2": 0}, "`l2` must be a number > 0, got 0"),
        ({"mix": "x.yaml"}, "unknown option"),
    ],
)
def test_bad_fit_options_are_config_errors(tmp_path, options, message):
    path = write_jsonl(tmp_path / "ten.jsonl", synthetic(10, 4, "length"))
    with pytest.raises(ConfigError, match=message):
        fit(path, tmp_path / "sel.yaml", **options)


# --- the mix scorer ----------------------------------------------------------------------------


def test_mix_reproduces_the_fitted_scores_exactly(tmp_path, length_file):
    out = tmp_path / "sel.yaml"
    report = fit(length_file, out, seed=3)
    scored = bon.score_records(read_jsonl(length_file), scorers=("mix",), mix=str(out), seed=5)
    assert [[c["scores"]["mix"] for c in r["candidates"]] for r in scored] == report.scores
    # The file's options win over the shared ones (seed 3 was fitted, 5 given here).
    assert scored[0]["scoring"]["mix"]["scorers"]["random"]["seed"] == 3
    evidence = scored[0]["candidates"][0]["mix"]
    assert set(evidence["scores"]) == set(MODEL_FREE)


def test_the_selector_content_enters_the_recorded_configuration(tmp_path, length_file):
    out = tmp_path / "sel.yaml"
    fit(length_file, out, scorers=("longest", "random"))
    records = read_jsonl(length_file)[:2]

    def config(path: Path) -> dict:
        (record, _) = bon.score_records(records, scorers=("mix",), mix=str(path))
        return record["scoring"]["mix"]

    first = config(out)
    copy = tmp_path / "copy.yaml"
    copy.write_bytes(out.read_bytes())
    assert config(copy) == first  # a moved file is the same selector
    out.write_text(out.read_text().replace("format: 1", "format: 1\n# edited"))
    assert config(out)["mix_sha256"] != first["mix_sha256"]


def test_mix_runs_model_scorers_through_the_score_cache(tmp_path, monkeypatch):
    """A scorer that runs a model sits behind the cache inside mix: the second run is served
    from it (a stand-in for such a scorer counts its calls)."""
    from bon.scorers.controls import LongestScorer

    calls = []

    class Counting(LongestScorer):
        uses_model = True

        def describe(self):
            return {"scorer": self.name, "version": "counting"}

        def score(self, queries):
            calls.append(sum(len(q.candidates) for q in queries))
            return super().score(queries)

    monkeypatch.setitem(scorers._items, "longest", Counting)
    selector = tmp_path / "sel.yaml"
    selector.write_text(SELECTOR)
    records = synthetic(3, 5, "length")
    first = bon.score_records(records, scorers=("mix",), mix=str(selector))
    again = bon.score_records(records, scorers=("mix",), mix=str(selector))
    assert calls == [12]
    assert costless(first) == costless(again)
    uncached = bon.score_records(records, scorers=("mix",), mix=str(selector), no_cache=True)
    assert calls == [12, 12]
    assert costless(uncached) == costless(first)


SELECTOR = """\
format: 1
scorers:
  longest: {}
  random:
    seed: 0
features:
  standardise: within-record-z
  length: log1p-words
weights:
  longest: 1.0
  random: 0.5
  length: 0.25
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  longest: {}\n", "  longest: {}\n  nosuch: {}\n", r":4: unknown scorer 'nosuch'"),
        (
            "  length: 0.25\n",
            "  length: 0.25\n  nosuch: 1.0\n",
            r":13: a weight for 'nosuch'.*not an installed",
        ),
        (
            "  length: 0.25\n",
            "  length: 0.25\n  shortest: 1.0\n",
            r":13: a weight for 'shortest'.*does not list",
        ),
        ("  random: 0.5\n", "", r":9: no weight for `random`"),
        ("  random: 0.5\n", "  random: lots\n", r":11: the weight of `random` must be a finite"),
        ("format: 1\n", "format: 2\n", r":1: format 2 is newer than this bon reads"),
        ("format: 1\n", "", r"sel\.yaml:1: no `format`"),
        ("format: 1\n", "format: one\n", r":1: `format` must be an integer >= 1, got 'one'"),
        ("    seed: 0\n", "    seed: 0\n    k: 3\n", r":6: `k` is not an option of random"),
        ("    seed: 0\n", "    seed: -1\n", r"sel\.yaml: `seed` must be an integer >= 0, got -1"),
        ("within-record-z", "global-z", r":7: `features.standardise` must be 'within-record-z'"),
        ("format: 1\n", "format: 1\nextra: 2\n", r":2: unknown key `extra`"),
        ("  longest: {}\n", "  mix: {}\n", r":3: a selector cannot run mix itself"),
        ("scorers:", "scorers: [", r"sel\.yaml:\d+: not valid YAML"),
        (SELECTOR, "- a list\n", r"sel\.yaml:1: a selector file must be a mapping"),
    ],
)
def test_a_bad_selector_file_is_an_error_naming_it_before_any_model_loads(
    tmp_path, old, new, message
):
    selector = tmp_path / "sel.yaml"
    assert old in SELECTOR
    selector.write_text(SELECTOR.replace(old, new, 1))
    records = synthetic(2, 6, "length")
    # A model that does not exist: the selector's error comes first, nothing loads.
    with pytest.raises(
        ConfigError, match=re.escape(str(selector)) + message if message[0] == ":" else message
    ):
        bon.score_records(records, scorers=("mix",), mix=str(selector), model="/no/such/model")


def test_scorers_disagreeing_on_a_shared_option_are_an_error(tmp_path):
    selector = tmp_path / "sel.yaml"
    text = SELECTOR.replace("  longest: {}\n", "  mbr:\n    max_response_words: 10\n")
    text = text.replace("  longest: 1.0\n", "  mbr: 1.0\n  relevance: 1.0\n")
    text = text.replace(
        "  random:\n    seed: 0\n",
        "  random:\n    seed: 0\n  relevance:\n    max_response_words: 20\n",
    )
    selector.write_text(text)
    with pytest.raises(
        ConfigError,
        match=r"sel\.yaml:8: mbr and relevance give `max_response_words` different values",
    ):
        ScoreOptions.from_keywords(scorers=("mix",), mix=str(selector))


def test_mix_needs_a_selector_file_and_an_existing_one():
    with pytest.raises(ConfigError, match="`mix` must name a selector file"):
        ScoreOptions(scorers=("mix",))
    with pytest.raises(ConfigError, match=r"no-such\.yaml: cannot read the selector file"):
        ScoreOptions.from_keywords(scorers=("longest",), mix="no-such.yaml")


def test_load_selector_keeps_the_file_order_and_hash(tmp_path):
    selector = tmp_path / "sel.yaml"
    selector.write_text(SELECTOR)
    loaded = load_selector(selector)
    assert loaded.names == ["longest", "random"]
    assert loaded.weights == {"longest": 1.0, "random": 0.5, "length": 0.25}
    assert len(loaded.sha256) == 64


# --- the command line and the API --------------------------------------------------------------


def test_fit_score_and_eval_pref_on_the_command_line(tmp_path, length_file):
    selector = tmp_path / "sel.yaml"
    runner = CliRunner()
    scorer_args = [w for name in ("longest", "vote", "mbr") for w in ("--scorer", name)]
    done = runner.invoke(main, ["fit", str(length_file), "-o", str(selector), *scorer_args, "-q"])
    assert done.exit_code == 0, done.output
    assert "| fitted, held out (5-fold CV) |" in done.output
    assert selector.exists()

    scored = tmp_path / "scored.jsonl"
    args = ["score", str(length_file), "-o", str(scored), "--scorer", "mix", "--mix", str(selector)]
    done = runner.invoke(main, [*args, "-q"])
    assert done.exit_code == 0, done.output
    rows = read_jsonl(scored)
    assert all(isinstance(c["scores"]["mix"], float) for r in rows for c in r["candidates"])

    args = ["eval", "pref", str(length_file), "--scorer", "longest", "--mix", str(selector)]
    done = runner.invoke(main, [*args, "--bootstrap", "0", "-q"])
    assert done.exit_code == 0, done.output
    table = [
        line.split("|")[1].strip() for line in done.output.splitlines() if line.startswith("|")
    ]
    assert table[2:] == ["longest", "mix", "uniform pick"]
    assert "| mix | 1.000 |" in done.output


def test_eval_pref_api_adds_the_mix_row(tmp_path, length_file):
    selector = tmp_path / "sel.yaml"
    fit(length_file, selector, scorers=("shortest",))
    report = bon.eval_pref(length_file, scorers=("random",), mix=str(selector), bootstrap=0)
    assert report.scorers == ["random", "mix"]
    assert report.overall.scorers["mix"].accuracy == 1.0


def test_fit_cli_errors_name_the_file(tmp_path):
    rows = [{"prompt": "q", "candidates": [{"text": "a", "label": 1}]}]
    bad = write_jsonl(tmp_path / "single.jsonl", rows)
    done = CliRunner().invoke(main, ["fit", str(bad), "-o", str(tmp_path / "s.yaml"), "-q"])
    assert done.exit_code != 0
    assert f"{bad}: every record has one candidate only" in done.output


def test_fit_cli_options_mirror_the_api():
    cli = {
        p.name: tuple(p.default) if isinstance(p.default, list) else p.default
        for p in main.commands["fit"].params
        if isinstance(p, click.Option) and not p.required
    }
    for own in ("help", "as_json", "quiet"):
        cli.pop(own, None)
    params = inspect.signature(api.fit).parameters.values()
    objects = ("fit", "score")  # the API's FitOptions and ScoreOptions objects
    keywords = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
    assert cli == {k: v for k, v in keywords.items() if k not in objects}
    assert keywords["l2"] == 1.0 and keywords["folds"] == 5 and keywords["fold_seed"] == 0


def test_fit_report_serialises(tmp_path, length_file):
    report = fit(length_file, tmp_path / "sel.yaml", scorers=("longest",))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["files"] == {str(length_file): {"used": 60, "skipped": 0}}
    assert "| longest alone | 1.000 |" in report.to_markdown()


def test_a_fit_on_a_packaged_dev_set_holds_on_its_test_half(tmp_path):
    """vs-small (references against SmolLM2 samples) with model-free scorers: the fitted
    selector beats a uniform pick held out, and on the test half as `bon eval pref` judges it."""
    data = Path(__file__).resolve().parent.parent / "data" / "pref"
    selector = tmp_path / "sel.yaml"
    report = fit(data / "vs_small.dev.jsonl", selector, scorers=("longest", "mbr"))
    assert report.records == 60
    assert report.cv_accuracy > 0.6
    test = bon.eval_pref(data / "vs_small.test.jsonl", scorers=(), mix=str(selector), bootstrap=0)
    assert test.overall.scorers["mix"].accuracy > 0.5


def test_test_files_are_judged_held_out_and_written_in_the_comments(tmp_path, length_file):
    held = write_jsonl(tmp_path / "held.jsonl", synthetic(30, 5, "length"))
    noise = write_jsonl(tmp_path / "noise.jsonl", synthetic(30, 6, "random"))
    out = tmp_path / "sel.yaml"
    report = fit(length_file, out, scorers=("longest",), test=(str(held), str(noise)))
    assert (report.records, report.test.overall.items) == (60, 60)  # test records never fitted
    held_group = report.test.subsets["held"]
    assert held_group.scorers["mix"].accuracy == 1.0  # the length rule carries over
    assert held_group.scorers["longest"].accuracy == 1.0
    assert report.test.subsets["noise"].scorers["mix"].accuracy < 0.6
    assert report.test.scorers == ["longest", "shortest", "mix"]
    comments = [line for line in out.read_text().splitlines() if line.startswith("#")]
    held_line = next(line for line in comments if line.startswith("#   held (30 records)"))
    assert "mix 1.000 [1.000, 1.000]; longest 1.000 [1.000, 1.000]; shortest 0.000" in held_line
    assert held_line.endswith("uniform pick 0.250")
    assert any(f"--test {held} --test {noise}" in line for line in comments)
    assert "Held out" in report.to_markdown()
    assert json.loads(json.dumps(report.to_dict()))["test"]["subsets"]["held"]["items"] == 30
    assert load_selector(out).weights == report.weights  # the rewritten file still loads
