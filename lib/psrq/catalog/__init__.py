"""Semantic IDs over the catalogue: fit codebooks, assign, the nightly reindex, the current version."""
