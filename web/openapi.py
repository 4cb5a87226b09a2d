"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json for shop developers
and client generators. Limits come from the code that enforces them."""

from __future__ import annotations

from typing import Any

from search.engine import MAX_K, MAX_OFFSET, MAX_QUERY_CHARS, MAX_TERMS
from web.params import DEFAULT_K

_ERROR = {
    "description": "",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _error(description: str) -> dict[str, Any]:
    return {**_ERROR, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


FILTERS = [
    _query("folder", {"type": "string"}, "Path prefix relative to the indexed folder."),
    _query("ext", {"type": "string"}, "Extensions, comma-separated: jpg,png."),
    _query("date_from", {"type": "string", "format": "date"}, "EXIF capture date, else file date."),
    _query("date_to", {"type": "string", "format": "date"}, "Inclusive."),
]

TERM = {
    "oneOf": [
        {"type": "string", "description": "A text."},
        {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "image_id": {"type": "integer"},
                "image_b64": {"type": "string", "contentEncoding": "base64"},
                "embedding": {"type": "array", "items": {"type": "number"}},
                "weight": {"type": "number", "default": 1.0},
            },
        },
    ]
}


def document(version: str) -> dict[str, Any]:
    page_params = [
        _query(
            "k",
            {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K},
            "Results per page.",
        ),
        _query(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
            "Results to skip.",
        ),
        _query("min_score", {"type": "number"}, "Leave out results below this cosine."),
        _query(
            "include_query", {"type": "boolean", "default": False}, "Keep the query's own images."
        ),
        _query(
            "collapse",
            {"oneOf": [{"type": "boolean"}, {"type": "number"}]},
            "One of each group of near-duplicates (true: cosine 0.95).",
        ),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clipsearch",
            "version": version,
            "description": "Text-to-image semantic search over one collection.",
        },
        "paths": {
            "/api/search": {
                "get": {
                    "summary": "Search by text (syntax: cat + 2:grass - dog) or by image id",
                    "parameters": [
                        _query(
                            "q",
                            {"type": "string", "maxLength": MAX_QUERY_CHARS},
                            "Query text, with + / - terms and N: weights.",
                        ),
                        _query("image_id", {"type": "integer"}, "More like this indexed image."),
                        *page_params,
                        *FILTERS,
                        _query(
                            "attr_{name}",
                            {"type": "string"},
                            "Equality on a catalog attribute; attr_{name}_min and _max: ranges.",
                        ),
                    ],
                    "responses": {
                        "200": _results(),
                        "400": _error("Bad parameter"),
                        "404": _error("Unknown image id"),
                    },
                },
                "post": {
                    "summary": "Search by any mix of texts, images, ids and embeddings",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SearchRequest"}
                            },
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "q": {"type": "string"},
                                        "k": {"type": "integer"},
                                    },
                                }
                            },
                        }
                    },
                    "responses": {
                        "200": _results(),
                        "400": _error("Bad body"),
                        "404": _error("Unknown image id"),
                        "413": _error("Body too large"),
                    },
                },
            },
            "/api/images/{id}": {
                "get": {
                    "summary": "An image's metadata",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "Metadata"},
                        "404": _error("Unknown image id"),
                    },
                }
            },
            "/api/stats": {
                "get": {
                    "summary": "Counts, model and index type",
                    "responses": {"200": {"description": "Stats"}},
                }
            },
            "/api/facets": {
                "get": {
                    "summary": "Folders, extensions, dates and attributes to filter by",
                    "responses": {"200": {"description": "Facets"}},
                }
            },
            "/images/{id}": {
                "get": {
                    "summary": "The original file",
                    "responses": {
                        "200": {"description": "The image"},
                        "404": _error("Unknown or changed"),
                    },
                }
            },
            "/thumbs/{id}": {
                "get": {
                    "summary": "A JPEG thumbnail, about 256 px",
                    "responses": {
                        "200": {"description": "The thumbnail"},
                        "404": _error("Unknown or changed"),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "SearchRequest": {
                    "type": "object",
                    "properties": {
                        "q": {"type": "string", "description": "Query syntax, as in GET."},
                        "text": {"type": "string", "maxLength": MAX_QUERY_CHARS},
                        "image_id": {"type": "integer"},
                        "image_b64": {"type": "string", "contentEncoding": "base64"},
                        "embedding": {"type": "array", "items": {"type": "number"}},
                        "positive": {"type": "array", "items": TERM, "maxItems": MAX_TERMS},
                        "negative": {"type": "array", "items": TERM, "maxItems": MAX_TERMS},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                        "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                        "min_score": {"type": "number"},
                        "include_query": {"type": "boolean"},
                        "collapse": {"oneOf": [{"type": "boolean"}, {"type": "number"}]},
                        "filters": {
                            "type": "object",
                            "additionalProperties": {"type": ["string", "number"]},
                        },
                    },
                },
                "Result": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "path": {"type": "string"},
                        "url": {"type": "string"},
                        "thumbnail_url": {"type": "string"},
                        "score": {"type": "number", "description": "Cosine similarity."},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "attributes": {"type": "object"},
                    },
                },
            }
        },
    }


def _results() -> dict[str, Any]:
    return {
        "description": "Results in descending score",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Result"},
                        },
                        "count": {"type": "integer"},
                        "k": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "took_ms": {"type": "number"},
                        "model": {"type": "string"},
                    },
                }
            }
        },
    }
