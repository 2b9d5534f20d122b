"""The model: loading, quantization, adapters."""
