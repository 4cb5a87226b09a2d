"""What a run's source hands its writer: every file to read ends as exactly one of these, whether
it was decoded and encoded here or on another machine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from indexer.scan import FoundFile


@dataclass
class Encoded:
    file: FoundFile
    sha256: str
    vector: np.ndarray  # float32, L2-normalised
    width: int
    height: int
    taken_at: datetime | None


@dataclass
class Seen:
    """Content already in the catalog (same hash): its vector is reused, not encoded again."""

    file: FoundFile
    sha256: str


@dataclass
class Failed:
    file: FoundFile
    reason: str


Result = Encoded | Seen | Failed
