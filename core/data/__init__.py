"""Data: tables and splits, prompts, tokens, retrieval."""
