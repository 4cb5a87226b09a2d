"""Search results and image metadata as JSON: the one shape the API and `clipsearch search --json`
share, with the URLs the files blueprint serves each image under."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.catalog import ImageRecord
from search.engine import Hit, Page
from search.request import DuplicatesRequest

if TYPE_CHECKING:
    from search.duplicates import Copy  # networkx: imported when duplicates are asked for


def links(image_id: int) -> dict[str, str]:
    return {"url": f"/images/{image_id}", "thumbnail_url": f"/thumbs/{image_id}"}


def hit_json(hit: Hit) -> dict[str, Any]:
    record = hit.record
    return {
        "id": record.id,
        "path": record.path,
        **links(record.id),
        "score": round(hit.score, 6),
        "width": record.width,
        "height": record.height,
        "attributes": record.attributes or {},
        "tags": tags_json(record),
    }


def tags_json(record: ImageRecord) -> list[dict[str, Any]]:
    """The image's zero-shot tags, the most probable first (search/tags.py)."""
    return [{"name": tag.tag.name, "score": round(tag.score, 4)} for tag in record.tags]


def page_json(page: Page, model: str) -> dict[str, Any]:
    return {
        "results": [hit_json(hit) for hit in page.hits],
        "count": len(page.hits),
        "k": page.k,
        "offset": page.offset,
        "took_ms": round(page.took_ms, 2),
        "model": model,
    }


def duplicates_json(groups: list[list[Copy]], request: DuplicatesRequest) -> dict[str, Any]:
    """One page of groups of copies, each best copy first."""
    page = groups[request.offset : request.offset + request.limit]
    return {
        "groups": [{"images": [copy_json(copy) for copy in group]} for group in page],
        "count": len(groups),
        "offset": request.offset,
        "limit": request.limit,
        "threshold": request.threshold,
    }


def copy_json(copy: Copy) -> dict[str, Any]:
    score = round(min(copy.score, 1.0), 6)
    return {**image_json(copy.record), "score": score, "same_file": copy.same_file}


def image_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "path": record.path,
        **links(record.id),
        "width": record.width,
        "height": record.height,
        "size": record.size,
        "ext": record.ext,
        "taken_at": record.taken_at.isoformat(),
        "sha256": record.sha256,
        "attributes": record.attributes or {},
        "tags": tags_json(record),
    }
