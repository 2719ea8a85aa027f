"""File-to-file operations built on the library layers: `compress` (read a model file, quantize and code
its tensors with `codecs`, carry its tokenizer, write the artifact) and `verify` with the decoder."""
