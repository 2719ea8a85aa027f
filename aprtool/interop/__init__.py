"""Other formats in and out: safetensors now; Hugging Face directories and GGUF with `export`."""
