"""Training samples: the layout (pure), the Spark build, the content features."""
