import json
import os
import subprocess
import sys

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.lease import TIMEOUT_ENV, LeaseLost, ShardLease


def test_a_held_lease_is_refused_with_its_holder(tmp_path):
    first = ShardLease(tmp_path / "lease.json", 3, "77_1").acquire()
    with pytest.raises(CapsfusError, match=r"shard 3 is being written by job 77_1 on .* \(pid \d+, heartbeat 0 s ago\)"):
        ShardLease(tmp_path / "lease.json", 3, "78_0").acquire()
    first.renew()
    first.release()
    ShardLease(tmp_path / "lease.json", 3, "78_0").acquire()


def test_a_stale_lease_is_taken_over_and_its_old_holder_stops(tmp_path, monkeypatch):
    old = ShardLease(tmp_path / "lease.json", 0, "1").acquire()
    monkeypatch.setenv(TIMEOUT_ENV, "0")
    new = ShardLease(tmp_path / "lease.json", 0, "2")
    new.mine = type(new.mine)(**{**new.mine.__dict__, "pid": new.mine.pid + 1})  # another writer
    new.acquire()
    assert json.loads((tmp_path / "lease.json").read_text())["job_id"] == "2"
    with pytest.raises(LeaseLost, match="taken over by job 2"):
        old.renew()
    old.release()  # not its own any more: left in place
    assert (tmp_path / "lease.json").exists() and not list(tmp_path.glob("*.stale-*"))


def test_the_lease_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "lease.json"
    lease = ShardLease(path, 0, "9")
    path.write_text(json.dumps({**lease.mine.__dict__, "pid": int(dead.stdout)}))
    lease.acquire()
    assert json.loads(path.read_text())["pid"] == lease.mine.pid


def test_a_requeued_task_takes_over_the_lease_its_earlier_self_left_on_a_lost_node(tmp_path):
    path = tmp_path / "lease.json"
    lease = ShardLease(path, 0, "41_3")
    path.write_text(json.dumps({**lease.mine.__dict__, "host": "node-that-died", "pid": 1}))
    lease.acquire()
    assert json.loads(path.read_text())["host"] == lease.mine.host
    other = ShardLease(path, 0, "42_0")
    with pytest.raises(CapsfusError, match="being written by job 41_3"):
        other.acquire()


def test_of_two_takers_of_one_stale_lease_only_one_wins(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "lease.json"
    first, second = ShardLease(path, 0, "1"), ShardLease(path, 0, "2")
    path.write_text(json.dumps({**first.mine.__dict__, "pid": int(dead.stdout), "job_id": "0"}))
    rename = os.rename

    def second_was_quicker(source, target):  # both judged the dead lease stale; the second took it first
        monkeypatch.setattr(os, "rename", rename)
        second.acquire()
        rename(source, target)

    monkeypatch.setattr(os, "rename", second_was_quicker)
    with pytest.raises(CapsfusError, match=r"shard 0 is being written by job 2 on"):
        first.acquire()
    second.renew()  # still its own
    assert json.loads(path.read_text())["job_id"] == "2"
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lease_is_its_file_not_its_pid(tmp_path):
    """Two tasks in one process (a local run, say) are two holders: each sees the other's lease as taken."""
    path = tmp_path / "lease.json"
    first = ShardLease(path, 0, None).acquire()
    path.unlink()  # given up by hand, say, and taken by another task of the same process
    second = ShardLease(path, 0, None).acquire()
    with pytest.raises(LeaseLost, match=r"taken over by job \(local\)"):
        first.renew()
    first.release()  # not its own any more: left in place
    second.renew()
    second.release()
    assert not path.exists()


def test_a_lease_set_aside_for_a_moment_is_still_its_holders(tmp_path):
    """A taker that moved a fresh lease aside by mistake links it back: the holder, renewing in
    between, keeps the shard rather than stopping."""
    import threading
    import time

    path = tmp_path / "lease.json"
    holder = ShardLease(path, 0, "1").acquire()
    aside = tmp_path / "lease.json.stale-elsewhere"
    os.rename(path, aside)
    threading.Timer(0.3, lambda: (os.link(aside, path), aside.unlink())).start()
    holder.renew()
    time.sleep(0.1)
    holder.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lease_file_of_other_bytes_is_a_lease_of_nobody_known(tmp_path):
    path = tmp_path / "lease.json"
    path.write_bytes(b"\xff\xfe not a lease")
    with pytest.raises(CapsfusError, match=r"being written by job \(local\) on \?"):  # until its heartbeat stops
        ShardLease(path, 0, "1").acquire()
