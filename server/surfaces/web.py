"""The chat page and the browser client, served from package data.

``GET /`` is the chat page, under a strict Content-Security-Policy: scripts
and styles from this origin only, no inline code, connections to this origin
only, and nothing may frame it. ``/static/`` holds the page's script and style
and ``tokenwire.js``, the ES module client. Files are read once, at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


def _load() -> dict[str, Asset]:
    root = resources.files("tokenwire.web")
    page = root / "page"
    files = {
        "/": (page / "index.html", "text/html; charset=utf-8"),
        "/static/app.js": (page / "app.js", "text/javascript; charset=utf-8"),
        "/static/style.css": (page / "style.css", "text/css; charset=utf-8"),
        "/static/tokenwire.js": (root / "tokenwire.js", "text/javascript; charset=utf-8"),
        "/static/tokenwire.d.ts": (root / "tokenwire.d.ts", "text/plain; charset=utf-8"),
        # Markdown and its sanitizer, vendored (page/vendor/README.md): no CDN.
        "/static/vendor/marked.esm.js": (
            page / "vendor" / "marked.esm.js",
            "text/javascript; charset=utf-8",
        ),
        "/static/vendor/purify.es.mjs": (
            page / "vendor" / "purify.es.mjs",
            "text/javascript; charset=utf-8",
        ),
    }
    assets = {}
    for path, (file, content_type) in files.items():
        headers: tuple[tuple[str, str], ...] = _SECURITY_HEADERS
        if path == "/":
            headers = (("Content-Security-Policy", CONTENT_SECURITY_POLICY), *headers)
        assets[path] = Asset(file.read_bytes(), content_type, headers)
    return assets


ASSETS: Final = _load()
