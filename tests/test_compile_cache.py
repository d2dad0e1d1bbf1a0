"""The persistent compilation cache of real runs: a second compile of the same program is a cache
hit, said in the log; the compile line predicts from the machine's history."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from msc_seg import compile_cache


@pytest.fixture
def fresh_cache(tmp_path):
    """compile_cache.enable on a fresh folder; the test suite's own cache settings restored."""
    saved = {
        k: getattr(jax.config, k)
        for k in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    folder = compile_cache.enable(tmp_path / "cache", min_compile_secs=0.0)
    try:
        yield folder
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
        compile_cache.reset_backend_cache()
        compile_cache._cache_dir = None


def program():
    def f(x):  # a fresh function object each time: nothing is reused in memory
        return jnp.tanh(x @ x.T).sum()

    return jax.jit(f)


def test_second_compile_of_the_same_program_is_a_logged_cache_hit(fresh_cache, capsys):
    assert fresh_cache is not None and fresh_cache.is_dir()
    x = jnp.ones((64, 64))
    with compile_cache.Compilation("the test step", "test/key"):
        program()(x).block_until_ready()
    first = capsys.readouterr().out
    assert "compiling the test step (first run on this machine" in first
    assert "the test step ready in" in first and "(compiled)" in first

    jax.clear_caches()  # as a new process would: only the persistent cache remains
    with compile_cache.Compilation("the test step", "test/key"):
        program()(x).block_until_ready()
    second = capsys.readouterr().out
    assert "cached here before" in second
    assert "loaded from the persistent compilation cache" in second
    assert (fresh_cache / "msc_seg_compile_times.json").exists()


def test_cache_folder_that_cannot_be_created_turns_the_cache_off(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    saved = jax.config.jax_compilation_cache_dir
    try:
        assert compile_cache.enable(blocker / "cache") is None
    finally:
        jax.config.update("jax_compilation_cache_dir", saved)
        compile_cache.reset_backend_cache()
    assert "persistent compilation cache off" in capsys.readouterr().out


ALARM = (
    b"E1130 17:40:53.390189   16253 slow_operation_alarm.cc:73] \n"
    b"********************************\n"
    b"[Compiling module jit_step_fn for CPU] Very slow compile? If you want to file a bug, run "
    b"with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.\n"
    b"********************************\n"
)


def test_xla_slow_compile_alarm_is_dropped_and_everything_else_passes():
    out = []
    filt = compile_cache._AlarmFilter(out.append)
    text = b"step 1/4 | loss 2.0\n" + ALARM + b"\rpredict [##..] 1/4" + b"\n**** a real banner\n"
    text += (
        b"kept ****\n" + b"E1130 slow_operation_alarm.cc:140] The operation took 2m\n" + b"end\n"
    )
    for i in range(0, len(text), 7):  # arbitrary chunking, as a pipe delivers it
        filt.feed(text[i : i + 7])
    filt.flush()
    got = b"".join(out)
    assert b"Very slow compile" not in got and b"slow_operation_alarm" not in got
    assert got == (
        b"step 1/4 | loss 2.0\n\rpredict [##..] 1/4\n**** a real banner\nkept ****\nend\n"
    )


def test_heartbeat_keeps_a_long_silent_block_talking_and_stops_with_it(capsys):
    import time as time_lib

    from msc_seg import reporting

    with reporting.Heartbeat(lambda t: f"compiling the train step ... {t}", every_s=0.05):
        time_lib.sleep(0.33)
    during = capsys.readouterr().out.splitlines()
    time_lib.sleep(0.15)
    assert 4 <= len(during) <= 7 and all(line.startswith("compiling the train") for line in during)
    assert capsys.readouterr().out == ""  # the thread ended with the block
