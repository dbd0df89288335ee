"""`--shard I/K` and `bon merge`: shards of a run joined back equal the unsharded run."""

import json

import pytest
from click.testing import CliRunner

import bon
from bon import api
from bon.entrypoints.cli import main
from bon.errors import ConfigError, InputError
from bon.outputs import manifest_path, mark_complete
from bon.shards import Shard, merge, parse_shard, shard_of
from tests.conftest import read_jsonl, without_seconds, write_jsonl

PROMPTS = [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(6)] + [
    {"prompt": "Same."},
    {"prompt": "Same."},  # no id: content ids, the repeat suffixed; both land in some shard
]


def test_shards_come_from_a_stable_hash_of_the_id():
    # Fixed values (SHA-256 of the id), the same in every process, unlike Python's hash().
    assert [shard_of(key, 3) for key in ("a", "b", "c", "7", "p0", "p1")] == [2, 2, 3, 3, 2, 1]
    assert [Shard(i, 3).holds("a") for i in (1, 2, 3)] == [False, True, False]
    assert parse_shard("2/5") == Shard(2, 5) and parse_shard(None) is None


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_a_bad_shard_names_the_constraint(text):
    with pytest.raises(ConfigError, match=r"`shard` must be I/K with 1 <= I <= K"):
        bon.generate("p.jsonl", "o.jsonl", shard=text)


def test_two_shards_merged_equal_the_unsharded_run_and_resume_it(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    options = {"model": tiny_model, "max_new_tokens": 4, "n": 2, "seed": 3, "quiet": True}
    parts = [tmp_path / f"cands.{i}.jsonl" for i in (1, 2)]
    written = [
        bon.generate(prompts, part, shard=f"{i}/2", **options).written
        for i, part in zip((1, 2), parts, strict=True)
    ]
    assert sum(written) == len(PROMPTS) and min(written) > 0
    assert not {r["id"] for r in read_jsonl(parts[0])} & {r["id"] for r in read_jsonl(parts[1])}

    merged = tmp_path / "merged.jsonl"
    result = CliRunner().invoke(
        main, ["merge", str(parts[1]), str(parts[0]), "--input", str(prompts), "-o", str(merged)]
    )
    assert result.exit_code == 0, result.output
    whole = tmp_path / "whole.jsonl"
    bon.generate(prompts, whole, **options)
    assert without_seconds(merged) == without_seconds(whole)
    # The merged file carries the shards' manifest: the unsharded run resumes all of it.
    again = bon.generate(prompts, merged, **options)
    assert (again.written, again.resumed) == (0, len(PROMPTS))


def _shard_files(tmp_path, rows_by_file):
    paths = []
    for name, rows in rows_by_file.items():
        path = write_jsonl(tmp_path / name, rows)
        manifest_path(path).write_text(json.dumps({"config_hash": "h", "config": {}}))
        mark_complete(path)
        paths.append(path)
    return paths


def test_merge_refuses_a_duplicate_id_naming_both_places(tmp_path):
    one, two = _shard_files(
        tmp_path, {"1.jsonl": [{"id": "a"}], "2.jsonl": [{"id": "b"}, {"id": "a"}]}
    )
    with pytest.raises(InputError, match=r"2\.jsonl:2: duplicate id 'a' \(also .*1\.jsonl:1\)"):
        merge([one, two], tmp_path / "out.jsonl")


def test_merge_refuses_a_missing_or_foreign_id(tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}]
    )
    (only_a,) = _shard_files(tmp_path, {"1.jsonl": [{"id": "a"}]})
    with pytest.raises(InputError, match=r"1 id\(s\) are in no shard \(first: 'b'\)"):
        merge([only_a], tmp_path / "out.jsonl", input=prompts)
    (with_c,) = _shard_files(tmp_path, {"2.jsonl": [{"id": "a"}, {"id": "b"}, {"id": "c"}]})
    with pytest.raises(InputError, match=r"2\.jsonl:3: id 'c' is not in"):
        merge([with_c], tmp_path / "out.jsonl", input=prompts)
    assert not (tmp_path / "out.jsonl").exists()


def test_merge_refuses_an_unfinished_shard_or_mixed_configurations(tmp_path):
    one, two = _shard_files(tmp_path, {"1.jsonl": [{"id": "a"}], "2.jsonl": [{"id": "b"}]})
    mark_complete(two, False)
    with pytest.raises(ConfigError, match=r"2\.jsonl is incomplete"):
        merge([one, two], tmp_path / "out.jsonl")
    mark_complete(two)
    manifest_path(two).write_text(json.dumps({"config_hash": "other", "complete": True}))
    with pytest.raises(ConfigError, match="different configurations"):
        merge([one, two], tmp_path / "out.jsonl")


def test_merge_without_input_sorts_by_id(tmp_path):
    one, two = _shard_files(
        tmp_path, {"1.jsonl": [{"id": "10"}, {"id": "b"}], "2.jsonl": [{"id": "9"}]}
    )
    report = api.merge([one, two], tmp_path / "out.jsonl")
    assert report.written == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["9", "10", "b"]
