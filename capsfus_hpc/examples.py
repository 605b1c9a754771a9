"""Synthetic caption pairs shaped like LAION alt-texts and BLIP captions.

They feed the demo and the smoke model's tokenizer so both run on a machine with no dataset.
They are made up; the real captions for tests live in ../shared/data.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

_BRANDS = ["Schwinn", "IKEA", "Nike", "Canon", "Le Creuset", "Patagonia", "Lego", "Bosch", "Fender", "Rolex",
           "Moleskine", "Vans", "Dyson", "Polaroid", "Weber", "Yeti", "Breville", "Herman Miller"]
_THINGS = [("bicycle", "leaning against a brick wall"), ("armchair", "in a bright living room"),
           ("running shoe", "on a white background"), ("camera", "on a wooden table"),
           ("cast iron pot", "on a stove"), ("rain jacket", "hanging on a hook"), ("toy castle", "on a carpet"),
           ("power drill", "on a workbench"), ("electric guitar", "against an amplifier"),
           ("wristwatch", "in a display case"), ("notebook", "next to a cup of coffee"), ("skate shoe", "on a skateboard"),
           ("vacuum cleaner", "in a hallway"), ("instant camera", "held by a person"), ("charcoal grill", "in a garden"),
           ("water bottle", "on a hiking trail"), ("espresso machine", "on a kitchen counter"), ("office chair", "at a desk")]
_COLOURS = ["red", "blue", "black", "white", "green", "yellow", "grey", "orange", "brown", "silver"]
_SHOPS = ["eBay", "Amazon.com", "Etsy", "Walmart", "Target", "Best Buy", "Zalando", "John Lewis"]
_NOISE = ["Free Shipping", "NEW", "2019", "Size M", "(Pack of 2)", "Limited Edition", "#1 Seller", "100% Original"]


def caption_pair(rng: random.Random) -> tuple[str, str]:
    """(raw web alt-text, synthetic caption) for one made-up product photo."""
    thing, scene = rng.choice(_THINGS)
    colour = rng.choice(_COLOURS)
    raw = f"{rng.choice(_BRANDS)} {colour.title()} {thing.title()} {rng.randint(100, 9999)} - {rng.choice(_NOISE)} | {rng.choice(_SHOPS)}"
    synthetic = f"a {colour} {thing} {scene}"
    return raw, synthetic


def captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [text for _ in range(count) for text in caption_pair(rng)]


def example_table(rows: int, seed: int = 0) -> pa.Table:
    """Example input with a few of what real data has: repeated URLs, empty and null captions."""
    rng = random.Random(seed)
    raw, synthetic, urls = [], [], []
    for i in range(rows):
        pair = caption_pair(rng)
        raw.append("" if i % 40 == 39 else pair[0])
        synthetic.append(None if i % 57 == 56 else pair[1])
        urls.append(f"https://images.example.com/{(i - 7 if i % 25 == 24 else i):06d}.jpg")
    return pa.table({"image_url": urls, "laion_2b": raw, "laion_coco": synthetic,
                     "similarity": [round(rng.uniform(0.25, 0.45), 4) for _ in range(rows)]})


def write_example_parquet(path, rows: int, row_group_rows: int = 1000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(example_table(rows, seed), path, row_group_size=row_group_rows)
