"""The `clipsearch` command line; the library lives in the search, indexer and web packages."""
