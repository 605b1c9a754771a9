"""Dedup keys: the form in which two rows count as the same image or the same caption.

`normalize_url` and `normalize_caption` define the keys. The column versions compute the same
thing for whole Arrow columns: a compiled pass handles the plain cases (an ASCII http-style URL
with a simple host; a printable-ASCII caption) and hands every other value to the Python
definition, so the two cannot disagree (tests/test_keys.py compares them on odd inputs).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from .caption_screen import string_buffers

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_SPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_url(url: str) -> str:
    """Scheme and host lower-cased, default port, fragment and trailing slash dropped.

    The path and query keep their case: servers treat /A.jpg and /a.jpg as different files.
    Text that is not a URL with a host (or has a port that is not a number) is only stripped.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets, or its last group reads as a port
        host = f"[{host}]"
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    netloc = userinfo + host + (f":{port}" if port is not None and str(port) != _DEFAULT_PORTS.get(scheme) else "")
    path = parts.path.rstrip("/") if parts.path not in ("", "/") else ""
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def normalize_caption(caption: str) -> str:
    """Case-folded, NFKC, punctuation dropped and whitespace collapsed: for exact caption dedup."""
    text = unicodedata.normalize("NFKC", caption).casefold()
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


@njit(cache=True, nogil=True)
def _lower(byte):
    return byte + 32 if 65 <= byte <= 90 else byte


@njit(cache=True, nogil=True)
def _is_scheme(byte, first):
    letter = (65 <= byte <= 90) or (97 <= byte <= 122)
    return letter or (not first and ((48 <= byte <= 57) or byte == 43 or byte == 45 or byte == 46))


@njit(cache=True, nogil=True)
def _is_host(byte):
    return (48 <= byte <= 57) or (65 <= byte <= 90) or (97 <= byte <= 122) or byte == 45 or byte == 46


@njit(cache=True, nogil=True)
def _plain_url(data, start, stop, out, at):
    """Writes the normalised URL at out[at:] and returns its end, or -1 if the URL is not plain:
    scheme://host[:port][/path][?query][#fragment] in printable ASCII, host of [A-Za-z0-9.-]."""
    for k in range(start, stop):
        if data[k] <= 32 or data[k] >= 127:
            return -1
    k = start
    while k < stop and _is_scheme(data[k], k == start):
        k += 1
    if k == start or k + 3 > stop or data[k] != 58 or data[k + 1] != 47 or data[k + 2] != 47:
        return -1
    scheme_stop, host_start = k, k + 3
    k = host_start
    while k < stop and _is_host(data[k]):
        k += 1
    if k == host_start:
        return -1
    host_stop, port, digits = k, 0, 0
    if k < stop and data[k] == 58:
        k += 1
        while k < stop and 48 <= data[k] <= 57 and digits < 6:
            port = port * 10 + data[k] - 48
            digits += 1
            k += 1
        if digits == 0 or digits > 5 or port > 65535:
            return -1
    if k < stop and data[k] != 47 and data[k] != 63 and data[k] != 35:
        return -1
    for m in range(start, scheme_stop):
        out[at] = _lower(data[m])
        at += 1
    for byte in (58, 47, 47):
        out[at] = byte
        at += 1
    for m in range(host_start, host_stop):
        out[at] = _lower(data[m])
        at += 1
    if digits:
        scheme_len = scheme_stop - start
        is_http = scheme_len == 4 and _lower(data[start + 3]) == 112 and _lower(data[start]) == 104
        is_https = scheme_len == 5 and _lower(data[start + 4]) == 115 and _lower(data[start]) == 104
        if not ((is_http and port == 80) or (is_https and port == 443)):
            out[at] = 58
            at += 1
            text = np.empty(5, np.uint8)
            n = 0
            while True:
                text[n] = 48 + port % 10
                n += 1
                port //= 10
                if port == 0:
                    break
            for m in range(n - 1, -1, -1):
                out[at] = text[m]
                at += 1
    path_start = k
    while k < stop and data[k] != 63 and data[k] != 35:
        k += 1
    path_stop = k
    while path_stop > path_start and data[path_stop - 1] == 47:
        path_stop -= 1
    for m in range(path_start, path_stop):
        out[at] = data[m]
        at += 1
    if k < stop and data[k] == 63:
        query_start = k
        while k < stop and data[k] != 35:
            k += 1
        if k - query_start > 1:
            for m in range(query_start, k):
                out[at] = data[m]
                at += 1
    return at


@njit(cache=True, nogil=True)
def _plain_caption(data, start, stop, out, at):
    """Writes the lower-cased word runs joined by single spaces; -1 unless printable ASCII."""
    first, in_word = True, False
    for k in range(start, stop):
        byte = data[k]
        if byte < 32 or byte > 126:
            return -1
        word = (48 <= byte <= 57) or (65 <= byte <= 90) or (97 <= byte <= 122) or byte == 95
        if word:
            if not in_word and not first:
                out[at] = 32
                at += 1
            out[at] = _lower(byte)
            at += 1
            first = False
        in_word = word
    return at


@njit(cache=True, nogil=True)
def _normalize(offsets, data, valid, kind, out_offsets, out_data, fallback):
    at = 0
    for row in range(len(valid)):
        out_offsets[row] = at
        if not valid[row]:
            continue
        if kind == 0:
            end = _plain_url(data, offsets[row], offsets[row + 1], out_data, at)
        else:
            end = _plain_caption(data, offsets[row], offsets[row + 1], out_data, at)
        if end < 0:
            fallback[row] = True
        else:
            at = end
    out_offsets[len(valid)] = at


def _normalize_column(values: pa.Array, kind: int, slow) -> pa.Array:
    offsets, data, valid = string_buffers(values)
    out_offsets = np.empty(len(valid) + 1, np.int64)
    out_data = np.empty(max(len(data), 1), np.uint8)
    fallback = np.zeros(len(valid), np.bool_)
    _normalize(offsets, data, valid, kind, out_offsets, out_data, fallback)
    validity = pa.array(valid).buffers()[1] if not valid.all() else None
    result = pa.LargeStringArray.from_buffers(len(valid), pa.py_buffer(out_offsets), pa.py_buffer(out_data[:out_offsets[-1]]),
                                              validity)
    if fallback.any():
        rows = np.flatnonzero(fallback)
        replacements = pa.array([slow(v) for v in pc.take(values, pa.array(rows)).to_pylist()], pa.large_string())
        result = pc.replace_with_mask(result, pa.array(fallback), replacements)
    return result


def normalize_url_column(values: pa.Array) -> pa.Array:
    """normalize_url of every value (nulls stay null), as a large_string array."""
    return _normalize_column(values, 0, normalize_url)


def normalize_caption_column(values: pa.Array) -> pa.Array:
    """normalize_caption of every value (nulls stay null), as a large_string array."""
    return _normalize_column(values, 1, normalize_caption)
