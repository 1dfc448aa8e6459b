"""Rankers: MCCA, DIN and their variants (torch)."""
