"""The JSON API: search, image metadata, duplicates and collection stats."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, jsonify, request

from search.request import DuplicatesRequest
from web import get_engine
from web.openapi import document
from web.params import once, parse_search
from web.results import duplicates_json, image_json, mount_point, page_json

api = Blueprint("api", __name__, url_prefix="/api")


@api.route("/search", methods=["GET", "POST"])
def search() -> Any:
    engine = get_engine()
    page = engine.query(parse_search(request))
    return jsonify(page_json(page, engine.collection.spec.name))


@api.get("/images/<int:image_id>")
def image(image_id: int) -> Any:
    return jsonify(image_json(get_engine().image(image_id), mount_point()))


@api.get("/stats")
def stats() -> Any:
    engine = get_engine()
    data = engine.collection.stats(engine.vectors)
    for private in ("failures", "roots"):  # paths on the server's disk are not the API's business
        data.pop(private)
    return jsonify(data)


@api.get("/duplicates")
def duplicates() -> Any:
    wanted = DuplicatesRequest.from_flat(once(request.args))
    return jsonify(duplicates_json(get_engine().duplicates(wanted.threshold), wanted))


@api.get("/facets")
def facets() -> Any:
    return jsonify(get_engine().facets())


@api.get("/openapi.json")
def openapi() -> Any:
    try:
        release = version("clipsearch")
    except PackageNotFoundError:
        release = "dev"
    return jsonify(document(release, mount_point()))
