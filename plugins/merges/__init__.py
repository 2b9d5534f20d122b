"""Built-in merges plugins."""
