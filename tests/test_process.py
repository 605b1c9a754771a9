import os
import subprocess
import sys
import time

from capsfus_hpc.process import alive, started_at


def test_a_process_is_alive_only_if_it_had_started_by_the_time_it_was_known_to_run():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert abs(started_at(sleeper.pid) - time.time()) < 10
        assert alive(sleeper.pid) and alive(sleeper.pid, since=time.time())
        assert not alive(sleeper.pid, since=time.time() - 2 * 86400)  # a pid reused since: someone else
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not alive(sleeper.pid)


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while alive(child.pid) and time.time() < deadline:  # finished, not yet reaped
        time.sleep(0.05)
    assert os.path.exists(f"/proc/{child.pid}") and not alive(child.pid)
    child.wait()
