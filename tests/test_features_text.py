"""Text cleaning as the notebook did it: each step, bad inputs, properties, stopword fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.features import text
from recsys.features.text import (
    MAX_TEXT_CHARS,
    clean_product,
    clean_text,
    drop_numbers,
    english_stopwords,
    product_text,
    remove_stopwords,
    strip_html,
    to_ascii,
    tokenize,
)


def test_nltk_stopwords_are_used_in_tests():
    assert text.stopwords_source() == "nltk"
    words = english_stopwords()
    assert {"the", "and", "don", "t", "off"} <= words
    assert len(words) == 198  # NLTK 3.10's English list in ../shared/nltk_data


# --- each step -------------------------------------------------------------------------------


def test_strip_html():
    assert strip_html("<b>A&amp;B</b>") == " A&B "
    assert strip_html('<a href="x">link</a><br/>next') == " link  next"
    assert strip_html("&lt;b&gt;") == "<b>"  # escaped markup is text, as an HTML parser shows it
    assert strip_html("caf&eacute; &#169; &nbsp;") == "caf\u00e9 \u00a9 \u00a0"
    assert strip_html("a < b and c > d") == "a < b and c > d"  # no tag: nothing removed


def test_to_ascii():
    assert to_ascii("caf\u00e9 na\u00efve \u65e5\u672c ok") == "caf nave  ok"


def test_tokenize():
    assert tokenize("don't stop-me now_ok 3.5") == ["don", "t", "stop", "me", "now_ok", "3", "5"]


def test_remove_stopwords():
    assert remove_stopwords(["the", "red", "and", "shoe"], english_stopwords()) == ["red", "shoe"]


def test_drop_numbers():
    assert drop_numbers(["100", "x100", "2nd", "007", "a1"]) == ["x100", "2nd", "a1"]


def test_clean_text_all_steps():
    raw = "<p>Gift card for the <b>Best</b> caf&eacute; &amp; bar!</p>"
    assert clean_text(raw) == ["gift", "card", "best", "caf", "bar"]
    assert clean_text("The 2nd x100 100% cotton") == ["2nd", "x100", "cotton"]
    assert clean_text("Don't STOP me_now") == ["stop", "me_now"]


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   \n\t",
        "<div><br/></div>",
        "12345 678 9",
        "\u00c4\u00d6\u00dc \u65e5\u672c",
        "&amp; &lt; &gt;",
        "the and of is",
        "<p>123</p> &nbsp; \u00e9",
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "only-html",
        "only-numbers",
        "only-non-ascii",
        "only-entities",
        "only-stopwords",
        "mixed-nothing",
    ],
)
def test_texts_that_clean_to_nothing(raw):
    assert clean_text(raw) == []


def test_product_text_choice_as_the_notebook():
    pick = product_text(feature_text="soft cotton", description="a shirt", categories=["Shirts"])
    assert (pick.text, pick.source, pick.capped) == ("soft cotton", "feature", False)
    pick = product_text(feature_text="  ", description="a shirt", categories=["Shirts"])
    assert (pick.text, pick.source) == ("a shirt", "description")
    pick = product_text(feature_text=None, description=None, categories=["Gift Cards", "Cards"])
    assert (pick.text, pick.source) == ("Gift Cards Cards", "category")
    pick = product_text(feature_text=None, description=None, categories=None, title="T")
    assert (pick.text, pick.source) == ("", "none")


def test_product_text_title_option_and_movies():
    pick = product_text(
        feature_text="soft",
        description=None,
        categories=None,
        title="Shirt",
        brand="Acme",
        with_title=True,
    )
    assert pick.text == "Shirt Acme soft"
    movie = product_text(
        feature_text="funny\nclassic",
        description=None,
        categories=["Comedy", "Drama"],
        title="Toy Story (1995)",
        is_movie=True,
    )
    assert (movie.text, movie.source) == ("Toy Story (1995) Comedy Drama funny\nclassic", "movie")
    assert clean_product(movie) == ["toy", "story", "comedy", "drama", "funny", "classic"]


def test_category_fallback_when_text_cleans_to_nothing():
    pick = product_text(feature_text="<br/> 100 &amp;", description=None, categories=["Gift Cards"])
    assert pick.source == "feature"
    assert clean_text(pick.text) == []
    assert clean_product(pick) == ["gift", "cards"]


def test_enormous_text_is_capped():
    huge = "word " * 10_000  # 50,000 characters
    pick = product_text(feature_text=None, description=huge, categories=None)
    assert pick.capped and len(pick.text) == MAX_TEXT_CHARS
    assert clean_text(pick.text) == ["word"] * (MAX_TEXT_CHARS // 5)


# --- properties ------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_clean_text_properties(raw):
    tokens = clean_text(raw)
    words = english_stopwords()
    for token in tokens:
        assert token.isascii() and token == token.lower()
        assert token.replace("_", "a").isalnum()
        assert not token.isdigit()
        assert token not in words
    # cleaning is idempotent on its own output
    assert clean_text(" ".join(tokens)) == tokens


@given(
    st.lists(
        st.sampled_from(["red", "shoe", "<b>", "</b>", "&amp;", "42", "the", "\u00e9"]), max_size=30
    )
)
def test_clean_text_keeps_content_words_in_order(parts):
    expected = [p for p in parts if p in ("red", "shoe")]
    assert clean_text(" ".join(parts)) == expected


# --- stopword fallback -----------------------------------------------------------------------


def test_stopword_fallback_without_nltk_corpus(tmp_path):
    """With no NLTK corpus reachable, the stop-words package's list is used, with one warning."""
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path)}
    code = (
        "import logging; logging.basicConfig(format='%(levelname)s %(message)s');"
        "import nltk; nltk.data.path[:] = [p for p in nltk.data.path if p.startswith("
        f"{str(tmp_path)!r})];"
        "from recsys.features import text;"
        "print(text.stopwords_source(), len(text.english_stopwords()));"
        "print(text.clean_text('The cat is able to sit on the mat'));"
        "text.english_stopwords()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stop-words 1333", "['cat', 'sit', 'mat']"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "using the stop-words package's English list" in warnings[0]
