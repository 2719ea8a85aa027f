"""The Llama-style decoder, with Hugging Face LlamaForCausalLM tensor names.

`config` (shapes and presets) imports no torch; `llama` (the model) and `io` (model files) do, and are
loaded on first use so that the CLI can list presets without paying for torch.
"""

from typing import Any

from aprtool.model.config import PRESETS, LlamaConfig

__all__ = ["PRESETS", "LlamaConfig", "LlamaForCausalLM"]


def __getattr__(name: str) -> Any:
    if name == "LlamaForCausalLM":
        from aprtool.model.llama import LlamaForCausalLM

        return LlamaForCausalLM
    raise AttributeError(name)
