import signal

import pyarrow.parquet as pq
import pytest

from capsfus_hpc.engine import FusionEngine
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.preemption import StopRequest, WindowAborted
from capsfus_hpc.progress import read_progress
from capsfus_hpc.settings import load_run
from capsfus_hpc.worker import fuse_chunk, needs_requeue, run_shard, windows

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
    assert needs_requeue(warned, {1: True}, [1, 2])
    assert not needs_requeue(warned, {1: True, 2: True}, [1, 2])  # done, or failed past the limit
    preempted = StopRequest()
    preempted._handle(signal.SIGTERM, None)
    assert not needs_requeue(preempted, {1: False}, [1])  # SLURM requeues or cancels it itself


def test_the_requeue_limit_counts_time_limit_stops_of_one_task_not_preemptions(tmp_path, real_records,
                                                                               smoke_model, monkeypatch):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:16]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=16, max_new_tokens=8, batch_size=4)
    settings, manifest = load_run(paths)

    def time_limit_warning_long_ago(max_requeues):  # too late for any window: the attempt commits nothing
        clock = Clock()
        stop = StopRequest(signal_delay_s=120, max_requeues=max_requeues, clock=clock)
        stop._handle(signal.SIGUSR2, None)
        clock.now += 200
        return stop

    def no_engine():
        raise AssertionError("no window should start after the deadline")

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "9")  # preempted nine times before: not counted
    record = run_shard(paths, settings, manifest, 0, no_engine, time_limit_warning_long_ago(1))
    assert record.last_attempt.stopped_by == "SIGUSR2" and record.last_attempt.error is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "10")
    with pytest.raises(CapsfusError, match=r"after 1 time-limit requeues of this shard .*--max-requeues 1"):
        run_shard(paths, settings, manifest, 0, no_engine, time_limit_warning_long_ago(1))
    assert "--max-requeues 1" in read_progress(paths.progress(0)).last_attempt.error
    attempts = len(read_progress(paths.progress(0)).attempts)
    with pytest.raises(CapsfusError, match=r"--max-requeues 1"):  # the task, requeued for its other shards
        run_shard(paths, settings, manifest, 0, no_engine, time_limit_warning_long_ago(1))
    assert len(read_progress(paths.progress(0)).attempts) == attempts  # leaves the failed one alone
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "78")  # resubmitted by `resume`: a new task starts from none
    record = run_shard(paths, settings, manifest, 0, no_engine, time_limit_warning_long_ago(1))
    assert record.last_attempt.error is None and record.time_limit_stops("78_0") == 1
