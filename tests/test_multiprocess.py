"""A pod on localhost: two real processes x 4 CPU devices joined by jax.distributed (gloo), driven
through the CLI as a cluster would (docs/SCALING.md).

One sequence (each run needs the one before):
  1. 2 x 4 trains with evaluation (overlay images logged) and checkpoints; SIGTERM reaches
     process 1 only -> both processes save the same step and exit 0;
  2. a fresh 1 x 8 run: its first losses equal the 2 x 4 run's (same global batches);
  3. 1 x 8 resumes the 2 x 4 workdir;
  4. 2 x 4 resumes it again; process 1 is killed (kill -9) -> process 0 prints one line naming
     process 1 and the step a rerun resumes from, and exits 1 within the peer timeout.
Tiny model (ResNet-tiny UPerNet, 64 px crops, no contrastive term) so that the compiles stay
short; the persistent compilation cache is used by the single-process runs only (it is off for
multi-process runs, see compile_cache.enable).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from msc_seg.data import builders, registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_TIMEOUT = 10
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _jaxlib_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("jaxlib").split(".")[:2] if p.isdigit())


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    # conftest's flags (fast tiny compiles), with this process's device count.
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    if _jaxlib_version() == (0, 10):
        # XLA CPU's older elemental emitters compile this test's programs ~30% faster (the train
        # step: 20.7 -> 14.6 s). Only here: they round differently from the default emitters
        # across fusion choices (remat-vs-plain gradients differ by 2e-2 relative), which the
        # in-process equality tests would see; only the jaxlib it was measured on, since XLA
        # aborts on a flag it no longer knows.
        flags += " --xla_cpu_use_fusion_emitters=false"
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{flags.strip()} --xla_force_host_platform_device_count={devices}",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def _flags(workdir, data_dir, cache, steps: int, nproc: int, evaluate: bool = True) -> list[str]:
    """evaluate=False: no periodic evaluation (run 1 checks it; the others skip its compile)."""
    return [
        sys.executable,
        "-m",
        "msc_seg.main",
        f"--config=configs/demo.py:steps={steps},contrastive=0",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        "--config.dataset.train.crop_size=64,64",
        "--config.model.decoder_channels=16",
        "--config.model.aux_channels=8",
        "--config.model.embedding_dim=16",
        "--config.log_every_steps=1",
        f"--config.eval_every_steps={2 if evaluate else 1000}",
        "--config.checkpoint_every_steps=2",
        "--config.eval.batch_size=8",
        "--config.eval.max_examples=8",
        "--config.schedule.warmup_steps=1",
        f"--compile_cache={cache if nproc == 1 else 'off'}",
        f"--peer_timeout={PEER_TIMEOUT}",
    ]


class Pod:
    """`nproc` processes of one run, their output in WORKDIR.pI.log; all killed on failure."""

    def __init__(self, tmp: pathlib.Path, name: str, nproc: int, flags: list[str]):
        self.logs = [tmp / f"{name}.p{i}.log" for i in range(nproc)]
        port = _free_port()
        self.procs = []
        for i in range(nproc):
            extra = (
                [f"--coordinator_address=localhost:{port}", f"--num_processes={nproc}"]
                + [f"--process_id={i}"]
                if nproc > 1
                else []
            )
            with open(self.logs[i], "w") as out:
                self.procs.append(
                    subprocess.Popen(
                        flags + extra,
                        cwd=ROOT,
                        env=_env(8 // nproc),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait_for(self, i: int, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while text not in self.log(i):
            if time.monotonic() > end or any(p.poll() is not None for p in self.procs):
                self.kill()
                raise AssertionError(f"no {text!r} from process {i}:\n{self.log(i)[-3000:]}")
            time.sleep(0.5)

    def wait(self, timeout: float) -> list[int]:
        end = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, end - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            logs = "\n".join(self.log(i)[-2000:] for i in range(len(self.procs)))
            raise AssertionError(f"the run did not end within {timeout} s:\n{logs}") from None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    builders.prepare_dataset(registry.get_dataset_spec("demo"), str(d))
    return str(d)


def test_pod_of_two_processes_trains_evaluates_stops_resumes_and_reports_a_dead_peer(
    data_dir, tmp_path
):
    cache = tmp_path / "jax_cache"
    pod_dir, single_dir = tmp_path / "pod", tmp_path / "single"

    # 1. 2 x 4: train, evaluate with images, checkpoint; SIGTERM to process 1 only.
    pod = Pod(tmp_path, "pod1", 2, _flags(pod_dir, data_dir, cache, steps=200, nproc=2))
    try:
        pod.wait_for(0, "Evaluation at step 2", timeout=900)
        pod.wait_for(0, "step 4/200", timeout=300)
        pod.procs[1].send_signal(signal.SIGTERM)
        codes = pod.wait(timeout=300)
    finally:
        pod.kill()
    assert codes == [0, 0], [pod.log(0)[-2000:], pod.log(1)[-2000:]]
    saved = [
        int(line.split("saved step ")[1].split(";")[0])
        for i in (0, 1)
        for line in pod.log(i).splitlines()
        if line.startswith("SIGTERM: saved step ")
    ]
    assert len(saved) == 2 and saved[0] == saved[1], saved  # one pod-wide decision
    stop = saved[0]
    assert 4 <= stop < 200 and stop in _saved_steps(pod_dir)
    assert (pod_dir / "eval_2.json").exists()
    events = b"".join(p.read_bytes() for p in pod_dir.glob("events.out.tfevents.*"))
    assert b"eval/prediction" in events  # overlay images gathered and written once
    assert len(list(pod_dir.glob("events.out.tfevents.*"))) == 1
    pod_losses = _losses(pod_dir)

    # 2. a fresh 1 x 8 run (same total_steps, so the same learning-rate schedule) sees the same
    # global batches: equal losses.
    single = Pod(
        tmp_path,
        "single",
        1,
        _flags(single_dir, data_dir, cache, steps=200, nproc=1, evaluate=False),
    )
    try:
        single.wait_for(0, "step 3/200", timeout=900)
        single.procs[0].send_signal(signal.SIGTERM)
        assert single.wait(timeout=300) == [0], single.log(0)[-3000:]
    finally:
        single.kill()
    single_losses = _losses(single_dir)
    for step in (1, 2, 3):
        np.testing.assert_allclose(single_losses[step], pod_losses[step], rtol=2e-4)

    # 3. 1 x 8 resumes the pod's workdir for two steps or more, then is stopped (the program of
    # run 2: its compiles come from the persistent cache).
    flags = _flags(pod_dir, data_dir, cache, steps=200, nproc=1, evaluate=False)
    resume = Pod(tmp_path, "resume1x8", 1, flags)
    try:
        # A run's first step prints no line (its rate would include the compile).
        resume.wait_for(0, f"step {stop + 2}/200", timeout=900)
        resume.procs[0].send_signal(signal.SIGTERM)
        assert resume.wait(timeout=300) == [0], resume.log(0)[-3000:]
    finally:
        resume.kill()
    assert f"Resuming from step {stop}" in resume.log(0)
    assert "ready in" in resume.log(0) and "loaded from the persistent compilation cache" in (
        resume.log(0)
    ), resume.log(0)[-3000:]
    resumed = max(_saved_steps(pod_dir))
    assert resumed > stop

    # 4. 2 x 4 resumes again; process 1 dies (kill -9): process 0 reports it in one line.
    flags = _flags(pod_dir, data_dir, cache, steps=200, nproc=2, evaluate=False)
    pod = Pod(tmp_path, "pod2", 2, flags)
    try:
        pod.wait_for(0, f"Resuming from step {resumed}", timeout=300)
        pod.wait_for(0, f"step {resumed + 2}/200", timeout=900)
        pod.procs[1].kill()
        killed = time.monotonic()
        code = pod.procs[0].wait(timeout=PEER_TIMEOUT * 6 + 60)  # > the deadline asserted below
        waited = time.monotonic() - killed
    finally:
        pod.kill()
    assert code == 1, pod.log(0)[-3000:]
    lines = [line for line in pod.log(0).splitlines() if "stopped responding" in line]
    assert len(lines) == 1, pod.log(0)[-3000:]
    last = max(_saved_steps(pod_dir))
    assert lines[0].startswith("error: process 1 of the pod stopped responding")
    assert f"resumes from step {last}" in lines[0]
    assert waited < PEER_TIMEOUT * 3 + 30


_WATCHED_POD = """
import sys, time
from msc_seg import distributed
launch = distributed.resolve(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
distributed.initialize(launch, peer_timeout_s={timeout}, connect_timeout_s=60)
distributed.on_peer_lost(lambda: 7)
with distributed.PeerWatch({timeout}):
    print("joined", flush=True)
    time.sleep(600)
"""


def test_death_of_the_coordinator_process_is_reported_in_one_line_by_the_other(tmp_path):
    # Process 0 hosts JAX's coordination service: when it dies, JAX's client in process 1 fails
    # at once; without distributed.py's hook that is JAX's own multi-line fatal error (exit 1
    # or 134, no step to resume from). No training here: this takes ~15 s.
    script = tmp_path / "watched_pod.py"
    script.write_text(_WATCHED_POD.format(timeout=PEER_TIMEOUT))
    address = f"localhost:{_free_port()}"
    logs = [tmp_path / f"p{i}.log" for i in (0, 1)]
    procs = []
    for i in (0, 1):
        with open(logs[i], "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), address, str(i)],
                    cwd=ROOT,
                    env=_env(1),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        end = time.monotonic() + 120
        while not all("joined" in log.read_text() for log in logs):
            assert time.monotonic() < end and all(p.poll() is None for p in procs), [
                log.read_text()[-2000:] for log in logs
            ]
            time.sleep(0.2)
        procs[0].kill()
        killed = time.monotonic()
        code = procs[1].wait(timeout=PEER_TIMEOUT * 6 + 60)  # > the deadline asserted below
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = logs[1].read_text()
    assert code == 1, text[-3000:]
    lines = [line for line in text.splitlines() if "stopped responding" in line]
    assert len(lines) == 1, text[-3000:]
    assert lines[0].startswith("error: process 0 of the pod stopped responding, so process 1")
    assert "resumes from step 7" in lines[0]
    assert waited < PEER_TIMEOUT * 3 + 30
