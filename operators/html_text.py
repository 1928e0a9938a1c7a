"""The readable text of an HTML body, for systems and hashes that take plain text.

Scripts, styles, the head and the title are left out. Each block element
(paragraph, div, line break, list item, table row, quote, heading) starts a
new line, and runs of whitespace inside a line become one space.

    >>> html_text("<p>Hello <b>there</b></p><script>x()</script><div>Line&nbsp;2</div>")
    'Hello there\\nLine 2'
"""

from __future__ import annotations

from html.parser import HTMLParser


class _TextCollector(HTMLParser):
    """Collect the text of an HTML document, without scripts and styles, a line per block."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "blockquote",
                         "h1", "h2", "h3", "h4", "h5", "h6"})
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_text(html: str) -> str:
    """Return the readable text of `html`, one line per block; "" when there is none."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    lines = (" ".join(line.split()) for line in "".join(collector.parts).splitlines())
    return "\n".join(line for line in lines if line)

