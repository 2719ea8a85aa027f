"""What `export` can write (data only: the CLI reads it without importing torch)."""

TARGETS = ("safetensors", "hf", "gguf", "apr")
DTYPE_NAMES = ("f32", "f16", "bf16")  # float tensors' dtype in the output (default: as stored)
