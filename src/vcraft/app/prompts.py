"""Prompt sources: command-line arguments, stdin (`-`), and prompt files (`.txt`, `.jsonl`, `.csv`).

Files are read whole and checked before anything is rendered; a bad row is reported with its file and line.
`.jsonl` and `.csv` rows may carry their own settings (any of settings.Settings, such as seed, frames, fps,
steps, guidance, negative, image, continues, control_video) and an output `name`; their values are checked with the
rest of each video's settings when the run is planned (batch.plan), with the row's file and line in any error. A
row's `image` (picture), `continues`, `control_video` and `control_depth` (videos) are paths, relative to the file's
folder, read when the run is planned.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from vcraft.errors import VcraftError
from vcraft.pipeline.settings import INPUT_FILES, TYPES

ROW_COLUMNS = ("prompt", *(k for k in TYPES if k != "prompt"), "name")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    settings: dict[str, Any] = field(default_factory=dict)
    where: str = "argument"  # for messages: "prompts.jsonl:3", "stdin:2", "argument"


def setting_value(key: str, raw: Any, where: str) -> Any:
    """A setting's value as a prompt file gives it: text (a CSV cell, a `NAME=VALUE` argument) that reads as JSON is
    read so for a setting that is not text."""
    # The output's name (not a setting), or an input file's path: made relative to the prompt file's folder by
    # read_prompt_file, read when the run is planned.
    if key in ("name", *INPUT_FILES):
        if not isinstance(raw, str):
            raise VcraftError(f"{where}: '{key}' must be text, got {raw!r}")
        return raw
    if isinstance(raw, str) and TYPES.get(key) is not str:  # CSV cells are text
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            pass
    return raw  # checked with the rest of the video's settings (make_settings), then reported with `where`


def _row(values: dict[str, Any], where: str) -> PromptRow:
    unknown = sorted(set(values) - set(ROW_COLUMNS))
    if unknown:
        raise VcraftError(f"{where}: unknown column '{unknown[0]}'; allowed: {', '.join(ROW_COLUMNS)}")
    prompts = values.get("prompts")
    prompt = values.get("prompt") or (prompts[0] if isinstance(prompts, list) and prompts else None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise VcraftError(f"{where}: no prompt; every row needs a non-empty 'prompt' (or 'prompts')")
    settings = {k: setting_value(k, v, where) for k, v in values.items()
                if k != "prompt" and v is not None and v != ""}  # an empty CSV cell means "the default"
    return PromptRow(prompt.strip(), settings, where)


def _text_rows(text: str, name: str, separator: str | None = None) -> list[PromptRow]:
    """A prompt a line; with `separator`, a line's prompts along the video (FreeNoise's files: `A;B`)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(separator)] if separator else [line.strip()]
        rows.append(PromptRow(parts[0], {"prompts": parts} if len(parts) > 1 else {}, f"{name}:{n}"))
    return rows


def _jsonl_rows(text: str, name: str) -> list[PromptRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VcraftError(f"{name}:{n}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(values, dict):
            raise VcraftError(f"{name}:{n}: each line must be a JSON object like {{\"prompt\": \"...\"}}")
        rows.append(_row(values, f"{name}:{n}"))
    return rows


def _csv_rows(text: str, name: str) -> list[PromptRow]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "prompt" not in [f.strip() for f in reader.fieldnames]:
        raise VcraftError(f"{name}:1: the header has no 'prompt' column")
    rows = []
    for values in reader:
        where = f"{name}:{reader.line_num}"
        if None in values:
            raise VcraftError(f"{where}: more cells than the header has columns")
        rows.append(_row({k.strip(): v for k, v in values.items()}, where))
    return rows


READERS = {".txt": _text_rows, ".jsonl": _jsonl_rows, ".csv": _csv_rows}


def read_prompt_file(path: Path, separator: str | None = None) -> list[PromptRow]:
    """The rows of a prompt file; `separator` splits a .txt file's lines into prompts along the video."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise VcraftError(f"{path}: unknown prompt file type; use .txt, .jsonl or .csv")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise VcraftError(f"prompt file not found: {path}") from None
    except IsADirectoryError:
        raise VcraftError(f"{path} is a directory, not a prompt file") from None
    except UnicodeDecodeError as exc:
        raise VcraftError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rows = _text_rows(text, path.name, separator) if reader is _text_rows else reader(text, path.name)
    if not rows:
        raise VcraftError(f"{path}: no prompts in it (only blank lines or comments)")
    return [replace(row, settings={**row.settings, **{k: str(path.parent / row.settings[k])
                                                      for k in INPUT_FILES if k in row.settings}}) for row in rows]


def gather_prompts(arguments: list[str], prompts_file: Path | None, stdin: TextIO,
                   separator: str | None = None) -> list[PromptRow]:
    """Every prompt of a run, in order: the arguments (`-` reads stdin, one prompt a line), then the file;
    `separator` splits stdin's and a .txt file's lines into prompts along the video."""
    rows: list[PromptRow] = []
    for arg in arguments:
        if arg == "-":
            from_stdin = _text_rows(stdin.read(), "stdin", separator)
            if not from_stdin:
                raise VcraftError("no prompts on stdin; give one per line")
            rows += from_stdin
        else:
            rows.append(PromptRow(arg.strip()))
    if prompts_file is not None:
        rows += read_prompt_file(prompts_file, separator)
    if not rows:
        raise VcraftError("no prompt given; pass one or more prompts, - for stdin, or -f FILE")
    return rows
