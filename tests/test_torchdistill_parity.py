"""Our losses agree with torchdistill's (bench extra) once the stated conventions are applied."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchdistill")


def test_values_agree_with_torchdistill():
    path = Path(__file__).parents[1] / "benchmarks" / "torchdistill_parity.py"
    spec = importlib.util.spec_from_file_location("torchdistill_parity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torchdistill_parity"] = module
    spec.loader.exec_module(module)
    compared = 0
    for name, ours, theirs, note in module.rows():
        if note.startswith(("differs", "not compared")):
            continue
        assert math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-7), (name, ours, theirs)
        compared += 1
    assert compared >= 6
