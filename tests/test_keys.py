import random

import pyarrow as pa
import pytest

from capsfus_hpc.keys import normalize_caption, normalize_caption_column, normalize_url, normalize_url_column


@pytest.mark.parametrize("a,b", [
    ("HTTPS://Images.Example.COM/a/b.jpg", "https://images.example.com/a/b.jpg"),
    ("https://example.com/a/b.jpg/", "https://example.com/a/b.jpg"),
    ("https://example.com/a/b.jpg#section", "https://example.com/a/b.jpg"),
    ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
    ("http://example.com:80/", "http://example.com"),
    ("HTTP://[FE80::1]:80/a", "http://[fe80::1]/a"),
    ("  https://example.com/x?y=1  ", "https://example.com/x?y=1"),
])
def test_same_image_same_key(a, b):
    assert normalize_url(a) == normalize_url(b)


@pytest.mark.parametrize("a,b", [
    ("https://example.com/A.jpg", "https://example.com/a.jpg"),  # paths are case-sensitive
    ("https://example.com/a.jpg?size=1", "https://example.com/a.jpg?size=2"),
    ("https://example.com:8443/a.jpg", "https://example.com/a.jpg"),
    ("http://example.com/a.jpg", "https://example.com/a.jpg"),
    ("http://[::1]:8080/x", "http://[::1:8080]/x"),  # a port, or the address's last group
])
def test_different_images_keep_different_keys(a, b):
    assert normalize_url(a) != normalize_url(b)


def test_non_urls_are_only_stripped():
    assert normalize_url(" item-123 ") == "item-123"
    assert normalize_url("http://[bad") == "http://[bad"


def test_caption_normalisation_ignores_case_punctuation_and_spacing():
    assert normalize_caption("A red  bicycle, leaning on a WALL.") == normalize_caption("a red bicycle leaning on a wall")
    assert normalize_caption("Ｆｕｌｌ width") == "full width"


def _odd_values(seed: int, count: int) -> list:
    rng = random.Random(seed)
    pieces = ["http", "HTTPS", "ftp", "://", ":", "/", "//", "?", "#", "@", "[", "]", "Ex.COM", "a-b", "80", "443",
              "0080", "99999", "x", " ", "\t", "é", "%20", "..", "+", "1", ":0", "", "?#", "A.jpg", "ﬁ", "Ａ", "\u2013",
              "Word", ",", "_", "\u00a0", "\x1c"]
    return [None, ""] + ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 9))) for _ in range(count)]


@pytest.mark.parametrize("column, one", [(normalize_url_column, normalize_url),
                                         (normalize_caption_column, normalize_caption)])
def test_column_versions_equal_the_definitions(column, one, real_records):
    values = _odd_values(0, 50_000) + [r["laion_2b"] for r in real_records] + [
        "http://a.com:65535/", "http://a.com:65536/", "http://a.com:/x", "HTTP://A.COM:0080/x/?#", "http://a.com?",
        "http://a.com/?q#f", "http://a.com//", "https://a.com:443", "http://a.com:8x/"]
    got = column(pa.array(values, pa.string())).to_pylist()
    assert got == [None if v is None else one(v) for v in values]


def test_a_port_that_is_not_a_number_leaves_the_url_as_text():
    assert normalize_url(" http://a.com:8x/p ") == "http://a.com:8x/p"
    assert normalize_url("http://a.com:99999/p") == "http://a.com:99999/p"
