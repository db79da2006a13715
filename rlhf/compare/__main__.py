"""`python -m rlhf.compare DIR [DIR...] [--out DIR]`: the table, compare.md and the plots (rlhf/compare)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf import cli
from rlhf.compare import __doc__ as DESCRIPTION
from rlhf.compare import collect, table, text_table, write_report
from rlhf.errors import EXIT_CODE, print_errors


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line like every rlhf error, not argparse's usage block
        print_errors([f"{message}; fix: see `python -m rlhf.compare --help`"])
        sys.exit(EXIT_CODE)


def default_out(dirs: list[Path]) -> Path:
    """A single sweep: its own directory. Otherwise the first directory's parent."""
    if len(dirs) == 1 and not (dirs[0] / ".hydra").is_dir():
        return dirs[0]
    return dirs[0].resolve().parent


def main(argv: list[str]) -> None:
    parser = Parser(
        prog="python -m rlhf.compare",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="a multirun directory or a run directory"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the report goes (default: the multirun directory, else the first DIR's parent)",
    )
    args = parser.parse_args(argv)
    runs = collect(args.dirs)
    header, rows = table(runs)
    print(text_table(header, rows))
    written = write_report(runs, args.out or default_out(args.dirs), args.dirs)
    print(f"\nwrote {', '.join(p.name for p in written)} to {written[0].parent}")


if __name__ == "__main__":
    cli.run(main)
