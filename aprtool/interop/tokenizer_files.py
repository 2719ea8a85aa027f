"""The model's tokenizer as files other tools read: tokenizer.json, and GGUF's token lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aprtool.data.tokenizer import EOS
from aprtool.errors import IntegrityError


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def bytes_tokenizer_json() -> str:
    """aprtool's bytes tokenizer (id = byte value, 256 = EOS) as a byte-level BPE with no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return tok.to_str()


def tokenizer_json(metadata: dict[str, Any], model_path: Path) -> str | None:
    """tokenizer.json text for the model's tokenizer, or None if the model names none. A BPE tokenizer
    is `tokenizer.json` beside the model, checked by sha256 (model.io's rule)."""
    from aprtool.data.tokenizer import bpe_json
    from aprtool.model.io import tokenizer_info

    info = tokenizer_info(metadata)
    if info is None:
        return None
    if info["kind"] == "bytes":
        return bytes_tokenizer_json()
    return bpe_json(info, model_path.parent)


def gguf_vocab(text: str) -> dict[str, Any]:
    """tokens (by id), merges ("a b"), token types (1 normal, 3 control) and the EOS id."""
    data = json.loads(text)
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise IntegrityError("gguf: only byte-level BPE tokenizers are supported")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab.update(special)
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for token, index in vocab.items():
        tokens[index] = token
    if "" in tokens:
        raise IntegrityError("gguf: the tokenizer's ids are not contiguous")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        # llama.cpp refuses a "gpt2" tokenizer without the merges key and GGUF cannot store an empty
        # array. One merge of two NUL bytes whose result is no token changes nothing: llama.cpp falls
        # back to the byte tokens for a merged symbol that is not in the vocabulary.
        nul = byte_to_unicode()[0]
        merges = [f"{nul} {nul}"]
    types = [3 if t in special else 1 for t in tokens]
    return {"tokens": tokens, "merges": merges, "types": types, "eos_id": special.get(EOS)}
