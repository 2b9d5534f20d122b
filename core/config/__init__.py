"""The config language: load, schemas, validation, rules."""
