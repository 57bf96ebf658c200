"""Text helpers: HTML fragments to text, normalisation, content hashes."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import lxml.html
from lxml import etree

_WS = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SCRIPTS = re.compile(r"<(script|style|noscript)\b.*?(</\1\s*>|$)", re.I | re.S)
_WORD = re.compile(r"\w+", re.UNICODE)
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "tr", "table", "section", "article", "header", "footer", "figure",
}  # fmt: skip


def tidy(text: str) -> str:
    """Collapse runs of spaces, trim lines, at most one blank line between paragraphs."""
    lines = (_WS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def html_to_text(fragment: str) -> str:
    """Readable text of an HTML fragment (feed content), paragraphs on their own lines."""
    if not fragment or not fragment.strip():
        return ""
    if "<" not in fragment and "&" not in fragment:
        return tidy(fragment)
    # Scripts and styles go first, whatever the markup around them; lxml also refuses
    # XML-incompatible characters.
    fragment = _CONTROL.sub("", _SCRIPTS.sub(" ", fragment))
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
