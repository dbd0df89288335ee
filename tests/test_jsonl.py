import json

import pytest

from bon.errors import ConfigError, InputError
from bon.jsonl import manifest_path, open_output, read_lines
from tests.conftest import write_jsonl


def test_read_lines_reports_bad_json_with_line_and_goes_on(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"a": 1}, "", "{oops", {"b": 2}])
    lines = list(read_lines(path))
    assert [n for n, _ in lines] == [1, 3, 4]
    error = lines[1][1]
    assert isinstance(error, InputError)
    assert str(error).startswith(f"{path}:3: not valid JSON")


def test_read_lines_names_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="missing.jsonl: cannot read the file"):
        list(read_lines(tmp_path / "missing.jsonl"))


def test_resume_repairs_a_half_written_line_and_keeps_done_ids(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {"a": 1}) as writer:
        writer.write({"id": "x"})
        writer.write({"id": "y"})
    with open(out, "a") as handle:
        handle.write('{"id": "z", "cut')  # a kill in the middle of a write
    with open_output(out, {"a": 1}) as writer:
        assert writer.done == {"x", "y"}
        writer.write({"id": "z"})
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["x", "y", "z"]


def test_a_changed_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {"n": 4}) as writer:
        writer.write({"id": "x"})
    with pytest.raises(ConfigError, match="different configuration.*--overwrite"):
        open_output(out, {"n": 8})
    with open_output(out, {"n": 8}, overwrite=True) as writer:
        assert writer.done == set()
    assert out.read_text() == ""
    assert json.loads(manifest_path(out).read_text())["config"] == {"n": 8}


def test_a_file_bon_did_not_write_is_not_appended_to(tmp_path):
    out = write_jsonl(tmp_path / "theirs.jsonl", [{"id": "x"}])
    with pytest.raises(ConfigError, match="not written by this command"):
        open_output(out, {})
