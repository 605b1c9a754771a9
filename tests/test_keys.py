import pytest

from capsfus_hpc.keys import normalize_caption, normalize_url


@pytest.mark.parametrize("a,b", [
    ("HTTPS://Images.Example.COM/a/b.jpg", "https://images.example.com/a/b.jpg"),
    ("https://example.com/a/b.jpg/", "https://example.com/a/b.jpg"),
    ("https://example.com/a/b.jpg#section", "https://example.com/a/b.jpg"),
    ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
    ("http://example.com:80/", "http://example.com"),
    ("  https://example.com/x?y=1  ", "https://example.com/x?y=1"),
])
def test_same_image_same_key(a, b):
    assert normalize_url(a) == normalize_url(b)


@pytest.mark.parametrize("a,b", [
    ("https://example.com/A.jpg", "https://example.com/a.jpg"),  # paths are case-sensitive
    ("https://example.com/a.jpg?size=1", "https://example.com/a.jpg?size=2"),
    ("https://example.com:8443/a.jpg", "https://example.com/a.jpg"),
    ("http://example.com/a.jpg", "https://example.com/a.jpg"),
])
def test_different_images_keep_different_keys(a, b):
    assert normalize_url(a) != normalize_url(b)


def test_non_urls_are_only_stripped():
    assert normalize_url(" item-123 ") == "item-123"
    assert normalize_url("http://[bad") == "http://[bad"


def test_caption_normalisation_ignores_case_punctuation_and_spacing():
    assert normalize_caption("A red  bicycle, leaning on a WALL.") == normalize_caption("a red bicycle leaning on a wall")
    assert normalize_caption("Ｆｕｌｌ width") == "full width"
