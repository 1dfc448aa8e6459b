"""Pipeline stages: each takes (spark, cfg), does one job's work and returns a summary."""
