"""Training the rankers: readers over the samples, the training loop, distributed backends."""
