"""Word boundaries (decoding/words.py): the unit every tokenizer agrees on."""
import pytest
from hypothesis import given, settings, strategies as st

from adafuse_lab.decoding.words import has_content, split_words, starts_new_word


@pytest.mark.parametrize("word, piece, expected", [
    ("Hello", " world", True),     # whitespace-led token after a word
    ("Hello", "\n", True),         # a newline starts the next word (and stays in the text)
    ("Hello\n", "World", True),    # the word so far ends with whitespace (a ".\n" token)
    ("Hello", "world", False),     # no whitespace: same word
    ("Hello", ",", False),         # punctuation joins the word before
    ("Hello", "", False),          # an empty piece never starts a word
    ("", "Hello", False),          # nothing so far
    ("+", " 3", False),            # pure punctuation so far: it joins the word after it
    ("  ", "x", False),            # only whitespace so far
    ("\n", " x", False),
    ("3", " +", True),
    ("你好", "世界", False),         # CJK without spaces: one word
    ("你好", " 世界", True),
    ("x", "\t", True),
])
def test_starts_new_word(word, piece, expected):
    assert starts_new_word(word, piece) is expected


@pytest.mark.parametrize("text, words", [
    ("Hello world", ["Hello", " world"]),
    ("x = 3 + 4", ["x", " = 3", " + 4"]),               # "=", "+" join the word after them
    ("- item one", ["- item", " one"]),
    ("Hi!!! ok.", ["Hi!!!", " ok."]),                    # trailing punctuation joins the word before
    ("line one\n\nline two\n", ["line", " one", "\n\nline", " two", "\n"]),  # newlines kept
    ("a\tb", ["a", "\tb"]),
    ("Answer: 72.\nQuestion:", ["Answer:", " 72.", "\nQuestion:"]),
    ("  leading", ["  leading"]),
    ("你好世界", ["你好世界"]),                            # CJK without spaces stays one word
    ("你好 世界", ["你好", " 世界"]),
    ("🙂 ok 🙂", ["🙂 ok", " 🙂"]),                      # an emoji has no letters: it joins like punctuation
    ("", []),
    ("   ", ["   "]),
])
def test_split_words(text, words):
    assert split_words(text) == words


def test_has_content():
    assert has_content("a") and has_content(" 7") and has_content("é") and has_content("你")
    assert not has_content("") and not has_content(" +\n") and not has_content("🙂")


TEXT = st.text(alphabet=st.one_of(
    st.characters(),                                 # any code point (emoji, CJK, controls, ...)
    st.sampled_from([" ", "\t", "\n", "\r", "🙂", "你", ".", "+", "a", "7"]),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_split_words_loses_nothing(text):
    words = split_words(text)
    assert "".join(words) == text
    assert all(words)


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_split_words_boundaries_follow_the_rule(text):
    words = split_words(text)
    for w in words:
        assert split_words(w) == [w]  # no boundary inside a word
    for prev, w in zip(words, words[1:]):
        assert starts_new_word(prev, w[0])  # and one at every cut


def test_more_words_counts_as_splitting_the_whole_answer():
    """Counting on from the last word after each appended piece gives split_words' count of the
    whole answer, wherever the pieces are cut (mid-word, at spaces, newlines, punctuation)."""
    import random
    from adafuse_lab.decoding.words import more_words
    rng = random.Random(0)
    alphabet = ["a", "b", "7", " ", "\n", ".", "+", "=", "é", " x", ".\n", "  "]
    for _ in range(300):
        answer = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(answer) + 1), k=min(len(answer) + 1, rng.randint(1, 6))))
        pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)])]
        count, last = 0, ""
        for piece in pieces:
            added, last = more_words(last, piece)
            count += added
        assert count == len(split_words(answer)), (answer, pieces)
