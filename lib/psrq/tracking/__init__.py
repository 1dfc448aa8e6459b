"""Runs tracked in MLflow: what a run holds (runs), the store it is recorded in (store), and
each stage's runs (stages)."""
