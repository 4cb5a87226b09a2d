"""JSON as SQLite's JSON functions read it. Python writes NaN and Infinity, which SQLite before
3.42 calls malformed: one such value in a catalog's attributes made every filter and facet of
the collection fail. A value that is not a finite number is read as null."""

from __future__ import annotations

import json
import math
from typing import Any


def loads(text: str) -> Any:
    return json.loads(text, parse_constant=lambda _name: None, parse_float=_finite)


# One encoder: json.dumps makes one per call when given an option.
_ENCODER = json.JSONEncoder(allow_nan=False)


def dumps(value: Any) -> str:
    """A non-finite value here is a bug upstream: it fails loudly, not on every later filter."""
    return _ENCODER.encode(value)


def _finite(text: str) -> float | None:
    value = float(text)  # 1e400 is inf
    return value if math.isfinite(value) else None
