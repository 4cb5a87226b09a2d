"""Metadata filters, parsed once from GET parameters, a POST `filters` object or CLI options, and
turned into SQL over the catalog."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import (
    Float,
    Numeric,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from search.catalog import ImageRecord, ImageTag, Tag
from search.errors import BadRequest

# A catalog column's name, in any script (a Chinese shop's 价格), but no quote, backslash or
# control character: the name goes into a JSON path, $."NAME", which cannot escape them.
_NAME_CHAR = r'[^"\\\u0000-\u001f]'  # the same in Python's regex and in JSON Schema's (ECMA)
_ATTR = re.compile(rf"^attr_(?P<name>{_NAME_CHAR}+?)(?:_(?P<bound>min|max))?$")
_ATTR_KEY = rf"^attr_{_NAME_CHAR}+$"  # _ATTR, as JSON Schema says it
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FILTER_KEYS = ("folder", "ext", "date_from", "date_to", "tag")
MAX_FILTER_CHARS = 1000
# JSON's booleans, as json_type names them and as a filter and the facets spell them.
BOOLEANS = ("true", "false")
SCALARS = ("text", "integer", "real", *BOOLEANS)  # json_type's names; objects and lists: no facet


@dataclass(frozen=True)
class Filters:
    folder: str | None = None
    ext: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    tags: tuple[str, ...] = ()  # all of them
    attr_equals: dict[str, str] = field(default_factory=dict)
    attr_min: dict[str, float] = field(default_factory=dict)
    attr_max: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(
            (
                self.folder,
                self.ext,
                self.date_from,
                self.date_to,
                self.tags,
                self.attr_equals,
                self.attr_min,
                self.attr_max,
            )
        )

    @classmethod
    def parse(cls, values: object) -> Filters:
        """Read a mapping of filter keys (a POST `filters` object, CLI options)."""
        if isinstance(values, Filters):
            return values
        if not isinstance(values, Mapping):
            raise BadRequest("filters must be an object")
        if unknown := [key for key in values if not is_filter_key(str(key))]:
            raise BadRequest(f"unknown filter {str(unknown[0])[:40]!r}")
        folder = _text(values, "folder")
        if folder is not None:
            folder = folder.strip("/")
            if any(part in ("..", ".") for part in folder.split("/")):
                raise BadRequest("folder: give a path relative to the indexed folder")
        ext = tuple(e.lower().lstrip(".") for e in _listed(values, "ext"))
        equals: dict[str, str] = {}
        lows: dict[str, float] = {}
        highs: dict[str, float] = {}
        for key, value in values.items():
            match = _ATTR.match(key)
            if not match or value == "":  # as for every filter, empty is no filter (forms send "")
                continue
            name, bound = match["name"], match["bound"]
            if bound is None:
                equals[name] = _equality_value(key, value)
            else:
                (lows if bound == "min" else highs)[name] = finite_number(key, value)
        return cls(
            folder or None,
            ext,
            _date(values, "date_from"),
            _date(values, "date_to"),
            _listed(values, "tag"),
            equals,
            lows,
            highs,
        )

    def where(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = []
        if self.folder:
            prefix = self.folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(ImageRecord.path.like(f"{prefix}/%", escape="\\"))
        if self.ext:
            extensions = set(self.ext) | (
                {"jpg", "jpeg"} if {"jpg", "jpeg"} & set(self.ext) else set()
            )
            conditions.append(ImageRecord.ext.in_(sorted(extensions)))
        if self.date_from:
            conditions.append(ImageRecord.taken_at >= datetime.combine(self.date_from, time.min))
        if self.date_to:  # inclusive, up to 9999-12-31, which has no day after it
            conditions.append(ImageRecord.taken_at <= datetime.combine(self.date_to, time.max))
        for name in self.tags:
            tagged = select(ImageTag.image_id).join(Tag).where(Tag.name == name)
            conditions.append(ImageRecord.id.in_(tagged))
        for name, value in self.attr_equals.items():
            conditions.append(_equals(name, value))
        for name, value in self.attr_min.items():
            number = _attribute(name)
            conditions.append(and_(cast(number, Numeric) >= value, _is_number(number)))
        for name, value in self.attr_max.items():
            number = _attribute(name)
            conditions.append(and_(cast(number, Numeric) <= value, _is_number(number)))
        return and_(*conditions)


def is_filter_key(key: str) -> bool:
    return key in FILTER_KEYS or _ATTR.match(key) is not None


def filters_schema() -> dict[str, Any]:
    """The JSON Schema of a filters object (and of the filter query parameters)."""
    text = {"type": "string", "maxLength": MAX_FILTER_CHARS}
    day = {"type": "string", "anyOf": [{"format": "date"}, {"maxLength": 0}]}  # forms send ""
    return {
        "type": "object",
        "properties": {
            "folder": {**text, "description": "Path prefix relative to the indexed folder."},
            "ext": {**text, "description": "Extensions, comma-separated: jpg,png."},
            "date_from": {**day, "description": "Inclusive; empty: no limit."},
            "date_to": {**day, "description": "Inclusive; empty: no limit."},
            "tag": {**text, "description": "Tags, comma-separated: images with all of them."},
        },
        "patternProperties": {
            _ATTR_KEY: {
                "type": ["string", "number"],
                "maxLength": MAX_FILTER_CHARS,
                "description": "attr_NAME: equality on a catalog attribute; attr_NAME_min, "
                "attr_NAME_max: a numeric range, which values that are not numbers are out "
                "of. Empty: no filter.",
            }
        },
        "additionalProperties": False,
    }


def _attribute(name: str) -> ColumnElement[Any]:
    return func.json_extract(ImageRecord.attributes, _path(name))


def _path(name: str) -> str:
    # The path spells the key as the catalog stores it: SQLAlchemy's json.dumps writes 价格 as
    # "\u4ef7\u683c", and SQLite before 3.45 compares a path's label with that text as it is.
    return "$." + json.dumps(name)


def _equals(name: str, value: str) -> ColumnElement[bool]:
    """The attribute is `value`; a JSONL catalog's true and false are 'true' and 'false', as
    the facets offer them (json_extract reads them as 1 and 0)."""
    equal = cast(_attribute(name), String) == value
    if value in BOOLEANS:
        return or_(equal, func.json_type(ImageRecord.attributes, _path(name)) == value)
    return equal


def _is_number(value: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether an attribute's value is a number, not text that starts like one. CAST alone reads
    a prefix ('' and 'N/A' as 0, '12 USD' as 12), so a blank price would pass `price <= 10`;
    compared with its own CAST, SQLite converts the text only when all of it is a number. In a
    filter it comes after the range test, which rules most rows out at less cost."""
    return value == cast(value, Numeric)


def _text(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a string")
    if len(value) > MAX_FILTER_CHARS:
        raise BadRequest(f"{key}: at most {MAX_FILTER_CHARS} characters")
    return value


def _listed(values: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A comma-separated list: `ext=jpg,png`, `tag=beach,dog`."""
    return tuple(part.strip() for part in (_text(values, key) or "").split(",") if part.strip())


def _equality_value(key: str, value: Any) -> str:
    """A catalog attribute to match: text, or a number as the catalog stores it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = finite_number(key, value)
        return str(int(number)) if number.is_integer() else str(number)
    return _text({key: value}, key) or ""


def finite_number(key: str, value: Any) -> float:
    """A number from a query string or JSON; NaN, infinities and booleans are refused."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be a number, got {str(value)[:40]!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise BadRequest(f"{key} must be a finite number")
    return number


def _date(values: Mapping[str, Any], key: str) -> date | None:
    text = _text(values, key)
    if text is None:
        return None
    try:
        if not _ISO_DATE.match(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{key}: expected an ISO date like 2024-05-31, got {text!r}") from None


FACET_VALUES = 50  # an attribute with more distinct values is free text (a title, a URL)
FACET_SAMPLE = 100_000  # distinct (attribute, value) pairs read to tell ranges from lists


def facets(session: Session) -> dict[str, Any]:
    """What the filters can choose from: top-level folders, extensions, the date range, the
    tags with how many images have each, and each catalog attribute as a list of values or a
    numeric range."""
    first = func.substr(ImageRecord.path, 1, func.instr(ImageRecord.path, "/") - 1)
    folders = session.scalars(
        select(first).where(func.instr(ImageRecord.path, "/") > 0).distinct().order_by(first)
    ).all()
    extensions = session.scalars(select(ImageRecord.ext).distinct().order_by(ImageRecord.ext))
    oldest, newest = session.execute(
        select(func.min(ImageRecord.taken_at), func.max(ImageRecord.taken_at))
    ).one()
    attributes = _attribute_facets(session)
    return {
        "folders": list(folders[:500]),
        "extensions": list(extensions),
        "date_from": oldest.date().isoformat() if oldest else None,
        "date_to": newest.date().isoformat() if newest else None,
        "tags": tag_counts(session),
        "attributes": attributes,
    }


def tag_counts(session: Session) -> list[dict[str, Any]]:
    """Every tag some image has, the most common first."""
    count = func.count(ImageTag.image_id)
    rows = session.execute(
        select(Tag.name, count).join(ImageTag).group_by(Tag.id).order_by(count.desc(), Tag.name)
    )
    return [{"name": name, "count": number} for name, number in rows]


def _attribute_values() -> Select[tuple[str, Any, float | None]]:
    """A sample of each attribute's distinct values, blanks left out (a product without a
    price has none), with the number each is, or None for text."""
    pair = func.json_each(ImageRecord.attributes).table_valued("key", "value", "type", name="pair")
    boolean = pair.c.type.in_(BOOLEANS)
    number = case((boolean, null()), (_is_number(pair.c.value), cast(pair.c.value, Float)))
    return (
        select(pair.c.key, _shown(pair.c.type, pair.c.value), number)
        .select_from(ImageRecord)
        .join(pair, true())
        .where(pair.c.type.in_(SCALARS), func.trim(pair.c.value) != "")
        .distinct()
        .limit(FACET_SAMPLE)
    )


def _attribute_facets(session: Session) -> dict[str, Any]:
    """Each attribute as a numeric range when most of its values are numbers (a price column
    with a few 'N/A'), else as its values when there are few enough to choose from. Past the
    sample, the sample only says which is which: the range and the values are read from every
    product, since a category that only the last products have must be offered too (at a
    million products, about a second an attribute)."""
    sample = session.execute(_attribute_values()).all()
    facets = _sampled_facets(sample)
    if len(sample) < FACET_SAMPLE:  # the sample holds every value
        return facets
    exact = {
        key: _range(session, key) if "min" in facet else _values(session, key)
        for key, facet in facets.items()
    }
    return {key: facet for key, facet in exact.items() if facet is not None}


def _shown(kind: ColumnElement[Any], value: ColumnElement[Any]) -> ColumnElement[Any]:
    """An attribute's value as a facet lists it: true and false by name, where SQLite's JSON
    functions give 1 and 0 (`kind` is the value's JSON type)."""
    return case((kind.in_(BOOLEANS), kind), else_=value)


def _sampled_facets(sample: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The facets the sample shows: a range where most distinct values are numbers, a list
    where there are few, nothing for free text (a title, a URL)."""
    values: dict[str, set[str]] = {}
    numbers: dict[str, list[float]] = {}
    for key, value, number in sample:
        if _ATTR.match(f"attr_{key}"):
            values.setdefault(key, set()).add(str(value))
            if number is not None and math.isfinite(number):
                numbers.setdefault(key, []).append(number)
    facets: dict[str, Any] = {}
    for key, seen in sorted(values.items()):
        found = numbers.get(key, [])
        if 2 * len(found) > len(seen):
            facets[key] = {"min": min(found), "max": max(found)}
        elif len(seen) <= FACET_VALUES:
            facets[key] = {"values": sorted(seen)}
    return facets


def _range(session: Session, key: str) -> dict[str, float] | None:
    """The smallest and largest number the attribute has (never an infinity, as 1e999 is)."""
    value = _attribute(key)
    number = cast(value, Float)
    low, high = session.execute(
        select(func.min(number), func.max(number)).where(
            _is_number(value), number.between(-sys.float_info.max, sys.float_info.max)
        )
    ).one()
    return None if low is None else {"min": low, "max": high}


def _values(session: Session, key: str) -> dict[str, list[str]] | None:
    """The attribute's values, if there are at most FACET_VALUES (true and false as such)."""
    kind = func.json_type(ImageRecord.attributes, _path(key))
    found = session.scalars(
        select(_shown(kind, _attribute(key)))
        .where(kind.in_(SCALARS), func.trim(_attribute(key)) != "")
        .distinct()
        .limit(FACET_VALUES + 1)
    ).all()
    shown = {str(item) for item in found}
    return {"values": sorted(shown)} if len(found) <= FACET_VALUES else None
