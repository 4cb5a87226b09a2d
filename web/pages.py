"""The HTML search and duplicates pages, and the health check."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from search.errors import ClipsearchError, NoQuery, NotReady
from search.request import DUPLICATE_COSINE, MIN_DUPLICATE_COSINE, DuplicatesRequest
from web import error_status, get_engine
from web.messages import LANGUAGES, MESSAGES, choose_language, translator
from web.params import once, parse_search

pages = Blueprint("pages", __name__)


@pages.get("/")
def index() -> Any:
    engine = get_engine()
    page = error = None
    status = 200
    if request.args:
        try:
            page = engine.query(parse_search(request))
        except NoQuery:
            pass  # the empty form: the page as it first appears
        except ClipsearchError as exc:
            error = str(exc)
            status = error_status(exc)
    lang = choose_language(request)
    html = render_template(
        "index.html",
        lang=lang,
        languages=LANGUAGES,
        messages=MESSAGES[lang],
        t=translator(lang),
        query=request.args.get("q", ""),
        like=request.args.get("image_id", ""),
        page=page,
        error=error,
        size=engine.size,
        model=engine.collection.spec.name,
    )
    # The page depends on the language the request asks for: caches must keep them apart.
    return html, status, {"Vary": "Accept-Language, Cookie", "Content-Language": lang}


@pages.get("/duplicates")
def duplicates() -> Any:
    """Groups of copies, best copy first, rendered on the server: a page to tidy up with."""
    engine = get_engine()
    lang = choose_language(request)
    wanted, groups, error, status = None, [], None, 200
    try:
        wanted = DuplicatesRequest.from_flat(once(request.args))
        groups = engine.duplicates(wanted.threshold)
    except ClipsearchError as exc:
        error, status = str(exc), error_status(exc)
    html = render_template(
        "duplicates.html",
        retry_seconds=NotReady.retry_seconds if status == 202 else None,
        lang=lang,
        t=translator(lang),
        wanted=wanted,
        groups=groups,
        error=error,
        default_threshold=DUPLICATE_COSINE,
        min_threshold=MIN_DUPLICATE_COSINE,
    )
    return html, status, {"Vary": "Accept-Language, Cookie", "Content-Language": lang}


@pages.get("/healthz")
def healthz() -> Any:
    return {"status": "ok", "images": get_engine().size}
