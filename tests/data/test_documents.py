"""Text cleaning and HTML extraction."""

import pytest

from ovq.data.documents import clean_text, decode_bytes, normalize_text, sha256_text, strip_gutenberg
from ovq.data.html_text import charset_of, html_to_text

MODERN = """The Project Gutenberg eBook of Tiny Book
This eBook is for the use of anyone anywhere.
*** START OF THE PROJECT GUTENBERG EBOOK TINY BOOK ***

Chapter 1

It was a dark night.

*** END OF THE PROJECT GUTENBERG EBOOK TINY BOOK ***
Section 5. General Information About Project Gutenberg electronic works
"""

OLD = """Project Gutenberg's Etext of Tiny Book
**Welcome To The World of Free Plain Vanilla Electronic Texts**
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

Chapter 1

It was a dark night.

End of the Project Gutenberg EBook of Tiny Book
"""


@pytest.mark.parametrize("text", [MODERN, OLD])
def test_strip_gutenberg_keeps_only_the_book(text):
    assert clean_text(text) == "Chapter 1\n\nIt was a dark night.\n"


def test_strip_gutenberg_leaves_other_text_alone():
    text = "A Project Gutenberg fan wrote this.\n*** not a marker ***\n"
    assert strip_gutenberg(text) == text
    assert clean_text(text, gutenberg=False) == clean_text(text)


def test_normalize_text():
    assert normalize_text("\ufeffa  \r\nb\rc\t\n\n\n\n\n\nd   ") == "a\nb\nc\n\n\nd\n"
    assert normalize_text(" \n\n ") == ""
    with pytest.raises(TypeError, match="text must be a str"):
        normalize_text(b"bytes")


def test_decode_bytes_falls_back():
    assert decode_bytes("café".encode()) == ("café", "utf-8-sig")
    assert decode_bytes("\ufeffx".encode()) == ("x", "utf-8-sig")
    assert decode_bytes("café".encode("cp1252")) == ("café", "cp1252")
    assert decode_bytes(b"\x81\x8d") == ("\x81\x8d", "latin-1")  # undefined in cp1252


def test_sha256_text():
    assert sha256_text("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_html_to_text_blocks_pre_and_skipped_elements():
    html = """<html><head><title>T</title><style>p {color: red}</style></head><body>
    <div class="NAVHEADER"><table><tr><td><a href="x.html">Prev</a></td></tr></table></div>
    <h1>Chapter&nbsp;1</h1><p>Some   <i>spaced</i>
       text &amp; more.</p><p>Line one<br>line two</p>
    <pre class="PROGRAMLISTING">   1&nbsp;echo "a"
   2&nbsp;  exit 0</pre>
    <ul><li>first</li><li>second</li></ul>
    <script>var x = 1;</script>
    <div class="navfooter"><a href="n.html">Next</a></div></body></html>"""
    text = html_to_text(html, strip_listing_numbers=True)
    assert text == ('Chapter 1\n\nSome spaced text & more.\n\nLine one\nline two\n\necho "a"\n  exit 0\n\n'
                    'first\nsecond\n\n')
    assert "Prev" not in text and "Next" not in text and "color" not in text and "var x" not in text
    kept = html_to_text(html)
    assert '1 echo "a"' in kept and "Next" not in kept


def test_html_charset():
    assert charset_of(b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">') == "iso-8859-1"
    assert charset_of(b"<p>none</p>", default="cp1252") == "cp1252"
    with pytest.raises(TypeError, match="html must be a str"):
        html_to_text(b"<p>x</p>")
