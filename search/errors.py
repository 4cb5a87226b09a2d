"""Expected failures, each carrying a message fit to show a user as it is.

Each also has a `code`, the name of its kind, and the `fields` its sentence was made from, so
that a front end can say the same in the user's language (web/messages.py) while the message
itself stays English for the command line and JSON clients.
"""

from __future__ import annotations

# Every code, for the API document and the translations. "internal" is what the web layer says of
# a failure that is not one of these (a bug), with no detail.
CODES = (
    "error",
    "server",
    "internal",
    "bad_request",
    "too_large",
    "not_found",
    "bad_image",
    "terms_cancel",
    "no_image",
    "weight",
    "not_ready",
)


class ClipsearchError(Exception):
    """A failure the user can act on: the CLI prints it on one line, the API as JSON."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **fields: str | int | float):
        super().__init__(message)
        self.code = code or type(self).code
        self.fields = fields
        assert self.code in CODES, f"add {self.code!r} to CODES and web/messages.py"


class ModelError(ClipsearchError):
    """The model cannot be built or its weights cannot be had."""

    code = "server"


class CollectionError(ClipsearchError):
    """The data directory is missing, damaged, or belongs to another model."""

    code = "server"


class BadRequest(ClipsearchError):
    """A query or parameter that cannot be answered as given."""

    code = "bad_request"


class NoQuery(BadRequest):
    """A request with nothing to search for: a page without a query yet."""


class TooLarge(BadRequest):
    """An upload over the size limit."""

    code = "too_large"


class NotFound(ClipsearchError):
    """An image id that names no indexed image."""

    code = "not_found"


class ImageError(ClipsearchError):
    """A file or upload that cannot be used as an image."""

    code = "bad_image"


class NotReady(ClipsearchError):
    """What the answer needs is being computed: ask again shortly."""

    code = "not_ready"
    retry_seconds = 5


class StorageError(ClipsearchError):
    """The collection's directory cannot be written: a full disk, a read-only mount."""

    code = "server"
