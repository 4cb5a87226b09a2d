"""Reading a search request (GET query string, JSON body or multipart form) into typed values."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from search.engine import DUPLICATE_COSINE, MAX_K, MAX_OFFSET, Term, terms_from_query
from search.errors import BadRequest
from search.filters import Filters, finite_number

DEFAULT_K = 20
TERM_KINDS = ("text", "image_id", "image_b64", "embedding")
MAX_EMBEDDING_DIM = 4096
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass
class SearchRequest:
    positive: list[Term]
    negative: list[Term] = field(default_factory=list)
    k: int = DEFAULT_K
    offset: int = 0
    min_score: float | None = None
    filters: Filters = field(default_factory=Filters)
    include_query: bool = False
    collapse: float | None = None


def parse_search(request: Request) -> SearchRequest:
    if request.method == "GET":
        return _from_fields(request.args, request.args)
    if request.mimetype == "multipart/form-data":
        parsed = _from_fields(request.form, request.form, require_query=False)
        upload = request.files.get("image")
        if upload is not None:
            parsed.positive.append(Term("image_bytes", upload.read()))
        if not parsed.positive:
            raise BadRequest("give a query: text, image_id or an uploaded image")
        return parsed
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise BadRequest("filters must be an object")
    return _from_fields(body, filters)


def _from_fields(
    values: Mapping[str, Any], filters: Mapping[str, Any], require_query: bool = True
) -> SearchRequest:
    positive = _terms(values, "positive")
    negative = _terms(values, "negative")
    if values.get("q") not in (None, ""):
        if not isinstance(values["q"], str):
            raise BadRequest("q must be a string")
        more, less = terms_from_query(values["q"])
        positive += more
        negative += less
    for kind in TERM_KINDS:
        if values.get(kind) not in (None, ""):
            positive.append(_term(kind, values[kind], kind))
    if require_query and not positive:
        raise BadRequest("give a query: q, text, image_id, image_b64 or embedding")
    return SearchRequest(
        positive,
        negative,
        _int(values, "k", DEFAULT_K, 1, MAX_K),
        _int(values, "offset", 0, 0, MAX_OFFSET),
        _float(values, "min_score"),
        Filters.parse(filters),
        _bool(values, "include_query"),
        _collapse(values),
    )


def _terms(values: Mapping[str, Any], key: str) -> list[Term]:
    items = values.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise BadRequest(f"{key} must be a list")
    terms = []
    for item in items:
        if isinstance(item, str):
            terms.append(_term("text", item, key))
        elif isinstance(item, dict):
            weight = _float(item, "weight")
            kinds = [kind for kind in TERM_KINDS if kind in item]
            if len(kinds) != 1:
                raise BadRequest(f"each {key} item needs one of {', '.join(TERM_KINDS)}")
            term = _term(kinds[0], item[kinds[0]], key)
            terms.append(Term(term.kind, term.value, 1.0 if weight is None else weight))
        else:
            raise BadRequest(f"{key} items must be strings or objects")
    return terms


def _term(kind: str, value: Any, key: str) -> Term:
    if kind == "text":
        if not isinstance(value, str):
            raise BadRequest(f"{key}: text must be a string")
        return Term("text", value)
    if kind == "image_id":
        return Term("image_id", _int({key: value}, key, 0, 1, 2**62))
    if kind == "embedding":
        if not isinstance(value, list) or len(value) > MAX_EMBEDDING_DIM:
            raise BadRequest(f"{key}: an embedding must be a list of numbers")
        return Term("vector", tuple(finite_number(key, number) for number in value))
    if not isinstance(value, str):
        raise BadRequest(f"{key}: image_b64 must be a base64 string")
    try:
        data = base64.b64decode(value.split(",", 1)[-1], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{key}: image_b64 is not valid base64") from None
    return Term("image_bytes", data)


def _int(values: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = values.get(key)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadRequest(f"{key} must be an integer")
    try:
        number = int(raw)
    except ValueError:
        raise BadRequest(f"{key} must be an integer, got {str(raw)[:40]!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return number


def _float(values: Mapping[str, Any], key: str) -> float | None:
    raw = values.get(key)
    return None if raw is None or raw == "" else finite_number(key, raw)


def _bool(values: Mapping[str, Any], key: str) -> bool:
    raw = values.get(key)
    if raw is None or raw == "" or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise BadRequest(f"{key} must be true or false")


def _collapse(values: Mapping[str, Any]) -> float | None:
    """`collapse`: true for the default near-duplicate cosine, or a cosine of one's own."""
    raw = values.get("collapse")
    if isinstance(raw, bool) or (isinstance(raw, str) and raw.lower() in _TRUE | _FALSE):
        return DUPLICATE_COSINE if _bool(values, "collapse") else None
    threshold = _float(values, "collapse")
    if threshold is not None and not 0 < threshold <= 1:
        raise BadRequest("collapse must be true, false or a cosine above 0 and at most 1")
    return threshold
