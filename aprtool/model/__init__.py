"""The Llama-style decoder, with Hugging Face LlamaForCausalLM tensor names."""

from aprtool.model.llama import PRESETS, LlamaConfig, LlamaForCausalLM

__all__ = ["PRESETS", "LlamaConfig", "LlamaForCausalLM"]
