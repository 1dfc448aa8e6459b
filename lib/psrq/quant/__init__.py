"""Quantizers that turn item embeddings into semantic IDs (codes), and their artifacts."""
