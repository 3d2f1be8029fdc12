"""Prompt sources: arguments, stdin, .txt/.jsonl/.csv files, and their errors with file and line."""

from __future__ import annotations

import io

import pytest

from vcraft.app.prompts import PromptRow, gather_prompts, read_prompt_file
from vcraft.errors import VcraftError


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_txt_skips_blank_lines_and_comments(tmp_path):
    path = write(tmp_path, "p.txt", "# a comment\n\na red circle moving left\n  a blue square  \n")
    assert read_prompt_file(path) == [PromptRow("a red circle moving left", {}, "p.txt:3"),
                                      PromptRow("a blue square", {}, "p.txt:4")]


def test_jsonl_and_csv_rows_carry_their_settings(tmp_path):
    jsonl = write(tmp_path, "p.jsonl", '{"prompt": "a fox", "seed": 4, "frames": 8, "guidance": 7, '
                                       '"guidance_min_t": 600}\n'
                                       '\n{"prompt": "a cat", "negative": "blur", "name": "cat"}\n')
    assert read_prompt_file(jsonl) == [
        PromptRow("a fox", {"seed": 4, "frames": 8, "guidance": 7.0, "guidance_min_t": 600}, "p.jsonl:1"),
        PromptRow("a cat", {"negative": "blur", "name": "cat"}, "p.jsonl:3")]
    table = write(tmp_path, "p.csv", 'prompt,seed,steps,negative\n"a fox, running",4,,\na cat,,10,blur\n')
    assert read_prompt_file(table) == [PromptRow("a fox, running", {"seed": 4}, "p.csv:2"),
                                       PromptRow("a cat", {"steps": 10, "negative": "blur"}, "p.csv:3")]


def test_arguments_stdin_and_file_in_order(tmp_path):
    path = write(tmp_path, "p.txt", "from the file\n")
    rows = gather_prompts(["first", "-", "last"], path, io.StringIO("one\n\ntwo\n"))
    assert [r.prompt for r in rows] == ["first", "one", "two", "last", "from the file"]
    assert rows[2].where == "stdin:3"


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "", "p.txt: no prompts in it"),
    ("p.txt", "# only\n\n# comments\n", "no prompts in it"),
    ("p.txt", b"a caf\xe9\n", "not UTF-8"),
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": "broken"\n', "p.jsonl:2: not valid JSON"),
    ("p.jsonl", '["a list"]\n', "p.jsonl:1: each line must be a JSON object"),
    ("p.jsonl", '{"text": "a fox"}\n', "p.jsonl:1: unknown column 'text'"),
    ("p.jsonl", '{"prompt": "  "}\n', "p.jsonl:1: no prompt"),
    ("p.csv", "text,seed\na fox,1\n", "p.csv:1: the header has no 'prompt' column"),
    ("p.csv", "prompt,seed\na fox,1,2\n", "p.csv:2: more cells than the header"),
    ("p.yaml", "prompt: a fox\n", "unknown prompt file type"),
])
def test_bad_prompt_files_name_the_file_and_line(tmp_path, name, text, message):
    with pytest.raises(VcraftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_prompt_file(write(tmp_path, name, text))


@pytest.mark.parametrize("name, text, message", [
    ("p.jsonl", '{"prompt": "a fox", "frames": "many"}\n', "p.jsonl:1: 'frames' must be a number"),
    ("p.jsonl", '{"prompt": "a fox", "seed": 1.5}\n', "p.jsonl:1: 'seed' must be a number (int)"),
    ("p.jsonl", '{"prompt": "a fox", "steps": true}\n', "p.jsonl:1: 'steps' must be a number"),
    ("p.csv", "prompt,seed\na fox,x\n", "p.csv:2: 'seed' must be a number"),
])
def test_bad_values_in_prompt_files_name_the_file_and_line_when_the_run_is_planned(tmp_path, name, text, message):
    from vcraft.app.batch import plan
    from vcraft.app.options import RunOptions
    from vcraft.config import load_preset

    rows = read_prompt_file(write(tmp_path, name, text))
    with pytest.raises(VcraftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(rows, load_preset("shapes"), {}, 0, 2, RunOptions(output=tmp_path / "out"))


def test_missing_sources():
    with pytest.raises(VcraftError, match="no prompt given"):
        gather_prompts([], None, io.StringIO(""))
    with pytest.raises(VcraftError, match="no prompts on stdin"):
        gather_prompts(["-"], None, io.StringIO("\n"))
