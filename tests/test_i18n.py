"""The page in the user's language: English and Simplified Chinese, chosen from Accept-Language
or the page's switch, with whole-sentence messages; and Chinese in the query syntax."""

from __future__ import annotations

import re

import pytest
import requests

from search.errors import CODES
from search.request import SearchRequest
from web.messages import MESSAGES


def fields(message: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", message))


def test_every_language_has_every_message_with_the_same_fields() -> None:
    english = MESSAGES["en"]
    for language, messages in MESSAGES.items():
        assert messages.keys() == english.keys(), language
        for key, text in messages.items():
            assert fields(text) == fields(english[key]), (language, key)


def test_every_error_code_has_a_sentence() -> None:
    """The page says each of the server's errors in its own language (web/static/app.js)."""
    sentences = {key for key in MESSAGES["en"] if key.startswith("error_")}
    assert sentences == {f"error_{code}" for code in CODES}


@pytest.mark.parametrize(
    ("accept", "cookie", "language", "label"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh", "搜索你的图片"),
        ("zh-TW", None, "zh", "搜索你的图片"),
        ("en-US,en;q=0.9", None, "en", "Search your images"),
        ("fr-FR", None, "en", "Search your images"),
        ("en-US", "zh", "zh", "搜索你的图片"),  # the page's switch wins
        ("zh-CN", "en", "en", "Search your images"),
        ("zh-CN", "klingon", "zh", "搜索你的图片"),  # an unknown choice is ignored
    ],
)
def test_the_page_speaks_the_language_asked_for(
    server: str, accept: str, cookie: str | None, language: str, label: str
) -> None:
    response = requests.get(
        f"{server}/?q=海边的日落",
        headers={"Accept-Language": accept},
        cookies={"lang": cookie} if cookie else None,
        timeout=60,
    )
    assert response.status_code == 200
    assert f'<html lang="{language}" ' in response.text
    assert label in response.text
    assert response.headers["Content-Language"] == language
    assert "Accept-Language" in response.headers["Vary"]
    assert 'value="海边的日落"' in response.text  # the query, as typed


def test_the_query_syntax_takes_chinese_terms() -> None:
    positive, negative = SearchRequest(q="猫 + 2:草地 - 狗").terms()
    assert [(term.text, term.weight) for term in positive] == [("猫", 1.0), ("草地", 2.0)]
    assert [term.text for term in negative] == ["狗"]
