"""Fast token text: each token's text as it reads after other text, looked up instead of decoded.

Decoding a growing token list for every row at every step costs more than the GPU
step for small members. For byte-level BPE and SentencePiece-style tokenizers a
token's text is the same wherever it stands (given a preceding token, so leading
spaces survive), except for tokens holding part of a multi-byte character, which
decode to "\\ufffd" alone; those, and any tokenizer that fails the self-check
below, fall back to decoding.
"""
from __future__ import annotations

from functools import lru_cache

import os

_CHECK = "Hello world, 12 + 30 = 42.\n\nQuestion: Who wrote it?\tAnswer:  Twain's (1876) book."


@lru_cache(maxsize=16)
def piece_table(session) -> list[str] | None:
    """Token id -> text after another token, or None when decoding is not concatenative."""
    anchor = session.encode("a")[-1:]
    head = session.decode(anchor)
    n = len(session.tokenizer)
    fulls = session.tokenizer.batch_decode([anchor + [i] for i in range(n)], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)
    table = [f[len(head):] if f.startswith(head) else f for f in fulls] + [""] * max(0, session.vocab_size - n)
    ids = session.encode(_CHECK)
    if session.decode(anchor + ids)[len(head):] != "".join(table[i] for i in ids):
        return None
    return table


def next_piece(member, row: int, text: str, word: str, toks: list[int], t: int) -> tuple[str, str, str]:
    """(piece, text, word) after token t follows `toks` (whose text is `text`) on a prompt row.

    Usually the table's piece with text and word unchanged; near multi-byte characters the
    slow path decodes, and may rewrite the tail that earlier bytes decoded to "\\ufffd"."""
    table = piece_table(member.s)
    if table is not None and not text.endswith("\ufffd"):
        piece = table[t]
        if "\ufffd" not in piece:
            return piece, text, word
    return _extend(text, word, member.text_after(row, toks + [t]))


def _extend(text: str, word: str, full: str) -> tuple[str, str, str]:
    """A token took the decoded text from `text` to `full`: (its piece, text and word cut back to
    what it left unchanged). Usually full = text + piece, but a token that completes a multi-byte
    character turns the "\ufffd" its first bytes decoded to into that character."""
    n = len(os.path.commonprefix([text, full]))
    return full[n:], text[:n], word[:max(0, len(word) - (len(text) - n))]
