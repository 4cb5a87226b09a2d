"""The HTML search page and the health check."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from search.errors import ClipsearchError
from web import error_status, get_engine
from web.params import parse_search

pages = Blueprint("pages", __name__)


@pages.get("/")
def index() -> Any:
    engine = get_engine()
    page = error = None
    status = 200
    if request.args.get("q") or request.args.get("image_id"):
        try:
            page = engine.query(parse_search(request))
        except ClipsearchError as exc:
            error = str(exc)
            status = error_status(exc)
    html = render_template(
        "index.html",
        query=request.args.get("q", ""),
        like=request.args.get("image_id", ""),
        page=page,
        error=error,
        size=engine.size,
        model=engine.collection.spec.name,
    )
    return html, status


@pages.get("/healthz")
def healthz() -> Any:
    return {"status": "ok", "images": get_engine().size}
