"""The OpenAPI 3.1 description of every route, served at /api/openapi.json for shop developers,
client generators and schema-driven fuzzers.

Generated, not written: request schemas come from the models the server validates with
(`search.request`), so a limit changed there is changed here; the response models below are
checked against real responses by the schemathesis test.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from search.errors import CODES
from search.filters import filters_schema
from search.languages import NOTICES
from search.request import FLAT_FIELDS, MAX_IMAGE_ID, DuplicatesRequest, SearchRequest
from search.tags import MIN_TAG_PROBABILITY

REF = "#/components/schemas/{model}"


class Error(BaseModel):
    error: str = Field(description="What went wrong, in English, fit to show a user.")
    code: str = Field(
        description="The kind of error, for saying it in another language.",
        json_schema_extra={"enum": list(CODES)},
    )
    fields: dict[str, Any] = Field(description="The values the message was made from.")


class TagScore(BaseModel):
    name: str
    score: float = Field(
        description="The model's probability that the tag describes the image better than no "
        f"tag does; tags below {MIN_TAG_PROBABILITY} are not kept."
    )


ImageTags = Annotated[list[TagScore], Field(description="Zero-shot tags, the most probable first.")]


class Result(BaseModel):
    id: int
    path: str = Field(description="Relative to its indexed folder.")
    url: str
    thumbnail_url: str
    score: float = Field(description="Cosine similarity.")
    width: int
    height: int
    attributes: dict[str, Any]
    tags: ImageTags


class Notice(BaseModel):
    code: str = Field(
        description="What to tell, for saying it in another language.",
        json_schema_extra={"enum": list(NOTICES)},
    )
    message: str = Field(description="The same, in English.")


class Results(BaseModel):
    results: list[Result] = Field(description="In descending score order.")
    count: int
    k: int
    offset: int
    took_ms: float
    model: str
    notice: Notice | None = Field(
        description="A word for the reader beside the results, such as a query in a script "
        "the model cannot read"
    )


class ImageInfo(BaseModel):
    id: int
    path: str
    url: str
    thumbnail_url: str
    width: int
    height: int
    size: int
    ext: str
    taken_at: str = Field(description="EXIF capture time, else file time (ISO 8601).")
    sha256: str
    attributes: dict[str, Any]
    tags: ImageTags


class IndexInfo(BaseModel):
    type: str
    vectors: int


class TagsInfo(BaseModel):
    vocabulary: int = Field(description="Tags in the vocabulary in force.")
    default: bool = Field(description="Whether it is the vocabulary clipsearch ships.")
    untagged: int = Field(description="Images whose tags are still to be computed.")


class Stats(BaseModel):
    images: int
    failed: int
    model: str
    multilingual: bool = Field(description="whether the model's text side knows many languages")
    embed_dim: int
    index: IndexInfo
    tags: TagsInfo


class Copy(ImageInfo):
    score: float = Field(description="Cosine similarity with the group's first image.")
    same_file: bool = Field(description="Byte for byte the group's first image.")


class Group(BaseModel):
    images: list[Copy] = Field(description="The best copy first: most pixels, then earliest.")


class Duplicates(BaseModel):
    groups: list[Group] = Field(description="Larger groups first.")
    count: int = Field(description="Groups in all, on every page.")
    offset: int
    limit: int
    threshold: float


class ValueChoices(BaseModel):
    values: list[str]


class NumberRange(BaseModel):
    min: float
    max: float


class TagCount(BaseModel):
    name: str
    count: int = Field(description="Images with this tag.")


class Facets(BaseModel):
    folders: list[str]
    extensions: list[str]
    date_from: str | None
    date_to: str | None
    tags: list[TagCount] = Field(description="The most common first.")
    attributes: dict[str, ValueChoices | NumberRange]


class Health(BaseModel):
    status: str
    images: int


def document(version: str, root: str) -> dict[str, Any]:
    """The API of a server mounted at `root` (`serve --url-prefix`): its paths start there."""
    request = SearchRequest.model_json_schema(ref_template=REF)
    schemas = {**request.pop("$defs", {}), "SearchRequest": request}
    for model in (Error, Results, ImageInfo, Stats, Duplicates, Facets, Health):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}), **{model.__name__: schema})
    query = _query_parameters(request)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clipsearch",
            "version": version,
            "description": "Text-to-image semantic search over one collection.",
        },
        "servers": [{"url": root or "/"}],
        "paths": {
            "/api/search": {
                "get": _search_get(query),
                "post": _search_post(request),
            },
            "/api/images/{id}": _by_id("An image's metadata", _json("ImageInfo")),
            "/images/{id}": _by_id("The original file", _binary("image/*")),
            "/thumbs/{id}": _by_id("A JPEG thumbnail, about 256 px", _binary("image/jpeg")),
            "/api/stats": _simple("Counts, model and index type", _json("Stats")),
            "/api/duplicates": _duplicates(),
            "/api/facets": _simple("What the filters can choose from", _json("Facets")),
            "/api/openapi.json": _simple("This document", _json_object()),
            "/healthz": _simple("Liveness, and the number of images searched", _json("Health")),
            "/": {"get": _page(query)},
            "/static/{filename}": _static(),
        },
        "components": {"schemas": schemas},
    }


def _query_parameters(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The query string's fields: the flat ones of the request model, each filter, and the
    catalog attribute filters as one exploded object (OpenAPI's way to say `attr_*`)."""
    fields = request["properties"]
    params = [_parameter(name, _not_null(fields[name])) for name in FLAT_FIELDS]
    filters = filters_schema()
    params += [_parameter(name, schema) for name, schema in filters["properties"].items()]
    attributes = {
        "type": "object",
        "patternProperties": filters["patternProperties"],
        "additionalProperties": False,
    }
    params.append({**_parameter("attributes", attributes), "style": "form", "explode": True})
    return params


def _parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    description = schema.get("description", "")
    schema = {key: value for key, value in schema.items() if key not in ("description", "title")}
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null."""
    options = [option for option in schema.get("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
        return {**options[0], **rest}
    return schema


def _search_get(query: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": "Search by text (syntax: cat + 2:grass - dog) or by image id",
        "parameters": query,
        "responses": {
            "200": _json("Results"),
            "400": _json("Error", "Bad parameter, or no query"),
            "404": _json("Error", "Unknown image id"),
        },
    }


def _search_post(request: dict[str, Any]) -> dict[str, Any]:
    form = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary"},
            **{name: _not_null(request["properties"][name]) for name in FLAT_FIELDS},
            **filters_schema()["properties"],
        },
        "patternProperties": filters_schema()["patternProperties"],
        "additionalProperties": False,
    }
    return {
        "summary": "Search by any mix of texts, images, ids and embeddings",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model="SearchRequest")}},
                "multipart/form-data": {"schema": form},
            },
        },
        "responses": {
            "200": _json("Results"),
            "400": _json("Error", "Bad body, or an image that cannot be decoded"),
            "404": _json("Error", "Unknown image id"),
            "413": _json("Error", "Body too large"),
        },
    }


def _duplicates() -> dict[str, Any]:
    fields = DuplicatesRequest.model_json_schema()["properties"]
    return {
        "get": {
            "summary": "Groups of copies of one photo: the same bytes, or a cosine of at least "
            "threshold",
            "parameters": [_parameter(name, schema) for name, schema in fields.items()],
            "responses": {
                "200": _json("Duplicates"),
                "202": _json("Error", "Still finding them: ask again after Retry-After seconds"),
                "400": _json("Error", "Bad parameter"),
            },
        }
    }


def _by_id(summary: str, found: dict[str, Any]) -> dict[str, Any]:
    identifier = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_ID},
    }
    responses = {"200": found, "404": _json("Error", "No such image, or its file changed")}
    return {"get": {"summary": summary, "parameters": [identifier], "responses": responses}}


def _simple(summary: str, found: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": found}}}


def _page(query: list[dict[str, Any]]) -> dict[str, Any]:
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "summary": "The search page; with a query, its first results rendered on the server",
        "parameters": query,
        "responses": {
            code: {"description": text, "content": html}
            for code, text in (("200", "The page"), ("400", "Bad query"), ("404", "No image"))
        },
    }


def _static() -> dict[str, Any]:
    name = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
    name["example"] = "app.js"
    assets = {kind: {"schema": {"type": "string"}} for kind in ("text/css", "text/javascript")}
    assets["image/svg+xml"] = {"schema": {"type": "string"}}
    responses = {
        "200": {"description": "The page's script, style sheet or icon", "content": assets},
        "404": _json("Error", "No such file"),
    }
    return {"get": {"summary": "The page's assets", "parameters": [name], "responses": responses}}


def _json(model: str, description: str = "OK") -> dict[str, Any]:
    schema = {"$ref": REF.format(model=model)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_object() -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}


def _binary(media: str) -> dict[str, Any]:
    content = {media: {"schema": {"type": "string", "format": "binary"}}}
    return {"description": "The file", "content": content}
