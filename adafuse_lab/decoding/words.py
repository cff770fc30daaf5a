"""Where words begin. Words are the unit every tokenizer agrees on.

A member decodes token by token; a token starts a new word when the word so far
holds a letter or digit and the token's text begins with whitespace (or the word
so far ends with it, e.g. a ".\n" token). Pure punctuation ("+", "=", "-") thus
joins the word after it, and newlines stay inside the committed text as the
leading whitespace of the next word. Boundaries fall on the proposer's token
boundaries, so a single member reproduces its own greedy decoding exactly.
"""
from __future__ import annotations


def has_content(word: str) -> bool:
    return any(ch.isalnum() for ch in word)


def starts_new_word(word: str, piece: str) -> bool:
    """Does a token with text `piece` begin a new word after the current `word`?"""
    if not piece or not has_content(word):
        return False
    return piece[0].isspace() or word[-1].isspace()


def split_words(text: str) -> list[str]:
    """Split text into words by the same rule, one character at a time (for analysis and tests)."""
    words: list[str] = []
    for ch in text:
        if words and not starts_new_word(words[-1], ch):
            words[-1] += ch
        else:
            words.append(ch)
    return words


def more_words(last: str, text: str) -> tuple[int, str]:
    """Appending `text` to an answer whose last word is `last`: (how many words the answer
    gains, its new last word). Words depend only on the word before them, so this counts as
    split_words on the whole answer would, without re-reading it."""
    words = split_words(last + text)
    return len(words) - (1 if last else 0), words[-1] if words else last


def official_words(text: str) -> str:
    """The official code's text of a span: its whitespace-separated words joined by one space,
    after one space (newlines and runs of spaces dropped); whitespace alone stays as it is."""
    words = text.split()
    return " " + " ".join(words) if words else text
