"""Expected failures, each carrying a message fit to show a user as it is."""


class ClipsearchError(Exception):
    """A failure the user can act on: the CLI prints it on one line, the API as JSON."""


class ModelError(ClipsearchError):
    """The model cannot be built or its weights cannot be had."""


class CollectionError(ClipsearchError):
    """The data directory is missing, damaged, or belongs to another model."""


class BadRequest(ClipsearchError):
    """A query or parameter that cannot be answered as given."""


class NoQuery(BadRequest):
    """A request with nothing to search for: a page without a query yet."""


class TooLarge(BadRequest):
    """An upload over the size limit."""


class NotFound(ClipsearchError):
    """An image id that names no indexed image."""


class ImageError(ClipsearchError):
    """A file or upload that cannot be used as an image."""


class StorageError(ClipsearchError):
    """The collection's directory cannot be written: a full disk, a read-only mount."""
