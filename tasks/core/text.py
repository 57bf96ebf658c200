"""Text helpers: HTML fragments to text, normalisation, content hashes."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import lxml.html
from lxml import etree

_WS = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+", re.UNICODE)
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "tr", "table", "section", "article", "header", "footer", "figure",
}  # fmt: skip


def tidy(text: str) -> str:
    """Collapse runs of spaces, trim lines, at most one blank line between paragraphs."""
    lines = (_WS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def looks_like_html(text: str) -> bool:
    return bool(re.search(r"<(p|div|br|span|a|img|li|h\d|strong|em|b|i)\b", text, re.I))


def html_to_text(fragment: str) -> str:
    """Readable text of an HTML fragment (feed content), paragraphs on their own lines."""
    if not fragment or not fragment.strip():
        return ""
    if not looks_like_html(fragment):
        return tidy(lxml.html.fromstring(f"<div>{fragment}</div>").text_content())
    try:
        root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (etree.ParserError, ValueError):
        return tidy(re.sub(r"<[^>]+>", " ", fragment))
    for bad in root.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    parts: list[str] = []

    def walk(el: lxml.html.HtmlElement) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        block = tag.lower() in _BLOCK_TAGS
        if block:
            parts.append("\n")
        if el.text:
            parts.append(el.text)
        for child in el:
            walk(child)
            if child.tail:
                parts.append(child.tail)
        if block:
            parts.append("\n")

    walk(root)
    return tidy("".join(parts))


def normalize_for_hash(text: str) -> str:
    """Case-, accent-form-, punctuation- and whitespace-insensitive form of a text."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(text))


def content_hash(text: str) -> str:
    """Hash of the normalised text: the same article text under two URLs hashes alike."""
    return hashlib.sha256(normalize_for_hash(text).encode("utf-8")).hexdigest()
