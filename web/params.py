"""Reading a search request from HTTP: a query string, a multipart form or a JSON body. What a
request may hold is `search.request`'s business; this only knows where HTTP puts it."""

from __future__ import annotations

from flask import Request

from search.errors import BadRequest
from search.request import SearchRequest


def parse_search(request: Request) -> SearchRequest:
    if request.method == "GET":
        return SearchRequest.from_flat(request.args)
    if request.mimetype == "multipart/form-data":
        if unknown := set(request.files) - {"image"}:
            raise BadRequest(f"unknown file field {sorted(unknown)[0][:40]!r}; send 'image'")
        upload = request.files.get("image")
        return SearchRequest.from_flat(request.form, upload.read() if upload else None)
    return SearchRequest.from_json(request.get_data())
