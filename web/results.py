"""Search results and image metadata as JSON: the one shape the API and `clipsearch search --json`
share, with the URLs the files blueprint serves each image under."""

from __future__ import annotations

from typing import Any

from search.catalog import ImageRecord
from search.engine import Hit, Page


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
    }


def page_json(page: Page, model: str) -> dict[str, Any]:
    return {
        "results": [hit_json(hit) for hit in page.hits],
        "count": len(page.hits),
        "k": page.k,
        "offset": page.offset,
        "took_ms": round(page.took_ms, 2),
        "model": model,
    }


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
    }
