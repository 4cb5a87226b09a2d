"""Search results and image metadata as JSON: the one shape the API and `clipsearch search --json`
share, with the URLs the files blueprint serves each image under."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import has_request_context, request

from search.catalog import ImageRecord
from search.engine import Hit, Page
from search.languages import NOTICES
from search.request import DuplicatesRequest

if TYPE_CHECKING:
    from search.duplicates import Copy  # networkx: imported when duplicates are asked for


def mount_point() -> str:
    """Where the app is mounted: `serve --url-prefix /photos` starts every URL with /photos.
    Asked once per answer (werkzeug works it out anew each time); the command line has none."""
    return request.script_root if has_request_context() else ""


def links(image_id: int, root: str) -> dict[str, str]:
    # Not url_for: a page of 1,000 results would spend 20 ms building routes.
    return {"url": f"{root}/images/{image_id}", "thumbnail_url": f"{root}/thumbs/{image_id}"}


def hit_json(hit: Hit, root: str) -> dict[str, Any]:
    record = hit.record
    return {
        "id": record.id,
        "path": record.path,
        **links(record.id, root),
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
    root = mount_point()
    return {
        "results": [hit_json(hit, root) for hit in page.hits],
        "count": len(page.hits),
        "k": page.k,
        "offset": page.offset,
        "took_ms": round(page.took_ms, 2),
        "model": model,
        "notice": page.notice and {"code": page.notice, "message": NOTICES[page.notice]},
    }


def duplicates_json(groups: list[list[Copy]], request: DuplicatesRequest) -> dict[str, Any]:
    """One page of groups of copies, each best copy first."""
    page = groups[request.offset : request.offset + request.limit]
    root = mount_point()
    return {
        "groups": [{"images": [copy_json(copy, root) for copy in group]} for group in page],
        "count": len(groups),
        "offset": request.offset,
        "limit": request.limit,
        "threshold": request.threshold,
    }


def copy_json(copy: Copy, root: str) -> dict[str, Any]:
    score = round(min(copy.score, 1.0), 6)
    return {**image_json(copy.record, root), "score": score, "same_file": copy.same_file}


def image_json(record: ImageRecord, root: str) -> dict[str, Any]:
    return {
        "id": record.id,
        "path": record.path,
        **links(record.id, root),
        "width": record.width,
        "height": record.height,
        "size": record.size,
        "ext": record.ext,
        "taken_at": record.taken_at.isoformat(),
        "sha256": record.sha256,
        "attributes": record.attributes or {},
        "tags": tags_json(record),
    }
