"""The Flask app: a search page, files served by id, and the JSON API."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, current_app, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from search.collection import Collection, default_data_dir
from search.engine import SearchEngine
from search.errors import (
    BadRequest,
    ClipsearchError,
    ImageError,
    NotFound,
    NotReady,
    TooLarge,
)
from search.request import MAX_UPLOAD_BYTES
from search.sandbox import start_fork_server

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "DEVICE": "auto",
    # The largest image, base64-encoded in JSON, and the rest of the request; larger bodies: 413
    "MAX_CONTENT_LENGTH": 4 * (MAX_UPLOAD_BYTES // 3 + 1) + 64 * 1024,
    "THUMBNAIL_MAX_AGE": 24 * 3600,
    "CORS_ORIGINS": [],  # origins whose pages may call /api/*, e.g. a shop's front end; "*": any
}


def create_app(
    config: Mapping[str, Any] | None = None, engine: SearchEngine | None = None
) -> Flask:
    """Build the app for one collection (`DATA_DIR`); pass `engine` to share a loaded model."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS, DATA_DIR=default_data_dir())
    app.config.from_mapping(config or {})
    if engine is None:
        collection = Collection.open(Path(app.config["DATA_DIR"]))
        start_fork_server()  # for uploads and thumbnails; its imports overlap the model's loading
        engine = SearchEngine(collection, collection.encoder(app.config["DEVICE"]))
    app.extensions["clipsearch"] = engine

    from web.api import api
    from web.files import files
    from web.pages import pages

    if origins := app.config["CORS_ORIGINS"]:
        CORS(app, resources={r"/api/*": {"origins": origins}})
    app.register_blueprint(pages)
    app.register_blueprint(files)
    app.register_blueprint(api)
    app.register_error_handler(ClipsearchError, _clipsearch_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_security_headers)
    app.after_request(_relative_redirect)
    return app


def get_engine() -> SearchEngine:
    engine: SearchEngine = current_app.extensions["clipsearch"]
    return engine


def error_status(exc: ClipsearchError) -> int:
    """Input errors are the client's (4xx); a damaged or full collection is the server's."""
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, BadRequest | ImageError):
        return 400
    if isinstance(exc, NotReady):
        return 202  # accepted: the work is under way
    return 404 if isinstance(exc, NotFound) else 503


def _clipsearch_error(exc: ClipsearchError) -> Any:
    status = error_status(exc)
    if status == 503:
        log.error("%s %s: %s", request.method, request.path, exc)
    headers = {"Retry-After": str(exc.retry_seconds)} if isinstance(exc, NotReady) else {}
    return _error_json(str(exc), exc.code, exc.fields), status, headers


def _http_error(exc: HTTPException) -> Any:
    status = exc.code or 500
    message = "request body too large" if status == 413 else exc.description or exc.name
    code = {413: "too_large", 404: "not_found"}.get(status, "bad_request")
    response = _error_json(message, code if status < 500 else "internal")
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response, status


def _unexpected_error(exc: Exception) -> Any:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error_json("internal error", "internal"), 500


def _error_json(message: str, code: str, fields: dict[str, Any] | None = None) -> Any:
    """Every error's body: the English message, and its code and fields for a translation."""
    return jsonify(error=message, code=code, fields=fields or {})


def _security_headers(response: Any) -> Any:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'",
    )
    return response


def _relative_redirect(response: Any) -> Any:
    """Routing's redirects (/photos to /photos/) name the scheme and host this server saw,
    which behind a TLS proxy are http:// and the proxy's: the path alone keeps the browser on
    the scheme and host it used."""
    location = urlsplit(response.headers.get("Location", ""))
    if location.netloc and location.netloc == request.host:
        response.headers["Location"] = urlunsplit(("", "", *location[2:]))
    return response
