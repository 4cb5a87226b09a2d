"""The clipsearch core: model, catalog, vector index, collection and query engine.

Imported by ``indexer`` and ``web``; imports neither.
"""
