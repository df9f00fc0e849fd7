"""``hub eval --chat``: each prompt wrapped in the base tokenizer's chat template.

A prompt becomes one user turn followed by the assistant's opening, as the model saw its
instructions in training: ``tokenizer.apply_chat_template([{"role": "user", "content":
prompt}], tokenize=False, add_generation_prompt=True)``. Targets and choices stay as they are:
they are what the assistant says next, scored as the tokens that follow the templated prompt
(the rule of ``compose.evaluate``). Templates usually start with the BOS token's text; when the
tokenizer adds a BOS itself, that text is removed so the sequence holds one BOS, not two
(lm-evaluation-harness avoids the same double BOS). No torch here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from compose.eval_data import EvalData
from schemas.errors import InvalidArgument


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn of ``tokenizer``'s chat template, ready for the reply."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return str(text)


def _adds_bos(tokenizer: Any) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("x")["input_ids"]
    return bos_id is not None and bool(ids) and ids[0] == bos_id


def with_chat_template(data: EvalData, tokenizer: Any, base: str) -> EvalData:
    """``data`` with every prompt templated (the file's digest and path unchanged: the
    record's config says ``chat: true``).

    Raises:
        InvalidArgument: the tokenizer has no chat template, or the data has no prompts.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument(
            f"--chat: the tokenizer of the base {base} has no chat template (no"
            " 'chat_template' in its tokenizer_config.json or chat_template.jinja); leave out"
            " --chat or use a base that has one"
        )
    if data.kind == "text":
        raise InvalidArgument(f"--chat: {data.path.name} holds text rows, which have no prompts")
    rows = tuple(
        dataclasses.replace(row, prompt=chat_prompt(tokenizer, row.prompt or ""))
        for row in data.rows
    )
    return dataclasses.replace(data, rows=rows)
