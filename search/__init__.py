"""The clipsearch core: model, catalog, vector index, collection and query engine.

Imported by ``indexer`` and ``web``; imports neither.
"""

from search.blas import choose_openblas_kernels

choose_openblas_kernels()  # before any module here imports faiss (search/blas.py)
