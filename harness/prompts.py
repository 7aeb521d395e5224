"""Prompts of real text at any requested length.

The shipped text (`data/prompt.txt`, about a thousand tokens of English with a Chinese
paragraph) is repeated as often as needed, so every suite gets real tokens — not random ids —
at any length up to the model's positions.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TEXT_FILE = Path(__file__).resolve().parent / "data" / "prompt.txt"


@cache
def prompt_text() -> str:
    return TEXT_FILE.read_text()


def prompt_ids(tokenizer, length: int, offset: int = 0) -> list[int]:
    """Exactly `length` token ids of the shipped text, repeated as needed, starting `offset`
    tokens in (so that the rows of a batch can differ)."""
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, not {length}")
    ids = tokenizer(prompt_text(), add_special_tokens=False).input_ids
    start = offset % len(ids)
    return (ids * ((start + length) // len(ids) + 1))[start:start + length]


def prompt_string(tokenizer, length: int, offset: int = 0) -> str:
    """Text that the tokenizer, truncating to `length`, turns into exactly `length` tokens.

    The text ends a few tokens after the cut, so that re-tokenising it reaches the cut however
    the last words merge.
    """
    text = tokenizer.decode(prompt_ids(tokenizer, length + 4, offset))
    count = len(tokenizer(text, truncation=True, max_length=length).input_ids)
    if count != length:
        raise ValueError(f"the shipped prompt text gives {count} tokens, not {length}, "
                         "with this tokenizer")
    return text
