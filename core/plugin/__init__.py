"""The plugin contract: hook specs, descriptors, the registry."""
