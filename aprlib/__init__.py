"""aprlib: model files (APR, safetensors, GGUF), converters, a reference transformer, diff."""

__version__ = "0.1.0"
