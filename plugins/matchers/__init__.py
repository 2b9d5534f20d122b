"""Built-in matchers plugins."""
