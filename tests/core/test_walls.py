"""Walls are told by their marks in whatever case a site writes them."""

import pytest

from tasks.core.walls import SHORT_TEXT, detect_wall


@pytest.mark.parametrize(
    ("html", "text", "wall"),
    [
        ("<title>Just a moment...</title><div id='cf-browser-verification'>", None,
         "bot_challenge"),
        ("<h1>Please Enable JavaScript and Cookies to continue</h1>", "Checking", "bot_challenge"),
        ("<div class='CMP-Container'>We Value Your Privacy</div>", "Accept", "consent_wall"),
        ("<p>Hello</p>", "Before You Continue to Example News", "consent_wall"),
        ("<p>A short brief about the harbour.</p>", "A short brief about the harbour.", None),
        # A long article that mentions cookies is an article.
        ("<p>We value your privacy, said the baker.</p>", "cookies " * (SHORT_TEXT // 8 + 1),
         None),
    ],
)  # fmt: skip
def test_walls_are_told_by_their_marks_in_any_case(html, text, wall):
    assert detect_wall(html, text) == wall
