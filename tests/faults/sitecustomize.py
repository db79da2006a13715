"""Loaded by a test's subprocess (PYTHONPATH=tests/faults): the first training step that logs a loss crashes.

A crash inside training, after the job's wandb run started, from a value no check could have refused: what
a sweep must survive. Only tests put this directory on PYTHONPATH.
"""

from rlhf import metrics

_write = metrics.MetricsFile.write
_crashed = []


def _crash_once(self, step, epoch, values):
    if "loss" in values and not _crashed:
        _crashed.append(step)
        raise RuntimeError("injected crash in the first training step")
    return _write(self, step, epoch, values)


metrics.MetricsFile.write = _crash_once
