"""The model's tokenizer as files other tools read: tokenizer.json, and GGUF's token lists."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from aprtool.data.tokenizer import EOS, tokenizer_document
from aprtool.errors import FormatError, IntegrityError, UnavailableError


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
    is embedded, or `tokenizer.json` beside the model, checked by sha256 (model.io's rule)."""
    from aprtool.data.tokenizer import bpe_json
    from aprtool.model.io import tokenizer_info

    info = tokenizer_info(metadata)
    if info is None:
        return None
    if info["kind"] == "bytes":
        return bytes_tokenizer_json()
    return bpe_json(info, model_path.parent)


def special_ids(info: dict[str, Any]) -> tuple[int | None, int | None]:
    """(bos, eos) a model's tokenizer declares; aprtool's own tokenizers use their EOS for both."""
    if info.get("kind") == "hf":
        return info.get("bos_id"), info.get("eos_id")
    return info.get("eos_id"), info.get("eos_id")


def tokenizer_config(text: str, info: dict[str, Any], context: int) -> dict[str, Any]:
    """tokenizer_config.json for a model's own tokenizer: its bos/eos tokens and whether a BOS is added."""
    data = tokenizer_document(text)
    by_id = {t["id"]: t["content"] for t in data.get("added_tokens", []) if isinstance(t, dict)}
    by_id |= {i: t for t, i in _json_vocab(data).items() if i not in by_id}
    bos, eos = special_ids(info)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": by_id.get(bos), "eos_token": by_id.get(eos),
            "add_bos_token": bool(info.get("add_bos")), "add_eos_token": False, "model_max_length": context,
            "clean_up_tokenization_spaces": False}  # fmt: skip


def _json_vocab(data: dict[str, Any]) -> dict[str, int]:
    model = data.get("model", {})
    vocab = model.get("vocab")
    if isinstance(vocab, list):  # Unigram: [piece, score] pairs
        return {entry[0]: i for i, entry in enumerate(vocab)}
    return dict(vocab) if isinstance(vocab, dict) else {}


def _pre_name(data: dict[str, Any]) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a byte-level tokenizer's pre-tokenizer."""
    from aprtool.data.token_bytes import components

    parts = components(data.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    splits = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    regex = [p.get("use_regex", True) for p in parts if p.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and regex == [True]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and regex == [True] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and regex == [False]:
        for name, pattern in (("llama-bpe", LLAMA3_SPLIT), ("qwen2", QWEN2_SPLIT)):
            if splits == [pattern]:
                return name
    known = "gpt-2, llama-bpe, qwen2, smollm"
    raise IntegrityError(f"--to gguf: the tokenizer's pre-tokenizer has no llama.cpp name ({known})")


def gguf_vocab(text: str, info: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer as llama.cpp's keys: `gpt2` (byte-level BPE: tokens, merges, pre) or `llama` (SentencePiece
    style: tokens, scores, byte tokens), token types (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte),
    the bos/eos ids and the add-bos rule. Scores of a SentencePiece-style BPE are minus each piece's id, its
    merge order (what `gguf_tokenizer` reads back into the same merges)."""
    from aprtool.data.token_bytes import BYTE_TOKEN, components

    data = tokenizer_document(text)
    model = data["model"]
    if model.get("type") != "BPE":
        raise IntegrityError(f"--to gguf: a {str(model.get('type'))[:20]!r} tokenizer has no llama.cpp form (BPE only)")
    vocab = _json_vocab(data)
    added = {t["content"]: t for t in data.get("added_tokens", []) if isinstance(t, dict)}
    vocab.update({c: t["id"] for c, t in added.items()})
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for token, index in vocab.items():
        tokens[index] = token
    if "" in tokens:
        raise IntegrityError("gguf: the tokenizer's ids are not contiguous")
    types = [(CONTROL if added[t].get("special") else USER_DEFINED) if t in added else NORMAL for t in tokens]
    bos, eos = special_ids(info)
    out = {"tokens": tokens, "types": types, "bos_id": bos, "eos_id": eos, "add_bos": bool(info.get("add_bos"))}
    byte_level = any(c.get("type") == "ByteLevel" for c in components(data.get("pre_tokenizer")))
    if byte_level:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        if not merges:
            # llama.cpp refuses a "gpt2" tokenizer without the merges key and GGUF cannot store an empty
            # array. One merge of two NUL bytes whose result is no token changes nothing: llama.cpp falls
            # back to the byte tokens for a merged symbol that is not in the vocabulary.
            nul = byte_to_unicode()[0]
            merges = [f"{nul} {nul}"]
        return out | {"model": "gpt2", "pre": _pre_name(data), "merges": merges}
    metaspace = [c for c in components(data.get("pre_tokenizer")) if c.get("type") == "Metaspace"]
    if not metaspace or not model.get("byte_fallback"):
        raise IntegrityError("--to gguf: only byte-level and SentencePiece-style (Metaspace, byte fallback) BPE")
    unk = model.get("unk_token")
    types = [BYTE if BYTE_TOKEN.fullmatch(t) and ty == NORMAL else UNKNOWN if t == unk else ty
             for t, ty in zip(tokens, types, strict=True)]  # fmt: skip
    scores = [-float(i) if ty == NORMAL else 0.0 for i, ty in enumerate(types)]
    prefix = metaspace[0].get("prepend_scheme", "always") != "never"
    return out | {"model": "llama", "types": types, "scores": scores, "add_space_prefix": prefix,
                  "unk_id": vocab.get(unk) if unk else None}  # fmt: skip


# --- a model's own tokenizer, from its folder or its GGUF keys -------------------------------------------


def _special_content(value: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _declared_id(value: Any) -> int | None:
    """A token id from generation_config.json / config.json (an int, or a list whose first is used)."""
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _template_bos(data: dict[str, Any]) -> str | None:
    """The special token the post-processor's single-sequence template puts first (Llama's `<s> $A`)."""
    from aprtool.data.token_bytes import components

    for c in components(data.get("post_processor")):
        single = c.get("single") if c.get("type") == "TemplateProcessing" else None
        if isinstance(single, list) and single and isinstance(single[0], dict) and "SpecialToken" in single[0]:
            first = single[0]["SpecialToken"]
            return first.get("id") if isinstance(first, dict) and isinstance(first.get("id"), str) else None
    return None


def tokenizer_entry(text: str, bos_id: int | None, eos_id: int | None, add_bos: bool, where: str) -> dict[str, Any]:
    """The metadata entry (kind `hf`, text embedded) for a model's tokenizer.json; checked, loaded once."""
    from aprtool.data.token_bytes import token_bytes
    from aprtool.data.tokenizer import HfTokenizer, check_tokenizer_info

    info = {"kind": "hf", "bos_id": bos_id, "eos_id": eos_id, "add_bos": add_bos}
    tokenizer = HfTokenizer.from_entry(text, info, where)
    info = {**tokenizer.info(), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "json": text}
    check_tokenizer_info(info, where)
    try:
        token_bytes(tokenizer)  # a tokenizer whose bytes per token cannot be counted is refused here
        tokenizer.frame()
    except FormatError as exc:
        raise FormatError(f"{where}: {str(exc).removeprefix('tokenizer: ')}") from None
    return info


def folder_tokenizer(directory: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer of an HF model folder (tokenizer.json, with bos/eos and the add-bos rule from
    tokenizer_config.json, generation_config.json or config.json, in that order), or None without one.
    Only these fixed names in `directory` are read."""
    path = directory / "tokenizer.json"
    return json_tokenizer(path, config) if os.path.lexists(path) else None


def json_tokenizer(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer.json as a metadata entry, its bos/eos as `folder_tokenizer` reads them from the side files
    beside it; without any, its well-known special tokens (`<|endoftext|>`, `</s>`, ...) by name."""
    from aprtool.paths import parse_json, read_input, read_json

    directory = path.parent
    raw = read_input(path)
    data = parse_json(raw, str(path))  # strict UTF-8 JSON, so the text below decodes
    text = raw.decode("utf-8")
    if not isinstance(data, dict):
        raise FormatError(f"{path}: must be a JSON object")
    side = {}
    for name in ("tokenizer_config.json", "generation_config.json"):
        if os.path.lexists(directory / name):
            value = read_json(directory / name)
            if not isinstance(value, dict):
                raise FormatError(f"{directory / name}: must be a JSON object")
            side[name] = value
    from aprtool.data.tokenizer import parse_tokenizer

    vocab = parse_tokenizer(text, str(path))
    tcfg, gen = side.get("tokenizer_config.json", {}), side.get("generation_config.json", {})
    template_bos = _template_bos(data)
    ids = {}
    for key in ("bos", "eos"):
        content = _special_content(tcfg.get(f"{key}_token")) or (template_bos if key == "bos" else None)
        found = vocab.token_to_id(content) if content is not None else None
        declared = gen if f"{key}_token_id" in gen else config
        ids[key] = found if found is not None else _declared_id(declared.get(f"{key}_token_id"))
    if ids["eos"] is None and ids["bos"] is None:  # a bare tokenizer.json: its own special tokens by name
        ids["eos"] = next((vocab.token_to_id(t) for t in WELL_KNOWN_EOS if vocab.token_to_id(t) is not None), None)
    add_bos = tcfg.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = template_bos is not None
    return tokenizer_entry(text, ids["bos"], ids["eos"], add_bos, str(path))


WELL_KNOWN_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def tokenizer_file(path: Path) -> dict[str, Any]:
    """`--tokenizer PATH`: a tokenizer.json (any kind tokenizers loads), a folder holding one, or a
    SentencePiece .model, as a metadata entry (kind `hf`, text embedded)."""
    from aprtool.errors import FileAccessError
    from aprtool.paths import open_input

    if path.is_dir():
        if (entry := folder_tokenizer(path, {})) is None:
            raise FileAccessError(f"--tokenizer {path}: the directory holds no tokenizer.json")
        return entry
    with open_input(path) as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        return json_tokenizer(path, {})
    return sentencepiece_tokenizer(path)


def open_tokenizer(path: Path) -> Any:
    """The tokenizer `--tokenizer PATH` names, ready to encode (see `tokenizer_file`)."""
    from aprtool.data.tokenizer import HfTokenizer

    entry = tokenizer_file(path)
    return HfTokenizer.from_entry(entry["json"], entry, str(path))


SP_UNIGRAM, SP_BPE = 1, 2  # sentencepiece's TrainerSpec.ModelType (word and char models are not supported)


def sentencepiece_tokenizer(path: Path) -> dict[str, Any]:
    """A SentencePiece .model (BPE or Unigram) as a tokenizers JSON entry giving sentencepiece's own ids: its
    normalization (the precompiled character map, removal of extra whitespace), dummy prefix, byte fallback,
    control and user-defined pieces; BOS before each document when the model has one (sentencepiece's
    Llama convention), else EOS after."""
    import base64

    from aprtool.paths import read_input

    try:
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise UnavailableError(
            f"--tokenizer {path}: a SentencePiece model needs the sentencepiece package (pip install 'aprtool[data]')"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(read_input(path))
    except (DecodeError, RecursionError, ValueError):
        raise FormatError(f"{path}: neither tokenizers JSON nor a SentencePiece model") from None
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    tokens, scores, types = (
        [p.piece for p in proto.pieces],
        [p.score for p in proto.pieces],
        [p.type for p in proto.pieces],
    )
    if not tokens or len(set(tokens)) != len(tokens):
        raise FormatError(f"{path}: a SentencePiece model needs distinct pieces, found {len(tokens)} with repeats")
    if trainer.model_type not in (SP_UNIGRAM, SP_BPE):
        raise FormatError(f"{path}: SentencePiece model_type {trainer.model_type} is not supported (unigram, bpe)")
    if trainer.treat_whitespace_as_suffix or not norm.escape_whitespaces:
        raise FormatError(
            f"{path}: SentencePiece treat_whitespace_as_suffix / escape_whitespaces=false is not supported"
        )
    steps: list[dict[str, Any]] = []
    if norm.precompiled_charsmap:
        steps.append(
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(norm.precompiled_charsmap).decode()}
        )
    if norm.remove_extra_whitespaces:  # leading, trailing and repeated spaces go before the text is cut
        steps += [{"type": "Strip", "strip_left": True, "strip_right": True},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]  # fmt: skip
    body = _sentencepiece_body(tokens, scores, types, trainer.unk_id, prefix=norm.add_dummy_prefix,
                               unigram=trainer.model_type == SP_UNIGRAM, byte_fallback=trainer.byte_fallback,
                               normalizer=steps, split=trainer.split_by_whitespace)  # fmt: skip
    bos, eos = _token_id(trainer.bos_id, len(tokens)), _token_id(trainer.eos_id, len(tokens))
    return tokenizer_entry(_document(_added_tokens(tokens, types), body), bos, eos, bos is not None, str(path))


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> the split regex a byte-level BPE applies first;
# None: GPT-2's own, which ByteLevel(use_regex=True) applies.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_SPLITS: dict[str, str | None] = {"default": None, "gpt-2": None, "llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT,
                                     "qwen2": QWEN2_SPLIT, "smollm": None}  # fmt: skip
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6  # llama.cpp token types (5: unused)


def _byte_level(split: str | None, digits: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "Digits", "individual_digits": True}] if digits else []
    if split is not None:
        parts.append({"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False})
    parts.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": split is None})
    return {"type": "Sequence", "pretokenizers": parts}


def _merges_from_scores(tokens: list[str], scores: list[float], normal: list[bool]) -> list[list[str]]:
    """SentencePiece's rule as BPE merges: two adjacent pieces merge when their concatenation is a normal piece,
    the higher-scored result first (what transformers does for the same vocabularies)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score, ok in zip(tokens, scores, normal, strict=True):
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        merges.extend((score, len(a), len(b), vocab[a], vocab[b], a, b) for a, b in pairs if ok)
    merges.sort(key=lambda m: (-m[0], m[1], m[2], m[3], m[4]))
    return [[m[5], m[6]] for m in merges]


def _gguf_list(md: dict[str, Any], key: str, kind: type, size: int | None) -> list[Any] | None:
    value = md.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise FormatError(f"GGUF {key}: must be an array of {kind.__name__}")
    if size is not None and len(value) != size:
        raise FormatError(f"GGUF {key}: {len(value):,} items for {size:,} tokens")
    return value


def _token_id(value: Any, size: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size else None


def _bpe_model(vocab: dict[str, int], merges: list[list[str]], **options: Any) -> dict[str, Any]:
    return {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            **options, "vocab": vocab, "merges": merges}  # fmt: skip


def _gpt2_body(md: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_SPLITS:
        raise FormatError(f"GGUF tokenizer.ggml.pre: {str(pre)[:40]!r} is not supported ({', '.join(PRE_SPLITS)})")
    merges = _gguf_list(md, "tokenizer.ggml.merges", str, None) or []
    if any(m.count(" ") != 1 for m in merges):
        raise FormatError("GGUF tokenizer.ggml.merges: a merge is not two tokens separated by one space")
    vocab = set(tokens)  # llama.cpp skips a merge whose parts or result are no token; tokenizers refuses it
    merges = [m for m in merges if (pair := m.split(" "))[0] in vocab and pair[1] in vocab and "".join(pair) in vocab]
    decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    model = _bpe_model({t: i for i, t in enumerate(tokens)}, [m.split(" ") for m in merges])
    return {"normalizer": None, "pre_tokenizer": _byte_level(PRE_SPLITS[pre], pre == "smollm"), "decoder": decoder,
            "model": model}  # fmt: skip


def _llama_body(md: dict[str, Any], tokens: list[str], types: list[int]) -> dict[str, Any]:
    scores = _gguf_list(md, "tokenizer.ggml.scores", float, len(tokens)) or [0.0] * len(tokens)
    prefix = md.get("tokenizer.ggml.add_space_prefix", True) is not False
    return _sentencepiece_body(tokens, scores, types, md.get("tokenizer.ggml.unknown_token_id"), prefix=prefix)


def _sentencepiece_body(tokens: list[str], scores: list[float], types: list[int], unk: Any, *, prefix: bool,
                        unigram: bool = False, byte_fallback: bool = True,
                        normalizer: list[dict[str, Any]] | None = None,
                        split: bool = True) -> dict[str, Any]:  # fmt: skip
    """A SentencePiece vocabulary (a GGUF `llama` one, or a .model's) as tokenizers' model, pre-tokenizer and
    decoder: `▁` for spaces, a dummy `▁` before the text when `prefix`, byte-fallback `<0xNN>` tokens."""
    decoders = [{"type": "Replace", "pattern": {"String": SPACE_PIECE}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]  # fmt: skip
    if prefix:  # the dummy space Metaspace put before the text
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    unk_id = unk if _token_id(unk, len(tokens)) is not None else None
    if unigram:
        model = {"type": "Unigram", "unk_id": unk_id, "byte_fallback": byte_fallback,
                 "vocab": [[t, s] for t, s in zip(tokens, scores, strict=True)]}  # fmt: skip
    else:
        merges = _merges_from_scores(tokens, scores, [t == NORMAL for t in types])
        model = _bpe_model({t: i for i, t in enumerate(tokens)}, merges, unk_token=None if unk_id is None else
                           tokens[unk_id], fuse_unk=True, byte_fallback=byte_fallback)  # fmt: skip
    # sentencepiece and llama.cpp put the dummy `▁` before every text, even one that starts with a space (a
    # Metaspace pre-tokenizer would not); pieces never hold an inner `▁`, so cutting before each is exact
    steps = [*(normalizer or []), *([{"type": "Prepend", "prepend": SPACE_PIECE}] if prefix else []),
             {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_PIECE}]  # fmt: skip
    pre = {"type": "Metaspace", "replacement": SPACE_PIECE, "split": True, "prepend_scheme": "never"}
    return {"normalizer": {"type": "Sequence", "normalizers": steps}, "pre_tokenizer": pre if split else None,
            "decoder": {"type": "Sequence", "decoders": decoders}, "model": model}  # fmt: skip


def _added_tokens(tokens: list[str], types: list[int]) -> list[dict[str, Any]]:
    """Control, unknown and user-defined pieces as tokenizers' added tokens (matched before the model)."""
    return [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": t != USER_DEFINED}
            for i, t in enumerate(types) if t in (CONTROL, UNKNOWN, USER_DEFINED)]  # fmt: skip


def _document(added: list[dict[str, Any]], body: dict[str, Any]) -> str:
    document = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "post_processor": None}
    return json.dumps({**document, **body}, ensure_ascii=False)


def gguf_tokenizer(md: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer a GGUF's `tokenizer.ggml.*` keys describe, as a tokenizers JSON entry (kind `hf`), or
    None when the file has no tokens. gpt2 (byte-level BPE with merges) and llama (SentencePiece: scores,
    byte tokens) models; any other is refused naming `tokenizer.ggml.model`."""
    tokens = _gguf_list(md, "tokenizer.ggml.tokens", str, None)
    if tokens is None:
        return None
    model = md.get("tokenizer.ggml.model")
    types = _gguf_list(md, "tokenizer.ggml.token_type", int, len(tokens)) or [1] * len(tokens)
    if len(set(tokens)) != len(tokens):
        raise FormatError("GGUF tokenizer.ggml.tokens: a token appears twice")
    if model == "gpt2":
        body = _gpt2_body(md, tokens)
    elif model == "llama":
        body = _llama_body(md, tokens, types)
    else:
        raise FormatError(f"GGUF tokenizer.ggml.model: {str(model)[:40]!r} is not supported (gpt2, llama)")
    text = _document(_added_tokens(tokens, types), body)
    ids = {key: _token_id(md.get(f"tokenizer.ggml.{key}_token_id"), len(tokens)) for key in ("bos", "eos")}
    add_bos = md.get("tokenizer.ggml.add_bos_token", model == "llama")  # llama.cpp's default for SentencePiece
    return tokenizer_entry(text, ids["bos"], ids["eos"], add_bos is True, "GGUF tokenizer.ggml.*")


SPACE_PIECE = "\u2581"
