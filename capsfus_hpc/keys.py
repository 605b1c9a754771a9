"""Dedup keys: the form in which two rows count as the same image or the same caption."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_SPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_url(url: str) -> str:
    """Scheme and host lower-cased, default port, fragment and trailing slash dropped.

    The path and query keep their case: servers treat /A.jpg and /a.jpg as different files.
    Text that is not a URL with a host is only stripped.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port if parts.port is not None else None
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    netloc = userinfo + host + (f":{port}" if port is not None and str(port) != _DEFAULT_PORTS.get(scheme) else "")
    path = parts.path.rstrip("/") if parts.path not in ("", "/") else ""
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def normalize_caption(caption: str) -> str:
    """Case-folded, NFKC, punctuation dropped and whitespace collapsed: for exact caption dedup."""
    text = unicodedata.normalize("NFKC", caption).casefold()
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text)).strip()
