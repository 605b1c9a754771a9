import os

from capsfus_hpc.paths import ReducePaths
from capsfus_hpc.reduce_publish import last_published_at, published_at


def test_a_reduce_under_way_hides_the_earlier_dataset_from_its_wait_but_not_from_status(tmp_path):
    final = ReducePaths(tmp_path / "final")
    assert published_at(final) is None and last_published_at(final) is None
    final.work.mkdir(parents=True)
    final.stats.write_text("{}")
    os.utime(final.stats, (1000.0, 1000.0))
    assert published_at(final) == last_published_at(final) == 1000.0
    final.plan.write_text("{}")  # a later reduce into FINAL has started
    # Its own wait must not take the earlier stats.json for its dataset; status still knows that a
    # dataset was published at 1000 (a failed reduce job before that stays history).
    assert published_at(final) is None and last_published_at(final) == 1000.0
