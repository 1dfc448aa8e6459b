"""Rankers: one base (base.py), one module per family, a registry by name (registry.py)."""
