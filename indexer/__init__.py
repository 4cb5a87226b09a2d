"""Scanning folders and filling a collection: decode → preprocess → encode → catalog + vectors."""
