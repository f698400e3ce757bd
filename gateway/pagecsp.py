"""The Content-Security-Policy of a self-contained page (the playground, the operator console):
its own inline scripts and styles allowed by hash, nothing from anywhere else, requests only to
its own origin, no frame may embed it, no form posts anywhere."""

from __future__ import annotations

import base64
import hashlib
import re

# <script> without a type (or a JavaScript one) runs; <script type="application/json"> is data.
_SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S | re.I)
_STYLE = re.compile(r"<style[^>]*>(?P<body>.*?)</style>", re.S | re.I)
_DATA_TYPE = re.compile(r"""\btype\s*=\s*["']?application/json""", re.I)


def inline_scripts(html: str) -> list[str]:
    """The bodies of the page's inline scripts that run (data blocks excluded)."""
    return [
        m["body"]
        for m in _SCRIPT.finditer(html)
        if not _DATA_TYPE.search(m["attrs"]) and "src=" not in m["attrs"]
    ]


def inline_styles(html: str) -> list[str]:
    return [m["body"] for m in _STYLE.finditer(html)]


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def csp(html: str) -> str:
    """A strict policy for ``html``: its own inline script and style by hash, nothing else of
    anywhere; requests only to the page's origin (``connect-src 'self'``)."""
    scripts = " ".join(_hash(s) for s in inline_scripts(html)) or "'none'"
    styles = " ".join(_hash(s) for s in inline_styles(html)) or "'none'"
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        f"style-src {styles}; "
        "connect-src 'self'; "
        "img-src 'self' data:; "
        "base-uri 'none'; "
        "form-action 'none'; "
        "frame-ancestors 'none'"
    )
