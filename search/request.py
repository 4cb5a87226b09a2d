"""One search request, whoever builds it (the JSON API, the page, the CLI, tests).

Every limit, default and rule of a query is defined here once: the engine takes a validated
`SearchRequest`, and the OpenAPI document is generated from these models. Pydantic validates:
its JSON Schema output is what OpenAPI 3.1 speaks, and a discriminated union says "a term is a
text, an image id, an image or an embedding" in one place.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from search.errors import BadRequest, NoQuery, TooLarge
from search.filters import Filters, filters_schema, is_filter_key
from search.syntax import MAX_WEIGHT, parse_query

MAX_K = 1000
DEFAULT_K = 20
MAX_OFFSET = 10_000
MAX_QUERY_CHARS = 1000
MAX_TERMS = 16
MAX_IMAGE_ID = 2**63 - 1  # SQLite's largest integer
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_EMBEDDING_DIM = 4096
DUPLICATE_COSINE = 0.95  # resized, recompressed or burst copies of one photo score above this
# The loosest duplicates threshold: the pairs above it are found once per generation, and any
# threshold from here to 1 is then read from them. Looser, different photos of one scene group
# (on CLIP-like vectors, 0.8 found 16 pairs an image, 0.9 one for every ten images).
MIN_DUPLICATE_COSINE = 0.9
DEFAULT_GROUPS = 20
MAX_GROUPS = 200  # duplicate groups per page
MAX_COLLAPSE_DEPTH = 2000  # offset + k with collapse: the pairwise check grows quadratically
NO_QUERY = "give a query: q, text, image_id, image_b64, embedding or positive"
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

Text = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]
Weight = Annotated[float, Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)]
ImageId = Annotated[int, Field(ge=1, le=MAX_IMAGE_ID)]


def _image_bytes(value: object) -> bytes:
    """Raw bytes from Python callers (a file, an upload); base64 from JSON."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
    if not isinstance(value, bytes) or not value:
        raise ValueError("give the image's bytes, base64-encoded")
    if len(value) > MAX_UPLOAD_BYTES:  # not a ValueError: it leaves validation as it is
        raise TooLarge(f"an image may have at most {MAX_UPLOAD_BYTES:,} bytes")
    return value


ImageBytes = Annotated[
    bytes,
    PlainValidator(_image_bytes),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "minLength": 4,
            "maxLength": 4 * (MAX_UPLOAD_BYTES // 3 + 1),
            "pattern": _BASE64,
        }
    ),
]
Embedding = Annotated[
    tuple[Annotated[float, Field(allow_inf_nan=False)], ...],
    Field(min_length=1, max_length=MAX_EMBEDDING_DIM),
]


class _Term(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: Weight = 1.0


class TextTerm(_Term):
    text: Text


class IdTerm(_Term):
    """An indexed image: more like this."""

    image_id: ImageId


class ImageTerm(_Term):
    """An image's bytes (uploaded, or base64 in JSON)."""

    image_b64: ImageBytes


class EmbeddingTerm(_Term):
    """A vector of the collection's model, normalised here."""

    embedding: Embedding


TERMS: dict[str, type[_Term]] = {
    "text": TextTerm,
    "image_id": IdTerm,
    "image_b64": ImageTerm,
    "embedding": EmbeddingTerm,
}


def _term_kind(value: Any) -> str | None:
    if isinstance(value, _Term):
        return next(key for key, kind in TERMS.items() if isinstance(value, kind))
    keys = [key for key in TERMS if isinstance(value, dict) and key in value]
    return keys[0] if len(keys) == 1 else None


Term = Annotated[
    Annotated[TextTerm, Tag("text")]
    | Annotated[IdTerm, Tag("image_id")]
    | Annotated[ImageTerm, Tag("image_b64")]
    | Annotated[EmbeddingTerm, Tag("embedding")],
    Discriminator(
        _term_kind,
        custom_error_type="term",
        custom_error_message="each term is a string or an object with exactly one of "
        "text, image_id, image_b64 or embedding",
    ),
]
Terms = Annotated[list[Text | Term], Field(max_length=MAX_TERMS)]


_WORDS = {"true": True, "false": False}  # a boolean as a query string or form says it


def _form_bool(value: Any, info: ValidationInfo) -> Any:
    """A query string or form says true or false in words; JSON with its own booleans."""
    if info.mode == "python" and isinstance(value, str):
        if value not in _WORDS:
            raise ValueError("give true or false")
        return _WORDS[value]
    return value


def _form_collapse(value: Any, info: ValidationInfo) -> Any:
    """true, false or a cosine (in words from a query string or form); anything else is told
    so in one sentence, rather than once per branch of the union."""
    if info.mode == "python" and isinstance(value, str):
        if value in _WORDS:
            value = _WORDS[value]
        else:
            with contextlib.suppress(ValueError):
                value = float(value)
    if isinstance(value, bool) or (isinstance(value, int | float) and 0 < value <= 1):
        return value
    raise ValueError("give true, false or a cosine above 0 and at most 1")


FormBool = Annotated[bool, BeforeValidator(_form_bool)]
# A strict bool: in lax mode 0.0 would pass as false instead of failing as a cosine.
Collapse = Annotated[
    Annotated[bool, Strict()] | Annotated[float, Field(gt=0, le=1)],
    BeforeValidator(_form_collapse),
]


class SearchRequest(BaseModel):
    """A query (any mix of weighted positive and negative terms) and the page wanted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    q: Annotated[str, Field(max_length=MAX_QUERY_CHARS)] | None = Field(
        None, description="Query syntax: `cat + 2:grass - dog`."
    )
    text: Text | None = Field(None, description="A literal text.")
    image_id: ImageId | None = Field(None, description="More like this indexed image.")
    image_b64: ImageBytes | None = None
    embedding: Embedding | None = None
    positive: Terms = []
    negative: Terms = []
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="Results per page.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Results to skip.")
    min_score: float | None = Field(
        None, allow_inf_nan=False, description="Leave out results below this cosine."
    )
    include_query: FormBool = Field(
        False, description="Keep the query's own images in the results."
    )
    collapse: Collapse = Field(
        False,
        description=f"One of each group of near-duplicates: true (cosine {DUPLICATE_COSINE}) "
        "or the cosine to use.",
    )
    filters: Annotated[Filters, PlainValidator(Filters.parse), WithJsonSchema(filters_schema())] = (
        Field(default_factory=Filters)
    )

    @field_validator("positive", "negative", mode="after")
    @classmethod
    def _texts_are_terms(cls, terms: list[str | _Term]) -> list[_Term]:
        return [TextTerm(text=term) if isinstance(term, str) else term for term in terms]

    @model_validator(mode="after")
    def _has_a_query(self) -> SearchRequest:
        positive, negative = self.terms()
        if not positive:
            raise PydanticCustomError("no_query", NO_QUERY)
        if len(positive) + len(negative) > MAX_TERMS:
            raise ValueError(f"at most {MAX_TERMS} query terms")
        if self.collapse is not False and self.offset + self.k > MAX_COLLAPSE_DEPTH:
            raise ValueError(f"with collapse, offset + k must be at most {MAX_COLLAPSE_DEPTH}")
        return self

    def terms(self) -> tuple[list[_Term], list[_Term]]:
        """All positive and all negative terms: the shorthand fields and `q` included."""
        positive: list[_Term] = list(self.positive)  # type: ignore[arg-type]
        negative: list[_Term] = list(self.negative)  # type: ignore[arg-type]
        for part in parse_query(self.q or ""):
            term = TextTerm(text=part.text, weight=part.weight)
            (negative if part.negative else positive).append(term)
        for key, kind in TERMS.items():
            if (value := getattr(self, key)) is not None:
                positive.append(kind.model_validate({key: value}))
        return positive, negative

    @property
    def has_image(self) -> bool:
        """Whether the query holds image bytes, which are decoded in a bounded child."""
        return any(isinstance(term, ImageTerm) for side in self.terms() for term in side)

    @property
    def collapse_cosine(self) -> float | None:
        if self.collapse is True:
            return DUPLICATE_COSINE
        return None if self.collapse is False else float(self.collapse)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SearchRequest:
        """Validate, turning the first problem into a one-line BadRequest."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _bad_request(exc) from None

    @classmethod
    def from_json(cls, body: bytes) -> SearchRequest:
        """A JSON body, validated strictly: a JSON client gets exactly what the schema says."""
        try:
            return cls.model_validate_json(body or b"null", strict=True)
        except ValidationError as exc:
            raise _bad_request(exc) from None

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], upload: bytes | None = None) -> SearchRequest:
        """A query string or a form: filters are top-level keys there, and an uploaded image
        is one more positive term."""
        data: dict[str, Any] = {"filters": {}}
        for key, value in values.items():
            if not isinstance(key, str):
                raise BadRequest("a form field without a name")
            if is_filter_key(key):
                data["filters"][key] = value
            elif key in FLAT_FIELDS:
                data[key] = value
            else:
                raise BadRequest(f"unknown parameter {key[:40]!r}")
        if upload is not None:
            data["positive"] = [{"image_b64": upload}]
        return cls.parse(data)


class DuplicatesRequest(BaseModel):
    """A page of the collection's groups of copies (`clipsearch duplicates`, the API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        DUPLICATE_COSINE,
        ge=MIN_DUPLICATE_COSINE,
        le=1,
        allow_inf_nan=False,
        description="The cosine from which two images count as copies of one photo.",
    )
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Groups to skip.")
    limit: int = Field(DEFAULT_GROUPS, ge=1, le=MAX_GROUPS, description="Groups per page.")

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> DuplicatesRequest:
        if unknown := set(values) - set(cls.model_fields):
            raise BadRequest(f"unknown parameter {str(sorted(unknown)[0])[:40]!r}")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise BadRequest(_first_error(exc)) from None


# What a query string or form can carry (lists and objects need the JSON body).
FLAT_FIELDS = ("q", "text", "image_id", "k", "offset", "min_score", "include_query", "collapse")


def _bad_request(exc: ValidationError) -> BadRequest:
    if any(error["type"] == "no_query" for error in exc.errors()):
        return NoQuery(NO_QUERY)
    return BadRequest(_first_error(exc))


def _first_error(exc: ValidationError) -> str:
    """The deepest problem: of a union's failed branches, the one that got furthest (a term
    that is not a string says why it is not a term)."""
    errors = exc.errors(include_url=False)
    error = max(errors, key=lambda e: (len(e["loc"]), e["type"] != "string_type"))
    message = error["msg"].removeprefix("Value error, ")
    where = ".".join(_user_loc(error["loc"]))
    return f"{where}: {message}" if where else message


def _user_loc(loc: tuple[int | str, ...]) -> list[str]:
    """The path to a field as the client wrote it, without pydantic's names for union branches
    and validators, and without the tag of the term kind taken (positive.0.weight, not
    positive.0.text.weight)."""
    parts = []
    for before, part in zip((None, *loc), loc, strict=False):
        tag = str(before).startswith(_TAGGED_UNION) and part in TERMS
        if not tag and not _INTERNAL.search(str(part)):
            parts.append(str(part))
    return parts


_INTERNAL = re.compile(r"[\[-]")  # pydantic's names for union branches and validators
_TAGGED_UNION = "tagged-union["  # pydantic's name for one, followed by the tag of the branch
