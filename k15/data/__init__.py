"""Data: the tiny tasks, WebDataset shards, and the data modules that stream them."""
