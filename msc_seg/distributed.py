"""Multi-host launch: the `jax.distributed.initialize` call that flags and environment ask for.

Three ways to say "this is process i of n, the coordinator is at host:port":
  - our flags `--coordinator_address`, `--num_processes`, `--process_id`;
  - the environment variables users try first: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID (a flag wins over its variable);
  - `--distributed` alone: JAX reads them from the scheduler (SLURM, Open MPI / mpirun, Cloud
    TPU pods; what `jax.distributed.initialize()` auto-detects); flags or JAX_* values given
    beside it override what it detects.
Without any of these the run is single-process. Missing pieces are one-line `LaunchError`s
naming the flag and the variable (main.py turns them into exit code 2).

Also here: the peer timeout (how long a silent peer is waited for before the run stops, JAX's
heartbeat timeout) and the CPU collectives (gloo), so that localhost CPU runs work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping


class LaunchError(ValueError):
    """A multi-process launch that cannot work; one line naming the flag / variable."""


ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def _name(field: str) -> str:
    return f"--{field} ({ENV[field]})"


@dataclasses.dataclass(frozen=True)
class Launch:
    """The arguments of one `jax.distributed.initialize` call (None = auto-detected by JAX from
    the scheduler's environment; `auto` says whether that detection is asked for)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    def kwargs(self) -> dict:
        return {
            "coordinator_address": self.coordinator_address,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
        }


def _int(field: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{_name(field)} = {value!r}: pass an integer") from None


def resolve(
    *,
    distributed: bool = False,
    coordinator_address: str | None = None,
    num_processes: str | int | None = None,
    process_id: str | int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Launch | None:
    """The launch that the flags (None / '' = not given) and `environ` ask for; None for a
    single-process run. LaunchError (one line) naming what is missing or wrong."""
    environ = os.environ if environ is None else environ
    given = {
        "coordinator_address": coordinator_address or environ.get(ENV["coordinator_address"]),
        "num_processes": _int(
            "num_processes",
            num_processes if num_processes not in (None, "") else environ.get(ENV["num_processes"]),
        ),
        "process_id": _int(
            "process_id",
            process_id if process_id not in (None, "") else environ.get(ENV["process_id"]),
        ),
    }
    explicit = [k for k, v in given.items() if v is not None]
    if not explicit and not distributed:
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing and not distributed:
        raise LaunchError(
            f"{' and '.join(_name(k) for k in explicit)} given but not "
            f"{' and '.join(_name(k) for k in missing)}: a multi-process run needs all three, "
            "or --distributed to read them from the scheduler (SLURM, Open MPI, TPU pod)"
        )
    address = given["coordinator_address"]
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise LaunchError(
            f"{_name('coordinator_address')} = {address!r}: pass HOST:PORT of process 0, "
            "e.g. node1:1234"
        )
    n, i = given["num_processes"], given["process_id"]
    if n is not None and n < 1:
        raise LaunchError(f"{_name('num_processes')} = {n}: pass the number of processes (>= 1)")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise LaunchError(
            f"{_name('process_id')} = {i}: pass a distinct index in 0..{(n or 1) - 1} per process"
        )
    return Launch(address, n, i, auto=bool(missing))


def missing_from_jax_error(error: ValueError) -> str | None:
    """The field JAX could not determine, from the ValueError of `jax.distributed.initialize`."""
    text = str(error)
    for needle, field in (
        ("coordinator_address", "coordinator_address"),
        ("Number of processes", "num_processes"),
        ("process id", "process_id"),
    ):
        if needle in text:
            return field
    return None


PEER_TIMEOUT_S = 100  # default; main.py's --peer_timeout


def _start_backend_in_step() -> None:
    """Creates the backend and the all-device collective context now, while the processes are
    in step (they just met in `initialize`).

    Both are created lazily at first use and wait for the other processes with short fixed
    timeouts (CPU: 2 min for the device topology, 30 s per gloo rendezvous key); a process that
    first builds a dataset or compiles for minutes while the others already run a collective
    failed there (`GetKeyValue() timed out`). Once created, later collectives wait as long as
    needed (measured: 200 s of skew on localhost).
    """
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("msc_seg: backend and collectives ready")


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Waits until every process reached `name` (the coordination service's barrier: no device
    collective, its own timeout); no-op on one process."""
    import jax
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if jax.process_count() > 1 and client is not None:
        client.wait_at_barrier(f"msc_seg:{name}", int(timeout_s * 1000))


def initialize(launch: Launch, *, peer_timeout_s: int, connect_timeout_s: int) -> None:
    """Calls `jax.distributed.initialize` for `launch` (CPU collectives over gloo).

    peer_timeout_s: a process that sends no heartbeat for this long is taken for dead and the
    run stops (see PeerWatch; JAX's own heartbeat timeout is set longer); connect_timeout_s:
    how long to wait for every process to join. LaunchError when JAX's scheduler detection
    finds no value for a missing field.
    """
    import jax

    global PEER_TIMEOUT_S
    PEER_TIMEOUT_S = int(peer_timeout_s)
    # CPU devices of different processes talk over gloo (the default of recent JAX versions; set
    # explicitly for the ones where it is not).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        with _coordinator_loss_reported():
            jax.distributed.initialize(
                **launch.kwargs(),
                initialization_timeout=int(connect_timeout_s),
                heartbeat_timeout_seconds=jax_heartbeat_timeout(peer_timeout_s),
            )
        _start_backend_in_step()
    except ValueError as e:
        field = missing_from_jax_error(e)
        if field is None:
            raise
        raise LaunchError(
            f"--distributed: no scheduler environment (SLURM, Open MPI, TPU pod) gives "
            f"{_name(field)}; pass {_name('coordinator_address')}, {_name('num_processes')} "
            f"and {_name('process_id')} (docs/SCALING.md)"
        ) from None


@contextlib.contextmanager
def _coordinator_loss_reported():
    """While JAX creates its distributed client: the client's fatal "coordination service
    error" path (taken at once when process 0, which hosts the service, dies) ends this process
    with our one-line report instead of JAX's abort.

    How: JAX's client takes a `missed_heartbeat_callback` (default: LOG(QFATAL), exit 134 with
    a C++ message). The binding cannot hand the status to Python (a std::bad_cast), so any
    Python callback ends in std::terminate; a terminate handler installed here (ctypes, the C++
    runtime's `std::set_terminate`) writes the report and exits with PEER_LOST_EXIT_CODE.
    Where either piece is unavailable (another C++ runtime, another jaxlib signature) JAX's own
    behaviour stays."""
    from jax._src import distributed as jax_distributed

    module = jax_distributed._jax
    original = module.get_distributed_runtime_client
    if not _install_terminate_report():
        yield
        return

    def client_with_callback(*args, **kwargs):
        try:
            return original(*args, missed_heartbeat_callback=_coordinator_lost, **kwargs)
        except TypeError:  # a jaxlib without the argument
            return original(*args, **kwargs)

    module.get_distributed_runtime_client = client_with_callback
    try:
        yield
    finally:
        module.get_distributed_runtime_client = original


def _coordinator_lost(*_status) -> None:
    # Reached only by a jaxlib whose binding converts the status; today's go to on_terminate.
    report_peer_lost("task:0 (the coordinator) reported an error or is unreachable")


_terminate_handler = None  # keeps the ctypes callback alive


def _install_terminate_report() -> bool:
    global _terminate_handler
    import ctypes

    try:
        runtime = ctypes.CDLL("libstdc++.so.6")
        set_terminate = runtime._ZSt13set_terminatePFvvE
    except (OSError, AttributeError):
        return False
    handler_type = ctypes.CFUNCTYPE(None)

    def on_terminate() -> None:
        # JAX's distributed client polls the coordination service; the first failed poll (the
        # coordinator is gone, or it reports a dead task) arrives here. A peer other than
        # process 0 that dies is named earlier by PeerWatch (JAX's heartbeat timeout is longer).
        report_peer_lost("task:0 (the coordinator) unreachable: the coordination service failed")

    _terminate_handler = handler_type(on_terminate)
    set_terminate.restype = ctypes.c_void_p
    set_terminate.argtypes = [handler_type]
    set_terminate(_terminate_handler)
    return True


# ---------------------------------------------------------------------------------------------
# A dead peer: one line from every survivor, then exit (never a hang past the peer timeout).

_resume_step: Callable[[], int | None] | None = None
PEER_LOST_EXIT_CODE = 1


def on_peer_lost(resume_step: Callable[[], int | None]) -> None:
    """Tells the dead-peer report where a rerun would resume (e.g. the latest checkpoint)."""
    global _resume_step
    _resume_step = resume_step


def peer_lost_message(detail: str) -> str:
    """'error: process 1 of the pod stopped responding (...)'; names the process when JAX's
    status text does (`task:N`) and the step a rerun resumes from."""
    import jax

    tasks = sorted({int(t) for t in re.findall(r"task:(\d+)", detail)} - {jax.process_index()})
    who = f"process {', '.join(map(str, tasks))}" if tasks else "a peer process"
    try:
        step = _resume_step() if _resume_step is not None else None
    except Exception:  # noqa: BLE001 - the report must not fail
        step = None
    resume = (
        f"a rerun of the same command resumes from step {step}"
        if step is not None
        else "a rerun of the same command starts over (no checkpoint yet)"
    )
    detail = " ".join(detail.split())[:200]
    return (
        f"error: {who} of the pod stopped responding, so process {jax.process_index()} stops "
        f"too; {resume} ({detail})"
    )


def collective_failed(detail: str) -> None:
    """A collective failed (e.g. gloo: "Connection closed by peer"), which names no process: the
    running PeerWatch names the dead one within its timeout (and ends this process); if it does
    not, the report goes out with `detail`."""
    import time

    if _active_watch is not None:
        time.sleep(_active_watch.timeout_s + 3 * _active_watch.interval_s)
    report_peer_lost(detail)


_active_watch = None  # the PeerWatch of this process, while it runs


def report_peer_lost(detail: str) -> None:
    """Prints the one-line report on stderr and ends this process at once (exit code 1): the
    collectives of a pod with a dead member can never complete."""
    from msc_seg import compile_cache

    sys.stdout.flush()
    compile_cache.write_stderr_now(peer_lost_message(detail) + "\n")
    os._exit(PEER_LOST_EXIT_CODE)


class PeerWatch:
    """Notices a dead peer within `timeout_s` and reports it (`report_peer_lost`), even while the
    main thread is blocked in a collective that can never complete.

    Every process bumps its own counter in JAX's coordination key-value store once a second and
    reads the others'; a peer whose counter has not moved for `timeout_s` (by this host's clock)
    is dead; a store that cannot be reached for `timeout_s` means process 0 (it hosts the
    store) is. A process that leaves normally marks itself done first, so its silence is no
    alarm. JAX's own heartbeat timeout is set longer (`jax_heartbeat_timeout`), so this report
    comes first instead of JAX's fatal-error abort.
    """

    def __init__(self, timeout_s: float, interval_s: float = 1.0):
        import threading

        import jax
        from jax._src import distributed as jax_distributed

        self.client = jax_distributed.global_state.client
        self.me, self.n = jax.process_index(), jax.process_count()
        self.timeout_s, self.interval_s = timeout_s, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msc-seg-peer-watch", daemon=True)

    def __enter__(self):
        global _active_watch
        if self.client is not None and self.n > 1:
            self._thread.start()
            _active_watch = self
        return self

    def __exit__(self, *exc):
        global _active_watch
        _active_watch = None
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            try:
                self.client.key_value_set(f"msc_seg/peer_done/{self.me}", "1", allow_overwrite=True)
            except Exception:  # noqa: BLE001 - leaving anyway
                pass

    def _key(self, i: int) -> str:
        return f"msc_seg/peer_beat/{i}"

    def _run(self) -> None:
        import time

        beat = 0
        seen = {i: (None, time.monotonic()) for i in range(self.n) if i != self.me}
        store_ok = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                beat += 1
                self.client.key_value_set(self._key(self.me), str(beat), allow_overwrite=True)
                for i, (last, since) in seen.items():
                    try:
                        value = self.client.key_value_try_get(self._key(i))
                    except Exception:  # noqa: BLE001 - not written yet
                        value = None
                    if value != last:
                        seen[i] = (value, now)
                    elif now - since > self.timeout_s and not self._done(i):
                        report_peer_lost(f"task:{i} sent no heartbeat for {self.timeout_s:.0f} s")
                store_ok = now
            except Exception as e:  # noqa: BLE001 - the store (process 0) is unreachable
                if now - store_ok > self.timeout_s:
                    report_peer_lost(f"task:0 (the coordinator) unreachable: {e}")

    def _done(self, i: int) -> bool:
        try:
            return self.client.key_value_try_get(f"msc_seg/peer_done/{i}") == "1"
        except Exception:  # noqa: BLE001 - not set
            return False


def jax_heartbeat_timeout(peer_timeout_s: int) -> int:
    """JAX's heartbeat timeout for a run whose PeerWatch uses `peer_timeout_s`: long enough that
    the one-line report comes before JAX's own abort."""
    return 2 * int(peer_timeout_s) + 10
