"""HTML sanitizing and `cid:` rewriting for bodies that reach a ticket."""

from __future__ import annotations

import pytest

from ticketflow.operators.attachment_html import link_content_ids, sanitize_html

OWN = "https://files.example.com/att/ab/cd/" + "ab" * 32


@pytest.mark.parametrize(
    ("html", "forbidden"),
    [
        ("<script>alert(1)</script><p>x</p>", "alert"),
        ("<p>x</p><SCRIPT src='https://evil.example/x.js'></SCRIPT>", "evil.example"),
        ("<svg><script>alert(2)</script></svg>", "alert"),
        ("<style>p{background:url(https://t.example/x)}</style><p>x</p>", "t.example"),
        ("<img src=x onerror=alert(1)>", "onerror"),
        ("<body onload='steal()'><p>x</p></body>", "onload"),
        ("<p onclick='x()' onmouseover='y()'>x</p>", "onclick"),
        ("<a href='javascript:alert(1)'>go</a>", "javascript"),
        ("<a href='JaVaScRiPt:alert(1)'>go</a>", "alert"),
        ("<a href='  javascript:alert(1)'>go</a>", "alert"),
        ("<a href='vbscript:msgbox(1)'>go</a>", "vbscript"),
        ("<a href='data:text/html;base64,PHNjcmlwdD4='>go</a>", "data:"),
        ("<iframe src='https://evil.example/frame'></iframe>", "iframe"),
        ("<object data='https://evil.example/x.swf'></object>", "object"),
        ("<embed src='https://evil.example/x.swf'>", "embed"),
        ("<form action='https://evil.example/login'><input name=p></form>", "form"),
        ("<base href='https://evil.example/'><a href='x'>x</a>", "base"),
        ("<meta http-equiv='refresh' content='0;url=https://evil.example'>", "refresh"),
        ("<p>x</p><!-- tracking id 42 -->", "tracking"),
        ("<title>Phish</title><p>x</p>", "Phish"),
        ("<a href='file://evil.example/share/x'>x</a>", "file:"),
        ("<img src='file:///etc/passwd'>", "passwd"),
        ("<a href='/relative/path'>x</a>", "relative"),
        ("<a href='//evil.example/x'>x</a>", "evil.example"),
    ],
)
def test_sanitize_removes(html: str, forbidden: str) -> None:
    assert forbidden.lower() not in sanitize_html(html).lower()


def test_sanitize_drops_remote_image_keeps_alt() -> None:
    cleaned = sanitize_html('<img src="https://tracker.example/open.gif?u=1" alt="logo">')
    assert "tracker.example" not in cleaned
    assert 'alt="logo"' in cleaned


def test_sanitize_keeps_own_stored_image() -> None:
    cleaned = sanitize_html(f'<img src="{OWN}" alt="screenshot">', [OWN])
    assert f'src="{OWN}"' in cleaned


def test_sanitize_keeps_own_file_link_only() -> None:
    own = "file:///var/lib/ticketflow/attachments/ab/cd/" + "ab" * 32
    cleaned = sanitize_html(f'<img src="{own}"><a href="file:///etc/shadow">x</a>', [own])
    assert own in cleaned
    assert "shadow" not in cleaned


def test_sanitize_keeps_own_relative_link_only() -> None:
    own = "/attachments/ab/cd/" + "ab" * 32
    cleaned = sanitize_html(f'<img src="{own}"><img src="/logout">', [own])
    assert own in cleaned
    assert "/logout" not in cleaned


def test_sanitize_keeps_unresolved_cid() -> None:
    assert 'src="cid:logo@example.com"' in sanitize_html('<img src="cid:logo@example.com">')


def test_sanitize_keeps_links_with_rel() -> None:
    cleaned = sanitize_html('<a href="https://help.example.com/a">help</a>')
    assert 'href="https://help.example.com/a"' in cleaned
    assert 'rel="noopener noreferrer"' in cleaned
    assert 'href="mailto:a@example.com"' in sanitize_html('<a href="mailto:a@example.com">m</a>')


def test_sanitize_filters_style_properties() -> None:
    cleaned = sanitize_html(
        '<p style="color: red; background-image: url(https://t.example/p.png); '
        'position: fixed; display: none; font-weight: bold">x</p>'
    )
    assert "color:red" in cleaned.replace(" ", "")
    assert "font-weight:bold" in cleaned.replace(" ", "")
    for removed in ("t.example", "position", "display"):
        assert removed not in cleaned


@pytest.mark.parametrize(
    "style",
    [
        "width:expression(alert(1)); color:red",
        "width: EXPRESSION (alert(1))",
        r"width:expr\65ssion(alert(1))",
        r"width:expr\000065 ssion(alert(1))",
        "width:expr/* x */ession(alert(1))",
        "width:expr&#101;ssion(alert(1))",
    ],
)
def test_sanitize_drops_style_with_css_expression(style: str) -> None:
    cleaned = sanitize_html(f'<p style="{style}">x</p>')
    assert cleaned == "<p>x</p>"


def test_sanitize_keeps_mail_layout() -> None:
    cleaned = sanitize_html(
        '<table width="600" cellpadding="4" bgcolor="#eeeeee"><tr><td valign="top" '
        'width="50%"><font color="#333" face="Arial">Order <b>1204</b></font></td></tr></table>'
    )
    for kept in ('width="600"', 'cellpadding="4"', 'valign="top"', 'face="Arial"', "<b>1204</b>"):
        assert kept in cleaned


def test_sanitize_keeps_text() -> None:
    cleaned = sanitize_html("<div><p>The checkout &amp; the cart fail.</p></div>")
    assert "The checkout &amp; the cart fail." in cleaned
    assert sanitize_html("") == ""


@pytest.mark.parametrize(
    "html",
    [
        '<img src="cid:logo@example.com">',
        "<img src='cid:logo@example.com'>",
        "<img src=cid:logo@example.com>",
        '<img SRC = "cid:logo@example.com">',
        '<img src="cid:logo%40example.com">',
        '<img src="cid:LOGO@EXAMPLE.COM">',
        '<td background="cid:logo@example.com">',
        '<a href="cid:logo@example.com">',
    ],
)
def test_link_content_ids_rewrites(html: str) -> None:
    rewritten = link_content_ids(html, {"logo@example.com": OWN})
    assert OWN in rewritten
    assert "cid:" not in rewritten


def test_link_content_ids_leaves_unknown() -> None:
    html = '<img src="cid:other@example.com"><img src="cid:logo@example.com">'
    rewritten = link_content_ids(html, {"logo@example.com": OWN})
    assert 'src="cid:other@example.com"' in rewritten
    assert f'src="{OWN}"' in rewritten


def test_link_content_ids_escapes_link() -> None:
    rewritten = link_content_ids('<img src="cid:a@b">', {"a@b": 'https://x.example/?a=1&b="2"'})
    assert 'src="https://x.example/?a=1&amp;b=&quot;2&quot;"' in rewritten


def test_link_content_ids_ignores_text_mentions() -> None:
    html = "<p>Our template uses cid:logo@example.com for the logo.</p>"
    assert link_content_ids(html, {"logo@example.com": OWN}) == html
