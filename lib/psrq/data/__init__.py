"""Catalogue and events in: synthetic data, MovieLens, validation, text embeddings."""
