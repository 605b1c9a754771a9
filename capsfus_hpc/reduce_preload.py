"""Loading the reduce's compiled kernels ahead of the work that needs them.

The key and dedup workers come from a fork server (forking the main process would copy the
state of pyarrow's and numba's threads, which does not survive a fork). reduce.py starts the
server before it plans the reduce, naming this module as the server's preload: the stages'
modules and numba's compiled kernels (about a second and a half, most of it numba starting up)
are then loaded once, while the main process plans, and every worker is forked ready to work.
The main process, which runs assemble, loads the caption screen's kernels meanwhile
(reduce_judge.load_screen).
"""

from __future__ import annotations

import pyarrow as pa

from . import reduce_dedup, reduce_keys  # noqa: F401 (the stages' modules, loaded for the workers)
from .dedup import first_seen, key_hashes, partition_of
from .keys import normalize_caption_column, normalize_url_column


def load_kernels() -> None:
    """Run each compiled kernel of the key and dedup stages once, on two rows."""
    keys = normalize_url_column(pa.array(["https://A.example/x#y", "b"]))
    partition_of(key_hashes(keys), 2)
    first_seen(keys)
    normalize_caption_column(pa.array(["A cat on a mat.", "Un café ÉTÉ, Nike™."]))


try:
    load_kernels()
except Exception:  # loading ahead only saves time: a real fault shows when a task runs the same code
    pass
