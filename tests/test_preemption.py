import signal

import pyarrow.parquet as pq
import pytest

from capsfus_hpc.engine import FusionEngine
from capsfus_hpc.preemption import StopRequest, WindowAborted
from capsfus_hpc.settings import load_run
from capsfus_hpc.worker import fuse_chunk, needs_requeue, windows

from .conftest import make_run, with_urls, write_parquet


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_windows_sit_on_a_grid_from_the_shard_start():
    assert windows(100, 180, 100, 32) == [(100, 132), (132, 164), (164, 180)]
    assert windows(140, 180, 100, 32) == [(140, 164), (164, 180)]  # after a partial commit at 140


def test_usr2_gives_the_signal_delay_and_sigterm_a_short_grace():
    clock = Clock()
    stop = StopRequest(signal_delay_s=120, clock=clock)
    assert stop.fits(10_000) and not stop.requested
    stop._handle(signal.SIGUSR2, None)
    assert stop.wants_requeue and stop.fits(100) and not stop.fits(115)
    clock.now += 100
    with pytest.raises(WindowAborted):
        stop.check_batch(30)
    term = StopRequest(signal_delay_s=120, clock=clock)
    term._handle(signal.SIGTERM, None)
    assert not term.wants_requeue and term.fits(5) and not term.fits(20)


def test_real_signals_reach_the_installed_handler():
    stop = StopRequest().install()
    try:
        signal.raise_signal(signal.SIGUSR2)
        assert stop.signal_name == "SIGUSR2"
    finally:
        stop.restore()


def test_a_stop_mid_chunk_commits_whole_windows_equal_to_an_uninterrupted_run(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:48]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=48, max_new_tokens=8, batch_size=4)
    settings, manifest = load_run(paths)
    engine = FusionEngine.load(settings)
    table = pq.read_table(source)
    cuts = windows(0, 48, 0, 16)
    whole = fuse_chunk(table, 0, manifest.columns, 4000, lambda: engine, cuts)

    stop = StopRequest(signal_delay_s=120)

    class SignalAfterFirstWindow:
        calls = 0

        def fuse(self, pairs, before_batch=None):
            self.calls += 1
            if self.calls == 2:  # SIGUSR2 arrives while the second window is in flight
                stop._handle(signal.SIGUSR2, None)
            return engine.fuse(pairs, before_batch)

    interrupting = SignalAfterFirstWindow()
    partial = fuse_chunk(table, 0, manifest.columns, 4000, lambda: interrupting, cuts, stop, started=True)
    assert partial.num_rows == 32  # the window in flight fits the deadline and is finished; no third
    assert partial.equals(whole.slice(0, 32))
    rest = fuse_chunk(table.slice(32), 32, manifest.columns, 4000, lambda: engine, windows(32, 48, 0, 16))
    assert rest.equals(whole.slice(32))


def test_a_time_limit_warning_requeues_while_any_shard_of_the_task_is_unfinished():
    warned = StopRequest(max_requeues=3)
    warned._handle(signal.SIGUSR2, None)
    # the warning came as shard 1 finished: shard 2 was never started, so the task runs again
    assert needs_requeue(warned, {1: True}, [1, 2], restarts=0)
    assert not needs_requeue(warned, {1: True, 2: True}, [1, 2], restarts=0)
    assert not needs_requeue(warned, {1: False}, [1], restarts=3)  # the limit: reported failed instead
    preempted = StopRequest()
    preempted._handle(signal.SIGTERM, None)
    assert not needs_requeue(preempted, {1: False}, [1], restarts=0)  # SLURM requeues or cancels it itself
