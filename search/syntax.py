"""The query syntax of the search box, `q` and the CLI, after rclip: `cat + 2:grass - dog`.

Terms are joined by a `+` or `-` with spaces around it (so `t-shirt` stays one word); a term may
start with a weight, `2:grass` or `0.5:grass`. Text without operators is one positive term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.errors import BadRequest

_OPERATOR = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+):(?=\S)")
MAX_WEIGHT = 100.0


@dataclass(frozen=True)
class QueryPart:
    text: str
    weight: float
    negative: bool


def parse_query(query: str) -> list[QueryPart]:
    """Split a query into weighted positive and negative parts, in their order."""
    pieces = _OPERATOR.split(f" {query} ")  # the padding lets a leading "- dog" split too
    parts = []
    sign = "+"
    for piece in pieces:
        if piece in ("+", "-"):
            sign = piece
            continue
        text = piece.strip()
        if not text:
            continue
        weight = 1.0
        if match := _WEIGHT.match(text):
            weight = float(match.group(1))
            text = text[match.end() :].strip()
            if not 0 < weight <= MAX_WEIGHT:
                raise BadRequest(
                    f"a term's weight must be above 0 and at most {MAX_WEIGHT:g}",
                    code="weight",
                    max=MAX_WEIGHT,
                )
        parts.append(QueryPart(text, weight, sign == "-"))
    return parts
