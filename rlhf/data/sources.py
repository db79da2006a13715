"""Where rows come from: a shipped set, local files (one, a directory or a glob), or a hub id, read one record
at a time with the place it came from (`file:line`, or `split:row`) for error messages.

JSON and JSONL are read line by line in plain Python: `datasets`' JSON reader infers one Arrow type per column
from a block of rows and refuses files that are valid line by line (a label written `true` in one row and `1`
in the next), and its errors name no line. It also takes seconds to import, and a bad row in a JSONL file must
fail at once. CSV, Parquet and hub ids go through `datasets` (memory-mapped Arrow, never a Python list).
"""

from __future__ import annotations

import contextlib
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.hub import looks_local

SHIPPED = Path(__file__).resolve().parent.parent / "datasets"
KINDS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Source:
    label: str  # what the user named, resolved: a file, a directory, a glob or a hub id
    files: list[Path] = field(default_factory=list)  # empty for a hub id
    kind: str = "hub"  # json | csv | parquet | hub


def shipped_names() -> str:
    return ", ".join(sorted(p.stem for p in SHIPPED.glob("*.jsonl")))


def resolve(path: str, key: str) -> Source:
    """The files (or the hub id) that data.path (or data.eval_path) names."""
    shipped = SHIPPED / f"{path}.jsonl"
    if "/" not in path and "." not in path and shipped.is_file():
        return Source(str(shipped), [shipped], "json")
    if any(c in path for c in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(Path(path).expanduser()), recursive=True))]
        return _files(path, [f for f in files if f.is_file() and f.suffix in KINDS], key)
    if path.endswith(tuple(KINDS)) or looks_local(path):
        target = Path(path).expanduser()
        if target.is_dir():
            return _files(
                path, sorted(f for f in target.rglob("*") if f.is_file() and f.suffix in KINDS), key
            )
        if not target.is_file():
            raise UserError(
                f"data.{key}={path}: file not found; fix: give an existing .json, .jsonl, .csv or .parquet "
                f"file (or a directory or glob of them), or a shipped set: {shipped_names()}"
            )
        if target.suffix not in KINDS:
            raise UserError(
                f"data.{key}={path}: {target.suffix or 'no'} suffix is not a data file type this reads; "
                "fix: give a .json, .jsonl, .csv or .parquet file"
            )
        return Source(str(target), [target], KINDS[target.suffix])
    if path.count("/") == 1:
        return Source(path)
    raise UserError(
        f"data.{key}={path}: not a shipped data set, a file or a hub id; fix: use one of {shipped_names()}, "
        "a .json/.jsonl/.csv/.parquet path, a directory or glob of them, or org/name"
    )


def _files(path: str, files: list[Path], key: str) -> Source:
    if not files:
        raise UserError(
            f"data.{key}={path}: no .json, .jsonl, .csv or .parquet files there; fix: point it at data files"
        )
    kinds = sorted({KINDS[f.suffix] for f in files})
    if len(kinds) > 1:
        raise UserError(
            f"data.{key}={path}: holds files of several types ({', '.join(kinds)}); fix: keep one type "
            "together, or name one with a glob such as dir/*.jsonl"
        )
    return Source(path, files, kinds[0])


def records(source: Source, cfg: Any, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of the source, in order; `split`: a hub split other than
    data.split."""
    if source.kind == "json":
        for file in source.files:
            yield from _json_records(file)
        return
    split = split or cfg.split
    dataset = _with_datasets(source, cfg, split)
    single = len(source.files) == 1
    for i, record in enumerate(dataset):
        if source.kind == "csv" and single:
            where = f"{source.files[0]}:{i + 2}"  # line 1 is the header
        elif source.kind == "hub":
            where = f"{source.label}[{split}]:row {i + 1}"
        else:
            where = f"{source.label}:row {i + 1}"
        yield where, record


def _json_records(file: Path) -> Iterator[tuple[str, Any]]:
    with file.open("rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        yield from _json_array(file)
        return
    offset = 0
    with file.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _decode(file, raw, offset, number)
            offset += len(raw)
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                yield f"{file}:{number}", json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{file}:{number}: not valid JSON ({e.msg}); fix: correct or remove that line"
                ) from None


def _json_array(file: Path) -> Iterator[tuple[str, Any]]:
    """The items of a JSON list one by one, each with the line it starts on (the file is read whole: for
    data too large for memory, write JSONL)."""
    raw = file.read_bytes()
    text = _decode(file, raw, 0, None).removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    while True:
        start = pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        line += text.count("\n", start, pos)
        if pos < len(text) and text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}:{e.lineno}: not valid JSON ({e.msg}); fix: correct the file") from None
        yield f"{file}:{line}", item
        line += text.count("\n", pos, end)
        pos = end
        while pos < len(text) and text[pos].isspace():
            line += text[pos] == "\n"
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise UserError(
                f"{file}:{line}: not valid JSON (expected ',' or ']' after an item); fix: correct the file"
            )


def _decode(file: Path, raw: bytes, offset: int, line: int | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = f", line {line}" if line else ""
        raise UserError(
            f"{file}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {offset + e.start}{at}); fix: save "
            f"it as UTF-8, e.g. iconv -f latin1 -t utf-8 {file.name} > utf8-{file.name}"
        ) from None


def check_utf8(file: Path, chunk: int = 1 << 20) -> None:
    """A text file's first non-UTF-8 byte, found without reading the file into memory."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with file.open("rb") as f:
        while block := f.read(chunk):
            pending = decoder.getstate()[0]  # the start of a character split across two blocks
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                _decode(file, pending + block, offset - len(pending), None)  # raises, with the file's offset
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            _decode(file, b"\xff", offset - 1, None)  # the file ends inside a character


def _with_datasets(source: Source, cfg: Any, split: str):
    import datasets

    quiet = datasets.utils.logging.is_progress_bar_enabled()
    with contextlib.ExitStack() as stack:
        if quiet:  # no progress bars for reading a local file
            datasets.disable_progress_bars()
            stack.callback(datasets.enable_progress_bars)
        if source.kind != "hub":
            if source.kind == "csv":
                for file in source.files:
                    check_utf8(file)
            try:
                # CSV cells are text: pandas would read an answer "4" as the number 4
                typed = {"features": _text_columns(source.files[0])} if source.kind == "csv" else {}
                return datasets.load_dataset(
                    source.kind, data_files=[str(f) for f in source.files], split="train", **typed
                )
            except Exception as e:  # a malformed file: pandas' or Arrow's message, on one line
                raise UserError(
                    f"{source.label}: not a readable {source.kind} file ({_first_line(e)}); fix: correct the file"
                ) from None
        try:
            return datasets.load_dataset(
                source.label, name=cfg.subset or None, split=split, revision=cfg.revision
            )
        except Exception as e:  # offline, unknown id, gated, wrong split or subset: all end the same way
            raise UserError(
                f"data.path={source.label}: could not load it (split={split}, subset={cfg.subset or 'default'}, "
                f"revision={cfg.revision}) from the Hugging Face hub or its cache ({type(e).__name__}: "
                f"{_first_line(e)}); fix: check data.split / data.subset, connect to the network once, or use "
                "a local file"
            ) from None


def _text_columns(file: Path):
    """Every column of a CSV file's header as text."""
    import csv

    import datasets

    with file.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
