"""Reading a request from HTTP: a query string, a multipart form or a JSON body. What a request
may hold is `search.request`'s business; this only knows where HTTP puts it."""

from __future__ import annotations

from typing import Any

from flask import Request
from werkzeug.datastructures import MultiDict

from search.errors import BadRequest
from search.request import SearchRequest


def parse_search(request: Request) -> SearchRequest:
    if request.method == "GET":
        return SearchRequest.from_flat(once(request.args))
    if request.mimetype == "multipart/form-data":
        files = once(request.files)
        if unknown := set(files) - {"image"}:
            raise BadRequest(f"unknown file field {sorted(unknown)[0][:40]!r}; send 'image'")
        upload = files.get("image")
        return SearchRequest.from_flat(once(request.form), upload.read() if upload else None)
    return SearchRequest.from_json(request.get_data())


def once(fields: MultiDict[str, Any]) -> dict[str, Any]:
    """A query string's or form's fields, each given once. Which of two values a client meant
    is a guess: `attr_category=a&attr_category=b` took a's products alone, without a word."""
    for key, values in fields.lists():
        if len(values) > 1:
            raise BadRequest(f"parameter {key[:40]!r} given {len(values)} times; give it once")
    return fields.to_dict()
