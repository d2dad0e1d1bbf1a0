"""Launch resolution: flags and JAX_* variables -> one jax.distributed.initialize call, or one
line naming what is missing. No process is started here (tests/test_multiprocess.py does)."""

from __future__ import annotations

import pytest

from msc_seg import distributed
from msc_seg.distributed import Launch, LaunchError, resolve

FULL_ENV = {
    "JAX_COORDINATOR_ADDRESS": "node0:1234",
    "JAX_NUM_PROCESSES": "4",
    "JAX_PROCESS_ID": "3",
}


def test_nothing_given_is_a_single_process_run():
    assert resolve(environ={}) is None
    assert resolve(environ={"SLURM_JOB_ID": "7"}) is None  # a scheduler alone: --distributed


def test_jax_environment_variables_alone_launch():
    assert resolve(environ=FULL_ENV) == Launch("node0:1234", 4, 3, auto=False)


def test_flags_win_over_environment_variables():
    launch = resolve(environ=FULL_ENV, coordinator_address="head:99", process_id=0)
    assert launch == Launch("head:99", 4, 0, auto=False)


def test_distributed_alone_asks_jax_to_detect_everything():
    launch = resolve(distributed=True, environ={})
    assert launch == Launch(None, None, None, auto=True)
    assert launch.kwargs() == {
        "coordinator_address": None,
        "num_processes": None,
        "process_id": None,
    }


def test_distributed_with_some_values_overrides_only_those():
    launch = resolve(distributed=True, environ={"JAX_COORDINATOR_ADDRESS": "n:1"})
    assert launch == Launch("n:1", None, None, auto=True)


def test_coordinator_without_process_count_names_the_missing_flags_and_variables():
    with pytest.raises(LaunchError) as info:
        resolve(environ={"JAX_COORDINATOR_ADDRESS": "node0:1234"})
    message = str(info.value)
    assert "\n" not in message
    assert "--coordinator_address (JAX_COORDINATOR_ADDRESS) given but not" in message
    assert "--num_processes (JAX_NUM_PROCESSES) and --process_id (JAX_PROCESS_ID)" in message
    assert "--distributed" in message


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(coordinator_address="node0", num_processes=2, process_id=0), "HOST:PORT"),
        (dict(coordinator_address="n:1", num_processes=0, process_id=0), "--num_processes"),
        (dict(coordinator_address="n:1", num_processes=2, process_id=2), "0..1"),
        (dict(coordinator_address="n:1", num_processes="two", process_id=0), "integer"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(kwargs, named):
    with pytest.raises(LaunchError, match=named):
        resolve(environ={}, **kwargs)


def test_jax_detection_failure_becomes_a_one_line_launch_error(monkeypatch):
    import jax

    def no_scheduler(**kwargs):
        raise ValueError("Number of processes must be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_scheduler)
    with pytest.raises(LaunchError, match=r"--num_processes \(JAX_NUM_PROCESSES\)"):
        distributed.initialize(Launch(auto=True), peer_timeout_s=10, connect_timeout_s=10)


def test_dead_peer_message_names_the_process_and_the_resume_step():
    distributed.on_peer_lost(lambda: 6)
    try:
        message = distributed.peer_lost_message("task:1 sent no heartbeat for 10 s")
    finally:
        distributed.on_peer_lost(lambda: None)
    assert "\n" not in message
    assert message.startswith("error: process 1 of the pod stopped responding, so process 0 stops")
    assert "a rerun of the same command resumes from step 6" in message
    assert "starts over" in distributed.peer_lost_message("socket closed")
