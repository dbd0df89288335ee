import json
import math
import os

import numpy as np
import pytest

from bon.codec import canonical, dumps, loads, read_lines
from bon.errors import ConfigError, InputError
from bon.outputs import locked, manifest_path, open_output
from tests.conftest import write_jsonl


def test_read_lines_reports_bad_json_with_line_and_goes_on(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"a": 1}, "", "{oops", {"b": 2}])
    lines = list(read_lines(path))
    assert [n for n, _ in lines] == [1, 3, 4]
    error = lines[1][1]
    assert isinstance(error, InputError)
    assert str(error).startswith(f"{path}:3: not valid JSON")


def test_a_null_line_is_a_value_not_a_blank_line(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ["null", " \t", "0"])
    assert list(read_lines(path)) == [(1, None), (3, 0)]


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


def test_invalid_utf8_is_an_input_error_with_byte_and_column(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n{"prompt": "caf\xe9"}\n{"b": 2}\n')
    lines = list(read_lines(path))
    assert [n for n, _ in lines] == [1, 2, 3]
    assert str(lines[1][1]) == f"{path}:2: not valid UTF-8 (byte 0xe9 at column 16)"
    assert lines[2][1] == {"b": 2}


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"b": "\\u0000\\u001f"}\r\n')
    assert list(read_lines(path)) == [(1, {"a": 1}), (2, {"b": "\x00\x1f"})]


def test_json_nested_too_deeply_is_an_input_error(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ["[" * 100_000 + "]" * 100_000])
    ((_, error),) = read_lines(path)
    assert str(error) == f"{path}:1: JSON nested too deeply to read"


def test_dumps_writes_non_finite_numbers_as_null():
    text = dumps({"s": [math.nan, math.inf, -math.inf, 0.5], "t": {"u": math.nan}})
    assert text == '{"s":[null,null,null,0.5],"t":{"u":null}}'


@pytest.mark.parametrize(
    "value",
    [
        {"b": [1, 0.5, None, True], "a": "é\x00\u2028😀", "c": {"z": 1, "y": -0.0}},
        {"tiny": 1e-7, "huge": 1e22, "nan": math.nan, "big": 2**70, "np": np.float64(0.25)},
        ["a\ud800z", 12345678901234567890, (1, 2)],
    ],
)
def test_canonical_is_the_standard_librarys_text(value):
    expected = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert canonical(value) == expected


@pytest.mark.parametrize(
    "text",
    ['{"id": 123456789012345678901234567890}', "[NaN, -Infinity, 1e400]", '"a\\ud800z"'],
)
def test_loads_reads_what_the_standard_library_reads(text):
    assert repr(loads(text)) == repr(json.loads(text))


def test_control_characters_nul_and_lone_surrogates_round_trip(tmp_path):
    value = {"id": "x", "text": "a\x00b\x07\x1f\u2028\ud800z", "é": "ü"}
    out = tmp_path / "out.jsonl"
    with open_output(out, {}) as writer:
        writer.write(value)
    assert [r for _, r in read_lines(out)] == [value]
    assert b"\\u0000" in out.read_bytes()  # JSON escapes, not raw control bytes


def test_a_corrupt_manifest_is_a_config_error_naming_it(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {"a": 1}) as writer:
        writer.write({"id": "x"})
    manifest_path(out).write_text('{"config_hash": "12', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"out\.jsonl\.manifest\.json is not valid JSON; pass"):
        open_output(out, {"a": 1})
    manifest_path(out).write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="manifest.json is not valid JSON"):
        open_output(out, {"a": 1})
    with open_output(out, {"a": 1}, overwrite=True) as writer:
        assert writer.done == set()
    assert json.loads(manifest_path(out).read_text())["config"] == {"a": 1}


def test_the_manifest_is_replaced_not_rewritten_in_place(tmp_path):
    out = tmp_path / "out.jsonl"
    open_output(out, {"n": 1}).close()
    old = tmp_path / "old-manifest.json"
    os.link(manifest_path(out), old)  # a second name for the old manifest's inode
    open_output(out, {"n": 2}, overwrite=True).close()
    assert json.loads(old.read_text())["config"] == {"n": 1}
    assert json.loads(manifest_path(out).read_text())["config"] == {"n": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_same_config_with_overwrite_resumes(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {"n": 1}) as writer:
        writer.write({"id": "x"})
    with open_output(out, {"n": 1}, overwrite=True) as writer:
        assert writer.done == {"x"}


def test_unwanted_and_repeated_records_are_dropped_atomically(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {}) as writer:
        for key in ["a", "b", "a", "c"]:
            writer.write({"id": key, "v": key})
    inode = out.stat().st_ino
    with open_output(out, {}, keep=lambda key, record: key != "b") as writer:
        assert writer.done == {"a", "c"} and writer.dropped == ["b", "a"]
    assert [r["id"] for _, r in read_lines(out)] == ["a", "c"]
    assert out.stat().st_ino != inode  # a new file took the old one's place


def test_finish_puts_records_in_the_given_order(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_output(out, {}) as writer:
        for key in ["b", "a", "c"]:
            writer.write({"id": key})
        assert writer.finish(["a", "b", "c"]) is True
        writer.write({"id": "d"})
        assert writer.finish(["a", "b", "c", "d"]) is False
    assert [r["id"] for _, r in read_lines(out)] == ["a", "b", "c", "d"]


def test_a_second_lock_on_the_same_output_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "out.jsonl"
    with locked(out) as path:
        assert path.read_text() == f"{os.getpid()}\n"
        message = f"out.jsonl is being written by another bon process \\(pid {os.getpid()}\\)"
        with (
            pytest.raises(ConfigError, match=message + "; wait for it or choose another"),
            locked(out),
        ):
            pass
    assert not path.exists()
    with locked(out):
        pass
