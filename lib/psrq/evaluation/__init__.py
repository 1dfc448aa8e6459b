"""Offline evaluation: distributed scoring and exact metrics in Spark."""
