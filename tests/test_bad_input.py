"""A user's mistakes through the real command line: one line naming the culprit, exit code 2, no
traceback, and the workdir left exactly as it was.

Every probe runs `python -m msc_seg.main ...` as a subprocess (a few at a time, in one module
fixture) against a workdir as training leaves it: config.json of configs/demo.py and a
checkpoint of step 1 (zeros of the run's state: no train step is compiled). The read-only probes
bind-mount their folder read-only in a private mount namespace (`unshare -m`, as root) or, for
other users, take the write permission away.

    python tests/test_bad_input.py [REPO_ROOT]   # the table of every probe's result, e.g. for
                                                 # an older checkout (git worktree add ...)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = "--config=configs/demo.py"
DATA = "--config.dataset.data_dir={D}"

# A workdir as training leaves it, without compiling a train step (run in the repo under test).
MAKE_WORKDIR = """
import importlib.util, sys
import jax, jax.numpy as jnp
from msc_seg import experiment
spec = importlib.util.spec_from_file_location("demo_cfg", "configs/demo.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
c = mod.get_config()
c.dataset.data_dir = sys.argv[1]
exp = experiment.build(c, sys.argv[2], mode="train")
def zeros(s):
    if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jax.device_put(jnp.zeros(s.shape, s.dtype), s.sharding)
exp.checkpointer.save(1, jax.tree.map(zeros, exp.parts.abstract_state))
exp.close()
"""


@dataclasses.dataclass(frozen=True)
class Probe:
    """args: CLI arguments with {W} (the trained workdir, a fresh copy), {RW} (it, read-only),
    {R} (an empty read-only folder), {E} (a new workdir path), {F} (a file), {N} (a missing
    path), {D} (the data dir), {I} / {O} (images / output folders); culprit: text the error
    line must contain."""

    name: str
    args: tuple[str, ...]
    culprit: str


PROBES = [
    Probe("config_file_missing", ("--config=configs/nope.py", "--workdir={E}"), "configs/nope.py"),
    Probe("config_field_unknown", (CFG, "--config.nope=1", "--workdir={E}"), "nope"),
    Probe(
        "renamed_field_train_split",
        (CFG, "--config.dataset.train_split=nope", "--workdir={E}"),
        "dataset.train.split",
    ),
    Probe(
        "renamed_field_eval_split",
        (CFG, "--config.dataset.eval_split=nope", "--workdir={E}"),
        "eval.data.split",
    ),
    Probe("config_arg_not_an_int", ("--config=configs/demo.py:steps=abc", "--workdir={E}"), "abc"),
    Probe("config_arg_unknown", ("--config=configs/demo.py:nope=1", "--workdir={E}"), "nope"),
    Probe("override_not_an_int", (CFG, "--config.total_steps=abc", "--workdir={E}"), "total_steps"),
    Probe("mode_unknown", (CFG, "--mode=nope", "--workdir={E}"), "--mode"),
    Probe("eval_without_workdir", (CFG, "--mode=eval"), "--workdir"),
    Probe("workdir_read_only", (CFG, DATA, "--workdir={R}"), "read-only"),
    Probe("workdir_is_a_file", (CFG, DATA, "--workdir={F}"), "is a file"),
    Probe("workdir_under_a_file", (CFG, DATA, "--workdir={F}/run"), "under the file"),
    Probe(
        "batch_larger_than_split",
        (CFG, DATA, "--config.batch_size=4096", "--workdir={E}"),
        "batch_size",
    ),
    Probe(
        "train_split_missing",
        (CFG, DATA, "--config.dataset.train.split=nope", "--workdir={E}"),
        "dataset.train.split",
    ),
    Probe(
        "eval_split_missing",
        (CFG, DATA, "--config.eval.data.split=nope", "--workdir={E}"),
        "eval.data.split",
    ),
    Probe("dataset_unknown", (CFG, DATA, "--config.dataset.name=nope", "--workdir={E}"), "nope"),
    Probe("model_unknown", (CFG, DATA, "--config.model.name=nope", "--workdir={E}"), "model.name"),
    Probe(
        "dtype_unknown", (CFG, DATA, "--config.model.dtype=float99", "--workdir={E}"), "model.dtype"
    ),
    Probe(
        "model_init_missing", (CFG, DATA, "--config.model_init={N}", "--workdir={E}"), "model_init"
    ),
    Probe(
        "crop_not_a_multiple_of_32",
        (CFG, DATA, "--config.dataset.train.crop_size=(100,100)", "--workdir={E}"),
        "crop_size",
    ),
    Probe(
        "eval_window_larger_than_canvas",
        (
            CFG,
            DATA,
            "--config.eval.protocol.mode=slide",
            "--config.eval.protocol.window=(256,256)",
            "--workdir={E}",
        ),
        "eval.protocol.window",
    ),
    Probe(
        "resume_with_grad_clip_changed",
        (CFG, DATA, "--config.optimizer.grad_clip_norm=1.0", "--workdir={W}"),
        "optimizer.grad_clip_norm",
    ),
    Probe(
        "resume_with_contrastive_off",
        ("--config=configs/demo.py:contrastive=0", DATA, "--workdir={W}"),
        "loss.contrastive.weight",
    ),
    Probe(
        "resume_with_aux_weight_changed",
        (CFG, DATA, "--config.loss.aux_weight=0", "--workdir={W}"),
        "loss.aux_weight",
    ),
    Probe("eval_on_read_only_workdir", ("--mode=eval", "--workdir={RW}"), "read-only"),
    Probe("eval_missing_workdir", ("--mode=eval", "--workdir={N}"), "{N}"),
    Probe(
        "eval_checkpoint_step_missing",
        ("--mode=eval", "--workdir={W}", "--checkpoint=999"),
        "step 999",
    ),
    Probe(
        "predict_checkpoint_path_missing",
        ("--mode=predict", CFG, "--checkpoint={N}", "--images={I}", "--output={O}"),
        "{N}",
    ),
    Probe(
        "predict_images_missing",
        ("--mode=predict", "--workdir={W}", "--images={N}", "--output={O}"),
        "{N}",
    ),
]


def tree_digest(folder: pathlib.Path) -> dict[str, str] | None:
    """Every file under `folder` -> sha256 of its bytes (None: the folder does not exist)."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclasses.dataclass
class Outcome:
    probe: Probe
    returncode: int
    output: str
    seconds: float
    culprit: str
    changed: bool  # a folder the probe names (workdir, output) differs afterwards


def _python() -> str:
    return sys.executable


def _env(root: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(root), XLA_FLAGS="")
    return env


def make_fixture(root: pathlib.Path, base: pathlib.Path) -> dict[str, pathlib.Path]:
    """The shared, read-only inputs of the probes: data dir, trained workdir, an image folder."""
    paths = {"D": base / "data", "W0": base / "trained", "I": base / "images"}
    subprocess.run(
        [_python(), "-c", MAKE_WORKDIR, str(paths["D"]), str(paths["W0"])],
        cwd=root,
        env=_env(root),
        check=True,
        capture_output=True,
    )
    paths["I"].mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30)).save(paths["I"] / "a.png")
    return paths


def _read_only_command(folder: pathlib.Path, command: list[str]) -> list[str]:
    """`command` with `folder` read-only: a private read-only bind mount as root (chmod does
    not stop root), else the write permission taken away."""
    if os.geteuid() == 0:
        import shlex

        script = (
            f"mount --bind -o ro {shlex.quote(str(folder))} {shlex.quote(str(folder))} && "
            f"exec {shlex.join(command)}"
        )
        return ["unshare", "-m", "sh", "-c", script]
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    return command


def run_probe(root: pathlib.Path, fixture: dict, probe: Probe, base: pathlib.Path) -> Outcome:
    """Runs one probe in its own folder `base` and compares what it names before and after."""
    base.mkdir(parents=True)
    subs = {"D": fixture["D"], "I": fixture["I"], "N": base / "missing", "E": base / "new_run"}
    subs["O"] = base / "out"
    subs["F"] = base / "a_file"
    subs["F"].write_text("not a folder\n")
    uses = " ".join(probe.args)
    read_only = None
    if "{W}" in uses or "{RW}" in uses:
        key = "W" if "{W}" in uses else "RW"
        subs[key] = base / "run"
        shutil.copytree(fixture["W0"], subs[key])
        read_only = subs[key] if key == "RW" else None
    if "{R}" in uses:
        subs["R"] = read_only = base / "read_only"
        subs["R"].mkdir()
    fmt = {k: str(v) for k, v in subs.items()}
    args = [a.format(**fmt) for a in probe.args]
    watched = [subs[k] for k in ("W", "RW", "R", "E", "O", "F") if k in subs]
    before = [tree_digest(p) for p in watched]
    command = [_python(), "-m", "msc_seg.main", "--compile_cache=off", *args]
    if read_only is not None:
        command = _read_only_command(read_only, command)
    start = time.perf_counter()
    timeout = float(os.environ.get("BAD_INPUT_TIMEOUT_S", 300))
    try:
        done = subprocess.run(
            command, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:  # e.g. an older checkout that starts training
        returncode = -1
        output = f"{e.stdout or ''}{e.stderr or ''}\n(killed after {timeout:.0f} s)"
        output = output if isinstance(output, str) else output.decode()
    seconds = time.perf_counter() - start
    changed = [tree_digest(p) for p in watched] != before
    return Outcome(
        probe=probe,
        returncode=returncode,
        output=output.strip(),
        seconds=seconds,
        culprit=probe.culprit.format(**fmt),
        changed=changed,
    )


def run_all(root: pathlib.Path, base: pathlib.Path, workers: int = 3) -> dict[str, Outcome]:
    fixture = make_fixture(root, base)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {
            p.name: pool.submit(run_probe, root, fixture, p, base / "probes" / p.name)
            for p in PROBES
        }
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def outcomes():
    base = pathlib.Path(tempfile.mkdtemp(prefix="msc_seg_bad_input_"))
    try:
        yield run_all(ROOT, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_probe_names_are_unique_and_27_or_more():
    names = [p.name for p in PROBES]
    assert len(set(names)) == len(names) >= 27


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_a_mistake_ends_in_one_line_naming_it_exit_2_and_nothing_written(outcomes, probe):
    o = outcomes[probe.name]
    errors = [line for line in o.output.splitlines() if line.startswith("error: ")]
    assert o.returncode == 2, o.output
    assert "Traceback" not in o.output, o.output
    assert len(errors) == 1 and o.culprit in errors[0], o.output
    assert not o.changed, f"{probe.name} changed a folder it names:\n{o.output}"


def _table(outcomes: dict[str, Outcome]) -> str:
    rows = ["| probe | exit | s | ok | last line |", "|---|---|---|---|---|"]
    for name, o in outcomes.items():
        lines = o.output.splitlines() or [""]
        ok = (
            o.returncode == 2
            and "Traceback" not in o.output
            and any(o.culprit in x for x in lines if x.startswith("error: "))
            and not o.changed
        )
        last = lines[-1][:140].replace("|", "\\|")
        n = len(lines)
        rows.append(
            f"| {name} | {o.returncode} | {o.seconds:.0f} | {'yes' if ok else 'NO'} | "
            f"{last} ({n} lines{', changed' if o.changed else ''}) |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    repo = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT).resolve()
    work = pathlib.Path(tempfile.mkdtemp(prefix="msc_seg_bad_input_"))
    t0 = time.perf_counter()
    results = run_all(repo, work)
    print(_table(results))
    print(f"{time.perf_counter() - t0:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


# Refused from the command line, the config file and the workdir's path alone: none of these
# needs JAX or TensorFlow.
_IMPORT_FREE_MISTAKES = [
    ("--config=configs/nope.py", "--workdir=/nonexistent/run"),
    (CFG, "--config.nope=1", "--workdir=/nonexistent/run"),
    (CFG, "--config.total_steps=abc", "--workdir=/nonexistent/run"),
    (CFG, "--mode=eval"),
    ("--mode=eval", "--workdir=/nonexistent/run"),
    (CFG, f"--workdir={pathlib.Path(__file__).resolve()}"),  # a file
]


@pytest.mark.parametrize("args", _IMPORT_FREE_MISTAKES)
def test_a_command_line_mistake_is_refused_before_jax_or_tensorflow_is_imported(args):
    """A typo costs a fraction of a second (importing JAX alone takes ~1.5 s on a 2-core CPU)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['msc_seg.main', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('msc_seg.main', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('EXIT', e.code, 'jax' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [_python(), "-c", code], cwd=ROOT, env=_env(ROOT), capture_output=True, text=True
    )
    assert result.stdout.split()[-4:] == ["EXIT", "2", "False", "False"], result.stderr
    assert result.stderr.strip().startswith("error: "), result.stderr
