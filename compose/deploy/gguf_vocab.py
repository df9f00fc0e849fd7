"""Tokenizer metadata for GGUF files, read from the base's own tokenizer files.

SentencePiece (``tokenizer.model``: Llama, Mistral) becomes llama.cpp's ``llama`` tokenizer with
pieces, scores and token types; byte-level BPE (``tokenizer.json``: Llama 3, Qwen2) becomes
``gpt2`` with tokens, types and merges. Special token ids, ``add_bos``/``add_eos`` and the chat
template come through the ``gguf`` package's ``SpecialVocab``. Vocabularies smaller than the
embedding are padded with ``[PAD<i>]`` unused tokens, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compose.deploy.base import BaseFolder
from schemas.errors import InvalidArgument

# The pre-tokenizer regexes llama.cpp knows by name (tokenizer.ggml.pre).
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_KNOWN_PRE = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


def add_vocab(writer: Any, base: BaseFolder, vocab_size: int) -> str:
    """Write the tokenizer keys of ``base`` into ``writer``; returns the tokenizer kind.

    Raises:
        InvalidArgument: the base has no tokenizer llama.cpp can use.
    """
    import gguf

    folder = base.path
    if (folder / "tokenizer.model").is_file():
        tokens, scores, types = _sentencepiece(folder, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return "sentencepiece"
    if (folder / "tokenizer.json").is_file():
        tokens_bpe, types, pre = _bpe(folder, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens_bpe)
        writer.add_token_types(types)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens_bpe)).add_to_gguf(
            writer, quiet=True
        )
        return "bpe"
    raise InvalidArgument(
        f"base {folder}: no tokenizer.model or tokenizer.json; GGUF needs the base's tokenizer"
    )


def _sentencepiece(folder: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    size = max(vocab_size, sp.vocab_size())
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [int(TokenType.UNUSED)] * size
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        types[i] = int(kind)
    for token_id, content, special in _added_tokens(folder):
        if token_id < size:
            tokens[token_id] = content.encode("utf-8")
            scores[token_id] = -1000.0
            types[token_id] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    return tokens, scores, types


def _added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """(id, content, special) from tokenizer_config.json's added_tokens_decoder."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return []
    decoder = json.loads(path.read_text()).get("added_tokens_decoder", {})
    return [(int(i), d["content"], bool(d.get("special"))) for i, d in decoder.items()]


def _bpe(folder: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    from gguf import TokenType

    data = json.loads((folder / "tokenizer.json").read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise InvalidArgument(
            f"base {folder}: tokenizer.json is a {model.get('type')} model; GGUF export reads"
            " byte-level BPE (tokenizer.json) or SentencePiece (tokenizer.model)"
        )
    reverse = {int(i): tok for tok, i in model["vocab"].items()}
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    size = max([vocab_size, *(i + 1 for i in reverse), *(i + 1 for i in added)])
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i in added:
            tokens.append(added[i]["content"])
            special = added[i].get("special", False)
            types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
        elif i in reverse:
            tokens.append(reverse[i])
            types.append(int(TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    return tokens, types, _pre_tokenizer(data.get("pre_tokenizer") or {})


def _pre_tokenizer(pre: dict[str, Any]) -> str:
    """llama.cpp's name for the base's pre-tokenizer (``default`` when it is not a known one)."""
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for part in parts:
        if part.get("type") == "Split":
            regex = (part.get("pattern") or {}).get("Regex")
            if regex in _KNOWN_PRE:
                return _KNOWN_PRE[regex]
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt-2"
    return "default"
