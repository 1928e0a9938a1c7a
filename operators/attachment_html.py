"""HTML bodies made safe to show in a ticket, with inline images pointing at stored files.

`link_content_ids` rewrites `cid:` references (RFC 2392) in `src`, `href` and
`background` attributes to the links of the stored files whose Content-ID they
name. A reference to a file that was not stored stays a `cid:` URL, which a
browser does not load.

`sanitize_html` cleans a body with nh3 (the Rust ammonia sanitizer):

- `script`, `style` and `title` elements are removed with their content.
  Other elements outside an allow list (nh3's defaults plus `font`) are
  removed but their text is kept. Among them are `iframe`, `object`, `embed`,
  `form`, `base` and `meta`.
- Attributes outside an allow list are removed, so every event handler
  (`onerror`, `onclick`, ...) goes. The list adds what mail layouts use to
  nh3's defaults: `style`, `title`, `dir`, `lang`, table widths, colors and
  padding.
- `style` keeps only layout, font, color and border properties. Nothing that
  loads a URL (`background`, `background-image`, `list-style-image`,
  `content`), positions or hides content is kept, so a hidden text shows.
  A `style` that contains a CSS `expression(...)` (old Internet Explorer runs
  it as script), also when written with escapes or comments, is removed whole.
- URLs in `href` and `src` keep only the schemes http, https, mailto, tel and
  cid. `javascript:`, `data:`, `vbscript:` and `file:` links are removed, and
  so are relative and protocol-relative URLs, because a mail has no base URL
  to resolve them against.
- Remote images are dropped. An `img` keeps its `alt` text but loses a `src`
  that is neither a link to one of the message's own stored files nor a
  `cid:` reference, because loading it would tell the sender when and from
  where an agent read the mail. Links (`a href`) to remote pages stay, with
  `rel="noopener noreferrer"`.
- Comments are removed.

The message's own stored files may also be `file://` links (an attachment store
without a base URL) or relative links; only those exact links pass.
"""

from __future__ import annotations

import functools
import html as html_escaping
import re
import threading
from collections.abc import Collection, Mapping
from urllib.parse import unquote

import nh3

_CID_REFERENCE = re.compile(
    r"""(\b(?:src|href|background)\s*=\s*)(["']?)cid:([^"'\s>]+)""", re.IGNORECASE
)

# CSS comments and escapes ("\65" or "\e" for "e"), removed before looking for expression(.
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?|\\(.)", re.DOTALL)
_CSS_EXPRESSION = re.compile(r"expression\s*\(")

_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
_TAGS = frozenset(nh3.ALLOWED_TAGS | {"font"})
_CONTENT_REMOVED_TAGS = frozenset({"script", "style", "title"})
_EXTRA_ATTRIBUTES = {
    "*": {"style", "title", "dir", "lang"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor"},
    "td": {"width", "height", "bgcolor", "valign", "nowrap"},
    "th": {"width", "height", "bgcolor", "valign", "nowrap"},
    "tr": {"bgcolor", "valign"},
    "font": {"color", "face", "size"},
    "img": {"border", "title"},
}
_ATTRIBUTES = {
    tag: set(nh3.ALLOWED_ATTRIBUTES.get(tag, set())) | _EXTRA_ATTRIBUTES.get(tag, set())
    for tag in set(nh3.ALLOWED_ATTRIBUTES) | set(_EXTRA_ATTRIBUTES)
}
_STYLE_PROPERTIES = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style",
        "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
        "text-transform", "letter-spacing", "word-spacing", "line-height", "white-space",
        "vertical-align", "direction", "width", "height", "max-width", "min-width",
        "max-height", "min-height", "table-layout", "list-style-type", "border",
        "border-collapse", "border-spacing", "border-radius", "border-color",
        "border-style", "border-width",
    }
    | {f"{box}-{side}" for box in ("margin", "padding", "border") for side in
       ("top", "right", "bottom", "left")}
    | {"margin", "padding"}
)


def link_content_ids(html: str, links: Mapping[str, str]) -> str:
    """Replace each `cid:` reference whose Content-ID is in `links` with that link.

    `links` maps a Content-ID as the event lists it (no angle brackets) to a
    URL. A reference matches exactly after percent-decoding, else ignoring case.
    """
    if not links or "cid:" not in html.lower():
        return html
    folded = {content_id.lower(): url for content_id, url in links.items()}

    def replace(found: re.Match[str]) -> str:
        content_id = unquote(found.group(3)).strip("<>")
        url = links.get(content_id) or folded.get(content_id.lower())
        if url is None:
            return found.group(0)
        return found.group(1) + found.group(2) + html_escaping.escape(url, quote=True)

    return _CID_REFERENCE.sub(replace, html)


# The links of the message being cleaned, for the callbacks of the shared cleaners.
_current = threading.local()


def sanitize_html(html: str, own_links: Collection[str] = ()) -> str:
    """Return `html` cleaned for display (see the module docstring).

    `own_links` are the links of this message's stored files: the only `img`
    sources besides `cid:` references, and the only `file:` or relative URLs
    kept. Safe to call from several threads.
    """
    if not html:
        return html
    own = frozenset(own_links)
    _current.own = own
    try:
        return _cleaner(any(link.startswith("file:") for link in own)).clean(html)
    finally:
        _current.own = frozenset()


@functools.cache
def _cleaner(allow_file_links: bool) -> nh3.Cleaner:
    """Build each cleaner once, because building one takes longer than cleaning a mail body."""
    schemes = set(_URL_SCHEMES) | ({"file"} if allow_file_links else set())
    return nh3.Cleaner(
        tags=set(_TAGS),
        clean_content_tags=set(_CONTENT_REMOVED_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        attribute_filter=_keep_safe_url,
        url_schemes=schemes,
        filter_style_properties=set(_STYLE_PROPERTIES),
        url_relative=_keep_own_relative_url,
        strip_comments=True,
    )


def _own_links() -> frozenset[str]:
    own: frozenset[str] = getattr(_current, "own", frozenset())
    return own


def _keep_own_relative_url(url: str) -> str | None:
    return url if url in _own_links() else None


def _keep_safe_url(element: str, attribute: str, value: str) -> str | None:
    if attribute == "style":
        return None if _has_css_expression(value) else value
    if attribute not in ("src", "href"):
        return value
    if value in _own_links():
        return value
    if value.lower().startswith("file:"):
        return None
    if element == "img" and attribute == "src" and not value.lower().startswith("cid:"):
        return None  # a remote image
    return value


def _has_css_expression(style: str) -> bool:
    """Tell whether a style attribute calls expression(), however it is escaped."""
    text = _CSS_COMMENT.sub("", style)
    text = _CSS_ESCAPE.sub(_css_unescaped, text)
    return bool(_CSS_EXPRESSION.search(text.lower()))


def _css_unescaped(found: re.Match[str]) -> str:
    if found.group(1) is None:
        return found.group(2)
    code = int(found.group(1), 16)
    return chr(code) if 0 < code <= 0x10FFFF else ""
