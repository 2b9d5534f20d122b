"""Built-in initializers plugins."""
