"""Reading a search request (GET query string, JSON body or multipart form) into typed values."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from search.engine import MAX_K, MAX_OFFSET, Term
from search.errors import BadRequest
from search.filters import Filters, finite_number

DEFAULT_K = 20


@dataclass
class SearchRequest:
    positive: list[Term]
    negative: list[Term] = field(default_factory=list)
    k: int = DEFAULT_K
    offset: int = 0
    min_score: float | None = None
    filters: Filters = field(default_factory=Filters)


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
    for key, kind in (("q", "text"), ("text", "text"), ("image_id", "image_id")):
        if values.get(key) not in (None, ""):
            positive.append(_term(kind, values[key], key))
    if values.get("image_b64") not in (None, ""):
        positive.append(_term("image_b64", values["image_b64"], "image_b64"))
    if require_query and not positive:
        raise BadRequest("give a query: q, text, image_id or image_b64")
    return SearchRequest(
        positive,
        _terms(values, "negative"),
        _int(values, "k", DEFAULT_K, 1, MAX_K),
        _int(values, "offset", 0, 0, MAX_OFFSET),
        _float(values, "min_score"),
        Filters.parse(filters),
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
            kinds = [kind for kind in ("text", "image_id", "image_b64") if kind in item]
            if len(kinds) != 1:
                raise BadRequest(f"each {key} item needs one of text, image_id, image_b64")
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
