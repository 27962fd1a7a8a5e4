"""HTML to plain text for the HTML books (cfi-en, abs-guide), on the standard library's parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
         "track", "wbr"}
_SKIP = {"head", "script", "style", "title", "noscript"}
# Tags that end a paragraph (two newlines) or a line (one newline).
_PARAGRAPH = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "blockquote", "ul", "ol",
              "dl", "center", "hr", "address", "section", "article"}
_LINE = {"br", "li", "tr", "dt", "dd"}
_LISTING_LINE_NUMBER = re.compile(r"(?m)^ *\d+\xa0")


def charset_of(html_bytes: bytes, default: str = "utf-8") -> str:
    """The charset an HTML file declares in a ``<meta>`` tag, or ``default``."""
    m = re.search(rb"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", html_bytes[:4096], re.I)
    return m.group(1).decode("ascii").lower() if m else default


class _TextExtractor(HTMLParser):
    def __init__(self, skip_classes: frozenset[str], strip_listing_numbers: bool):
        super().__init__(convert_charrefs=True)
        self.skip_classes = skip_classes
        self.strip_listing_numbers = strip_listing_numbers
        self.out: list[str] = []
        self.trailing_newlines = 2  # the start of the text counts as a paragraph break
        self.skip_stack: list[str] = []  # open tags of a skipped element (its tag name, repeated per nesting)
        self.skip_tag: str | None = None
        self.pre_depth = 0
        self.pre_buffer: list[str] = []

    # --- output helpers -------------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.trailing_newlines or (self.out and self.out[-1].endswith(" ")):
            text = text.lstrip(" ")
            if not text:
                return
        self.out.append(text)
        stripped = text.rstrip("\n")
        self.trailing_newlines = len(text) - len(stripped) if stripped else self.trailing_newlines + len(text)

    def _break(self, n: int) -> None:
        if self.out and self.trailing_newlines == 0:
            self.out[-1] = self.out[-1].rstrip(" ")
        while self.trailing_newlines < n:
            self.out.append("\n")
            self.trailing_newlines += 1

    # --- parser callbacks ------------------------------------------------------------------------
    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_stack.append(tag)
            return
        classes = set((dict(attrs).get("class") or "").upper().split())
        if tag in _SKIP or (classes & self.skip_classes and tag not in _VOID):
            self.skip_tag, self.skip_stack = tag, [tag]
            return
        if tag == "pre":
            self._break(2)
            self.pre_depth += 1
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _LINE:
            self._break(1)

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and (tag in _LINE or tag == "hr"):
            self._break(1 if tag in _LINE else 2)

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_stack.pop()
                if not self.skip_stack:
                    self.skip_tag = None
            return
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
            if not self.pre_depth:
                self._flush_pre()
                self._break(2)
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _LINE:
            self._break(1)

    def handle_data(self, data):
        if self.skip_tag is not None:
            return
        if self.pre_depth:
            self.pre_buffer.append(data)
            return
        text = re.sub(r"\s+", " ", data).replace("\xa0", " ")
        self._emit(text)

    def _flush_pre(self) -> None:
        text = "".join(self.pre_buffer)
        self.pre_buffer = []
        if self.strip_listing_numbers:
            text = _LISTING_LINE_NUMBER.sub("", text)
        text = text.replace("\xa0", " ").strip("\n")
        if text:
            self.out.append(text)
            self.trailing_newlines = 0

    def text(self) -> str:
        if self.pre_depth:
            self._flush_pre()
        return "".join(self.out)


def html_to_text(html: str, skip_classes=("NAVHEADER", "NAVFOOTER"), strip_listing_numbers: bool = False) -> str:
    """Readable text from an HTML page: block tags become line/paragraph breaks, ``<pre>`` keeps its
    layout, ``<head>``/scripts/styles and elements whose class is in ``skip_classes`` (navigation bars)
    are dropped. ``strip_listing_numbers`` removes the ``"  12&nbsp;"`` line numbers of DocBook listings.
    """
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    parser = _TextExtractor(frozenset(c.upper() for c in skip_classes), strip_listing_numbers)
    parser.feed(html)
    parser.close()
    return parser.text()
