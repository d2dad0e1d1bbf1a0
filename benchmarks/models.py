"""Speed and memory of the paper's seven models: forward and train step, compile time, peak memory.

    python benchmarks/models.py [--models deeplabv3,hrnet,...] [--batch 2] [--size 512]
        [--dtype float32|bfloat16] [--repeats 3] [--repeats-override upernet_swin_l=2]
        [--json OUT.json [--resume]] [--torch-peer [--torch-contrastive-weights 0.1,0]]

Models (the paper's), each built through the project's own config -> run path
(`experiment.build_train_parts`: the model, optimizer, objective and the real jitted train step of
`msc_seg/train_step.py`; CE + aux CE where the model has an aux head + 0.1 x MS+CS contrastive):
  deeplabv3        DeepLabV3-ResNet101, output stride 8, contrastive taps layer1 + layer4
                   (S = 2, within-scale weights 1.0 / 0.7), SGD
  hrnet            HRNet-W48 (4 taps), SGD
  ocrnet           OCRNet-HRNet-W48 (4 taps, 0.4 aux CE on the soft object regions), SGD
  upernet_swin_t/s/b/l  UPerNet-Swin (4 FPN taps, 0.4 aux CE), AdamW, configs/ade20k_upernet.py
All models use 150 classes (ADE20K) and synthetic inputs: normal random "normalised" images and
labels made of 32x32 blocks drawn from 12 random classes per image (speed does not depend on
content; the contrastive sampler is fixed-shape). Contrastive groups hold min(4, batch) images.

Each model runs in its own subprocess (clean peak memory; one crash does not stop the table):
  params           parameter count (nnx.Param scalars)
  fwd              jit(model(images, train=False).logits): median of --repeats timed calls after
                   --warmup calls, each ending in block_until_ready
  train            the jitted train step (donated state), timed the same way
  state init       seconds to build the initial state (the initialiser's trace + compile + run)
  compile          seconds of jit lower + XLA compile (tracing included), separate from the run;
                   compile train peak RSS: the host's peak resident set once the step compiled
  peak mem         GPU/TPU: the device's peak_bytes_in_use (memory_stats); CPU: the process's peak
                   resident set (ru_maxrss), which includes the imports (JAX, TensorFlow)
  XLA train plan   arguments + outputs + temporaries - aliased, of the compiled train step
  mean load        the 1-minute load average over the model's subprocess (shared machines)
The machine may be shared: the load average at start and end is printed with the table.
`--resume` keeps the successful rows of the same batch / size / dtype already in the --json file
and runs only the other models (e.g. after one was killed for memory), then prints the full table.
The table goes to stdout; progress and the children's logs go to stderr.
--torch-peer: then, for the UPerNet-Swins of --models named in --torch-peer-models (Swin-T by
default), our train step against HF transformers' PyTorch UperNetForSemanticSegmentation on the
same cores, steps alternated (torch_peer.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch_peer  # benchmarks/torch_peer.py (imports neither torch nor JAX at module level)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 150
LABEL_BLOCK = 32  # labels are constant on LABEL_BLOCK x LABEL_BLOCK blocks
CLASSES_PER_IMAGE = 12
SCALE_WEIGHTS = (1.0, 0.7, 0.4, 0.1)  # the paper's within-scale weights, finest first
GIB = 1024**3
# rows with equal settings are comparable (--resume)
SETTINGS = ("batch", "size", "dtype", "model_kwargs")


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One benchmarked model: its table label and its config (model.name, model.backbone)."""

    label: str
    name: str
    backbone: str


MODELS = {
    "deeplabv3": ModelCase("DeepLabV3-R101 (OS8)", "deeplabv3", "resnet101"),
    "hrnet": ModelCase("HRNet-W48", "hrnet", "hrnet_w48"),
    "ocrnet": ModelCase("OCRNet-HRNet-W48", "ocrnet", "hrnet_w48"),
    "upernet_swin_t": ModelCase("UPerNet-Swin-T", "upernet", "swin_t"),
    "upernet_swin_s": ModelCase("UPerNet-Swin-S", "upernet", "swin_s"),
    "upernet_swin_b": ModelCase("UPerNet-Swin-B", "upernet", "swin_b"),
    "upernet_swin_l": ModelCase("UPerNet-Swin-L", "upernet", "swin_l"),
}


# ------------------------------------------------------------------------------------------------
# Child process: one model.


def make_benchmark_config(
    case: ModelCase, batch: int, size: int, dtype: str, contrastive_weight: float = 0.1
):
    """The paper's training recipe for `case` at a (size, size) crop and global batch `batch`.

    Swin: configs/ade20k_upernet.py as it is (AdamW 6e-5, weight decay 0.01 without norms /
    position tables, drop path 0.3, 0.4 aux CE). CNNs (DeepLabV3, HRNet, OCRNet):
    `_cnn_recipe`. All: contrastive weight 0.1, tau 0.1, the first S of the weights 1/0.7/0.4/0.1.
    """
    c = load_ade20k_upernet(case.backbone) if case.name == "upernet" else _cnn_recipe(case)
    c.batch_size = batch
    c.dataset.name = "ade20k"
    c.dataset.train.crop_size = (size, size)
    c.mesh.data = 1
    c.model.dtype = dtype
    cc = c.loss.contrastive
    cc.weight = contrastive_weight
    cc.temperature = 0.1
    num_scales = len(c.model.taps) if c.model.name == "deeplabv3" else 4
    cc.scale_weights = SCALE_WEIGHTS[:num_scales]
    # The reference's per-GPU group is 4 images; a smaller batch is one group.
    cc.images_per_group = 4 if batch % 4 == 0 else batch
    return c


def build_benchmark_parts(
    name: str, batch: int, size: int, dtype: str, contrastive_weight: float = 0.1, **model_fields
):
    """-> (config, mesh, parts): model `name`'s benchmark config (make_benchmark_config, then
    `model_fields` set on config.model), validated, a 1-device mesh, and the real train parts
    (experiment.build_train_parts: model, optimizer, objective, jitted train step)."""
    from msc_seg import config_lib, experiment
    from msc_seg import mesh as mesh_lib

    config = make_benchmark_config(MODELS[name], batch, size, dtype, contrastive_weight)
    for field, value in model_fields.items():
        setattr(config.model, field, value)
    # The cross-field checks only: the dataset registry (TensorFlow) is not needed here.
    config_lib.validate(config, experiment.runtime_facts())
    mesh = mesh_lib.make_mesh(config.mesh.data)
    return config, mesh, experiment.build_train_parts(config, NUM_CLASSES, mesh)


def load_ade20k_upernet(backbone: str):
    """configs/ade20k_upernet.py with `backbone` (swin_t | swin_s | swin_b | swin_l)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ade", ROOT / "configs" / "ade20k_upernet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f"backbone={backbone}")


def _cnn_recipe(case: ModelCase):
    """The released HRNet-OCR ADE20K recipe (recipes.py) with the case's CNN: SGD momentum 0.9,
    poly 0.9 without warm-up, decay on every parameter, align_corners=True, OCR dropout 0;
    DeepLabV3 at output stride 8 with taps layer1 + layer4 (the reference's default)."""
    from msc_seg import recipes

    block = {"hrnet": "hrnet", "ocrnet": "ocrnet_hrnet", "deeplabv3": "deeplabv3"}[case.name]
    c = recipes.paper_config(block, "ade20k", None)
    c.model.backbone = case.backbone
    return c


def make_synthetic_batch(batch: int, size: int, seed: int = 0) -> dict:
    """{'image': float32 [B,size,size,3] standard normal (a normalised image),
    'label': int32 [B,size,size] constant on 32x32 blocks, CLASSES_PER_IMAGE classes per image}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    blocks = -(-size // LABEL_BLOCK)
    label = np.empty((batch, size, size), np.int32)
    for b in range(batch):
        classes = rng.choice(NUM_CLASSES, CLASSES_PER_IMAGE, replace=False)
        grid = rng.choice(classes, (blocks, blocks))
        label[b] = np.kron(grid, np.ones((LABEL_BLOCK, LABEL_BLOCK), np.int64))[:size, :size]
    return {"image": image, "label": label}


def peak_host_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on device 0 (GPU/TPU), or None where the backend keeps no stats (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def compile_timed(jitted, *args, what: str):
    """-> (compiled executable, {what}_lower_s: tracing + lowering seconds, {what}_xla_compile_s,
    {what}_compile_s: their sum, and the peak host RSS after each (compile memory on CPU))."""
    t, cpu = time.perf_counter(), time.process_time()
    lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - t
    flops = compiled_flops(lowered)  # the HLO's own count: backend library calls included
    rss_lowered = peak_host_rss_bytes()
    t = time.perf_counter()
    compiled = lowered.compile()
    xla_s = time.perf_counter() - t
    stats = {
        f"{what}_compile_s": lower_s + xla_s,
        f"{what}_compile_cpu_s": time.process_time() - cpu,  # all threads; steadier when shared
        f"{what}_lower_s": lower_s,
        f"{what}_xla_compile_s": xla_s,
        f"peak_host_rss_after_{what}_lower_bytes": rss_lowered,
        f"{what}_flops": flops,
        f"peak_host_rss_after_{what}_compile_bytes": peak_host_rss_bytes(),
    }
    print(
        f"  {what}: traced + lowered in {lower_s:.1f} s, XLA compile {xla_s:.1f} s "
        f"({stats[f'{what}_compile_cpu_s']:.1f} s CPU in all), peak RSS "
        f"{stats[f'peak_host_rss_after_{what}_compile_bytes'] / GIB:.2f} GiB",
        flush=True,
    )
    return compiled, stats


def compiled_flops(compiled) -> float | None:
    """XLA's FLOP count of one call of a lowered (or compiled) program, None where unavailable.

    The lowered (pre-optimisation) HLO counts every convolution and matmul; a GPU-compiled
    program hides those in cuDNN / cuBLAS custom calls and counts far too few."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have no cost analysis
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def planned_bytes(compiled) -> int | None:
    """XLA's planned memory of `compiled`: arguments + outputs + temporaries - aliased."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


@contextlib.contextmanager
def timing_lock():
    """Holds the file lock named by $MSC_SEG_BENCH_TIMING_LOCK (if set) while timing, so that
    several model processes sharing one GPU compile in parallel but never time at once."""
    path = os.environ.get("MSC_SEG_BENCH_TIMING_LOCK")
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def time_forward(model_def, state, images, warmup: int, repeats: int) -> dict:
    """Inference (train=False, logits only): compile seconds and per-call seconds."""
    import jax

    def forward(params, batch_stats, images):
        return model_def.merge(params, batch_stats)(images, train=False).logits

    compiled, stats = compile_timed(
        jax.jit(forward), state.params, state.batch_stats, images, what="fwd"
    )
    times = []
    with timing_lock():
        for i in range(warmup + repeats):
            t = time.perf_counter()
            jax.block_until_ready(compiled(state.params, state.batch_stats, images))
            elapsed = time.perf_counter() - t
            if i >= warmup:
                times.append(elapsed)
            print(f"  fwd call {i + 1}/{warmup + repeats}: {elapsed:.2f} s", flush=True)
    return stats | {"fwd_times_s": times}


def time_train(config, parts, state, batch, warmup: int, repeats: int, save):
    """The real jitted train step (experiment.build_train_parts): compile seconds, per-step
    seconds, the last loss, XLA plan. `save(partial)` is called once compiled (a child killed
    while stepping keeps the compile)."""
    import jax

    key = jax.random.key(config.seed)
    jitted = parts.train_step
    compiled, stats = compile_timed(jitted, state, batch, key, what="train")
    stats["xla_train_plan_bytes"] = planned_bytes(compiled)
    save(stats | {"phase": "train step (compiled)"})
    times, metrics = [], None
    with timing_lock():
        for i in range(warmup + repeats):
            t = time.perf_counter()
            state, metrics = jax.block_until_ready(compiled(state, batch, key))
            elapsed = time.perf_counter() - t
            if i >= warmup:
                times.append(elapsed)
            print(f"  train step {i + 1}/{warmup + repeats}: {elapsed:.2f} s", flush=True)
    return stats | {
        "train_times_s": times,
        "loss": float(metrics["loss"]),
        "nonfinite": float(metrics["nonfinite"]) > 0,
    }


def benchmark_one_model(name: str, args, save) -> dict:
    """Everything measured for one model (runs in a child process).

    `save(result)` is called after every phase with what is known so far (and the phase now
    running), so that a child killed for memory in the train step still reports its forward."""
    import jax

    from msc_seg import mesh as mesh_lib
    from msc_seg.train import release_setup_programs
    from msc_seg.train_state import count_params

    case = MODELS[name]
    t = time.perf_counter()
    config, mesh, parts = build_benchmark_parts(
        name,
        args.batch,
        args.size,
        args.dtype,
        args.contrastive_weight,
        **parse_model_kwargs(args.model_kwargs),
    )
    batch = mesh_lib.host_batch_to_global(make_synthetic_batch(args.batch, args.size), mesh)
    rss_after_imports = peak_host_rss_bytes()  # the baseline: before the weights are created
    model_def = parts.model_def
    state = jax.block_until_ready(parts.create_state())
    release_setup_programs()  # as msc_seg.train does
    init_s = time.perf_counter() - t
    result = {
        "model": name,
        "label": case.label,
        "params": count_params(state.params),
        "init_s": init_s,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "num_devices_used": 1,
        "jax_version": jax.__version__,
        "rss_after_imports_bytes": rss_after_imports,
        "phase": "forward",
    }
    print(f"  {name}: {result['params']:,} params, state built in {init_s:.1f} s", flush=True)
    save(result)
    result |= time_forward(model_def, state, batch["image"], args.warmup, args.repeats)
    result |= {"phase": "train step (compiling)"}
    save(result)
    result |= time_train(config, parts, state, batch, args.warmup, args.repeats, save)
    result["peak_host_rss_bytes"] = peak_host_rss_bytes()
    result["device_peak_bytes"] = device_peak_bytes()
    result["phase"] = "done"
    return result


def volunteer_for_oom_killer() -> None:
    """On a shared machine, let the kernel kill this benchmark rather than a neighbour's job
    when memory runs out (Linux; raising one's own oom_score_adj needs no privilege)."""
    try:
        pathlib.Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def child_main(args) -> None:
    """Runs one model and writes its results (or the error) as JSON to --result-file."""
    volunteer_for_oom_killer()
    out = pathlib.Path(args.result_file)
    partial = {"model": args.child, "phase": "start-up"}

    def save(result: dict) -> None:
        partial.update(result)
        out.write_text(json.dumps(partial))

    try:
        save(benchmark_one_model(args.child, args, save))
    except Exception as e:  # the parent reports the error in the table and goes on
        traceback.print_exc()
        save({"error": f"{type(e).__name__} in {partial['phase']}: {e}"[:300]})


# ------------------------------------------------------------------------------------------------
# Parent process: one child per model, then the table.


def repeats_for(name: str, args) -> int:
    return args.overrides.get(name, args.repeats)


def run_child(name: str, args) -> dict:
    """Runs `name` in a fresh interpreter; its output goes to our stderr (the log)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = f.name
    cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        f"--child={name}",
        f"--result-file={result_file}",
        f"--batch={args.batch}",
        f"--size={args.size}",
        f"--dtype={args.dtype}",
        f"--repeats={repeats_for(name, args)}",
        f"--warmup={args.warmup}",
        f"--contrastive-weight={args.contrastive_weight}",
        f"--model-kwargs={args.model_kwargs}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
    rss_seen, timed_out, over_rss, loads = 0, False, False, []
    while proc.poll() is None:  # watch the child's peak RSS: a child killed cannot report it
        rss_seen = max(rss_seen, proc_peak_rss_bytes(proc.pid))
        loads.append(os.getloadavg()[0])
        if time.perf_counter() - t > args.timeout:
            proc.kill()
            timed_out = True
        if args.max_rss_gb and proc_rss_bytes(proc.pid) > args.max_rss_gb * GIB:
            proc.kill()  # on a shared machine, stop before the kernel's OOM killer has to
            over_rss = True
        time.sleep(1.0)
    text = pathlib.Path(result_file).read_text()
    pathlib.Path(result_file).unlink(missing_ok=True)
    result = json.loads(text) if text else {"model": name, "phase": "start-up"}
    result["peak_host_rss_seen_bytes"] = rss_seen or None
    # The machine may be shared: the mean 1-minute load over the child's run says how much.
    result["load_mean"] = statistics.fmean(loads) if loads else None
    if timed_out:
        result["error"] = f"timed out after {args.timeout:.0f} s in {result['phase']}"
    elif over_rss:
        result["error"] = f"killed at --max-rss-gb {args.max_rss_gb:g} in {result['phase']}"
    elif proc.returncode and "error" not in result:
        result["error"] = describe_exit(proc.returncode, result["phase"], rss_seen)
    result["wall_s"] = time.perf_counter() - t
    result["repeats"] = repeats_for(name, args)
    result |= {"batch": args.batch, "size": args.size, "dtype": args.dtype}
    result["contrastive_weight"] = args.contrastive_weight
    result["model_kwargs"] = args.model_kwargs
    return result


def proc_peak_rss_bytes(pid: int) -> int:
    """Peak RSS (VmHWM) of process `pid` from /proc (Linux), 0 where unavailable."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_rss_bytes(pid: int) -> int:
    """Current RSS (VmRSS) of process `pid` from /proc (Linux), 0 where unavailable."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def describe_exit(returncode: int, phase: str, rss_seen: int) -> str:
    """A table-sized reason for a child that died without reporting an error."""
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with {returncode}"
    text = f"{how} in {phase}"
    if returncode == -9 and rss_seen:  # SIGKILL with a large RSS: the kernel's OOM killer
        text += f" (out of memory? peak RSS seen {rss_seen / GIB:.1f} GiB)"
    return text


def load_previous_results(args) -> dict[str, dict]:
    """For --resume: the successful rows of the --json file measured with the same batch, size,
    dtype and model fields (a row that does not record a setting is taken as matching), by model."""
    path = pathlib.Path(args.json)
    if not (args.resume and path.exists()):
        return {}
    keep = {}
    for r in json.loads(path.read_text()):
        same = all(r.get(k, getattr(args, k)) == getattr(args, k) for k in SETTINGS)
        if "error" not in r and same:
            keep[r["model"]] = r | {"reused": True}
    return keep


def format_row(r: dict, batch: int) -> str:
    label = MODELS[r["model"]].label
    if "error" in r:
        return format_failed_row(r, batch)
    fwd_s = statistics.median(r["fwd_times_s"])
    train_s = statistics.median(r["train_times_s"])
    mem = r["device_peak_bytes"] or r["peak_host_rss_bytes"]
    plan = r["xla_train_plan_bytes"]
    flag = " (NON-FINITE loss)" if r["nonfinite"] else ""
    compile_rss = r["peak_host_rss_after_train_compile_bytes"]
    return (
        f"| {label}{flag} | {r['params'] / 1e6:.1f} M | {r['init_s']:.1f} | {1000 * fwd_s:.0f} | "
        f"{batch / fwd_s:.2f} | {train_s:.2f} | {batch / train_s:.3f} | "
        f"{r['fwd_compile_s']:.1f} | {r['train_compile_s']:.1f} | {compile_rss / GIB:.2f} | "
        f"{mem / GIB:.2f} | {'-' if plan is None else f'{plan / GIB:.2f}'} | {format_load(r)} |"
    )


def format_failed_row(r: dict, batch: int) -> str:
    """The columns measured before the child failed, then the reason in the train columns."""
    label = MODELS[r["model"]].label
    params = f"{r['params'] / 1e6:.1f} M" if "params" in r else ""
    fwd = ["", "", ""]
    if "fwd_times_s" in r:
        fwd_s = statistics.median(r["fwd_times_s"])
        fwd = [f"{1000 * fwd_s:.0f}", f"{batch / fwd_s:.2f}", f"{r['fwd_compile_s']:.1f}"]
    init = f"{r['init_s']:.1f}" if "init_s" in r else ""
    train_compile = f"{r['train_compile_s']:.1f}" if "train_compile_s" in r else ""
    compile_rss = r.get("peak_host_rss_after_train_compile_bytes")
    compile_rss = f"{compile_rss / GIB:.2f}" if compile_rss else ""
    plan = r.get("xla_train_plan_bytes")
    seen = r.get("peak_host_rss_seen_bytes")
    return (
        f"| {label} | {params} | {init} | {fwd[0]} | {fwd[1]} | failed: {r['error']} | | "
        f"{fwd[2]} | {train_compile} | {compile_rss} | {f'>= {seen / GIB:.2f}' if seen else ''} | "
        f"{f'{plan / GIB:.2f}' if plan else ''} | {format_load(r)} |"
    )


def format_load(r: dict) -> str:
    load = r.get("load_mean")
    return "-" if load is None else f"{load:.1f}"


def machine_line(results: list[dict]) -> str:
    ok = [r for r in results if "backend" in r]
    if not ok:
        return f"machine: {os.cpu_count()} CPU cores (no model finished)"
    r = ok[0]
    return (
        f"machine: jax {r['jax_version']} backend `{r['backend']}`, device `{r['device_kind']}` "
        f"(1 device used), {os.cpu_count()} CPU cores, {platform.machine()}"
    )


def format_report(results: list[dict], args, wall_s: float, load: tuple) -> str:
    ok = [r for r in results if "error" not in r]
    gpu = any(r["device_peak_bytes"] for r in ok)
    mem_what = "device peak_bytes_in_use" if gpu else "host peak RSS, imports included"
    lines = [
        f"command: `{args.command}`",
        machine_line(results),
        f"load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f} "
        "(the machine may be shared with other jobs)",
        f"settings: batch {args.batch}, {args.size}x{args.size}, {args.dtype}, model fields "
        f"{args.model_kwargs or '-'}, 150 classes, "
        f"synthetic data; median of timed runs after {args.warmup} warm-up; total wall "
        f"{wall_s / 60:.1f} min (this invocation), "
        f"{sum(r['wall_s'] for r in results) / 60:.1f} min (sum over the models' subprocesses)",
        "",
        f"| model | params | state init s | fwd ms | fwd img/s | train s/step | train img/s | "
        f"compile fwd s | compile train s | compile train peak RSS GiB (host) | "
        f"peak mem GiB ({mem_what}) | XLA train plan GiB | mean load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(r, args.batch) for r in results]
    repeats = sorted({(r["model"], r["repeats"]) for r in results}, key=lambda x: x[0])
    lines.append("")
    lines.append("timed runs per model: " + ", ".join(f"{m} {n}" for m, n in repeats))
    lines.append(
        f"mean load: the 1-minute load average over the model's run ({os.cpu_count()} cores; the "
        "benchmark alone adds about the number of cores XLA uses)"
    )
    reused = [r["model"] for r in results if r.get("reused")]
    if reused:
        lines.append(f"rows reused from {args.json} (--resume): {', '.join(reused)}")
    if ok and not gpu:
        base = statistics.median(r["rss_after_imports_bytes"] for r in ok)
        lines.append(f"host RSS after imports and batch creation (baseline): {base / GIB:.2f} GiB")
    return "\n".join(lines)


def parse_overrides(text: str) -> dict[str, int]:
    """'upernet_swin_l=2,upernet_swin_b=2' -> {name: repeats}."""
    out = {}
    for item in filter(None, text.split(",")):
        name, _, n = item.partition("=")
        if name not in MODELS or not n.isdigit() or int(n) < 1:
            raise SystemExit(
                f"--repeats-override item {item!r}: use MODEL=N with N >= 1 and MODEL in "
                f"{sorted(MODELS)}"
            )
        out[name] = int(n)
    return out


def parse_model_kwargs(text: str) -> dict:
    """'remat=blocks,scan_blocks=False' -> {'remat': 'blocks', 'scan_blocks': False}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key] = {"True": True, "False": False}.get(value, value)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="all", help="comma list, or all (the default): every paper model"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="square crop size, multiple of 32")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median) per model")
    parser.add_argument(
        "--repeats-override", default="", help="per-model timed runs, e.g. upernet_swin_l=2"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    parser.add_argument(
        "--contrastive-weight",
        type=float,
        default=0.1,
        help="weight of MS+CS in the step (0: CE only, for the contrastive share of the step)",
    )
    parser.add_argument(
        "--model-kwargs",
        default="",
        help="config.model fields for every model, e.g. remat=blocks (the memory savers' table)",
    )
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per model")
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=0.0,
        help="kill a model's subprocess when its RSS passes this many GiB (0: no limit)",
    )
    parser.add_argument(
        "--torch-peer",
        action="store_true",
        help="then compare each UPerNet-Swin's train step with HF PyTorch's (torch_peer.py)",
    )
    torch_peer.add_arguments(parser)
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the successful rows of --json; run the rest"
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model_list = [m for m in args.models.split(",") if m]
    if args.model_list == ["all"]:
        args.model_list = list(MODELS)
    unknown = [m for m in args.model_list if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    if args.size <= 0 or args.size % 32:
        raise SystemExit(f"--size={args.size}: use a positive multiple of 32 (the model stride)")
    if args.batch <= 0 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--batch and --repeats must be >= 1 and --warmup >= 0")
    if args.resume and not args.json:
        raise SystemExit("--resume needs --json OUT (the results to resume from)")
    args.overrides = parse_overrides(args.repeats_override)
    args.command = shlex.join(["python", "benchmarks/models.py", *sys.argv[1:]])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        child_main(args)
        return
    # The parent never imports JAX: on a GPU it would hold device memory the children need.
    load_start = os.getloadavg()[0]
    t = time.perf_counter()
    previous = load_previous_results(args)
    results = []
    for name in args.model_list:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        results.append(previous[name] if name in previous else run_child(name, args))
        print(format_row(results[-1], args.batch), file=sys.stderr, flush=True)
        if args.json:  # after every model, so a partial run keeps what it measured
            pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    report = format_report(results, args, time.perf_counter() - t, (load_start, os.getloadavg()[0]))
    print(report, flush=True)
    if args.torch_peer:
        run_torch_peer(args)


def run_torch_peer(args) -> None:
    """The torch_peer.py comparison for each UPerNet-Swin of --models (step time and memory)."""
    rows = []
    chosen = args.torch_peer_models.split(",")
    for name in args.model_list:
        if MODELS[name].name != "upernet" or (name not in chosen and chosen != ["all"]):
            continue
        peer_args = argparse.Namespace(
            backbone=MODELS[name].backbone,
            batch=args.batch,
            size=args.size,
            repeats=args.repeats,
            contrastive_weights=[float(v) for v in args.torch_contrastive_weights.split(",")],
            emitters=args.emitters,
        )
        rows += torch_peer.compare(peer_args)
    if not rows:
        print("--torch-peer: no UPerNet-Swin in --models", flush=True)
        return
    print(torch_peer.format_rows(rows, args.batch, args.size), flush=True)
    if args.json:
        path = pathlib.Path(args.json)
        path.with_name(path.stem + "_torch_peer.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
