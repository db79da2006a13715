"""What every command-line entrypoint shares: start-up tuning, and bad input as one line per problem.

python -m rlhf            rlhf/__main__.py      train (a Hydra app)
python -m rlhf.models     models/__main__.py    prepare a base model, its scores and samples
python -m rlhf.evaluate   evaluate/__main__.py  evaluate a finished run again
python -m rlhf.compare    compare/__main__.py   compare runs and sweeps
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from rlhf import runtime
from rlhf.errors import EXIT_CODE, describe, print_errors


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Tune the process, then run `main(argv)`: bad input ends with its lines on stderr and exit 2.

    With no `argv` (a command line), the process first runs itself again on tcmalloc or jemalloc where the
    machine has one (rlhf.runtime.preload_malloc).

    Anything else keeps its traceback (a bug is not the user's to fix), and so does bad input with
    HYDRA_FULL_ERROR=1.
    """
    try:
        if argv is None:  # a command line, not a call from Python: its own process, which may run again
            runtime.preload_malloc()
        runtime.startup()
        main(sys.argv[1:] if argv is None else argv)
    except Exception as ex:
        problems = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else describe(ex)
        if problems is None:
            raise
        print_errors(problems)
        sys.exit(EXIT_CODE)
