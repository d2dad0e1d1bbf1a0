"""Compile cost of the paper models' train steps, without running them.

    python benchmarks/train_compile.py --models hrnet[,ocrnet,...] [--size 512] [--batch 2]
        [--dtype float32] [--model-kwargs remat=blocks,scan_blocks=False] [--guard where|cond]
        [--contrastive-weight W] [--max-rss-gb 12] [--timeout 1800]

For each model, in its own subprocess (as benchmarks/models.py, whose configs and train step it
reuses: the real jitted `train_step.make_train_step`, CE + aux + 0.1 x MS+CS contrastive, SGD or
AdamW), the train state is built *abstractly* (`jax.eval_shape`: no initialiser compiles, no
weights), then the step is lowered and compiled. Prints one markdown row per model:
  HLO lines       lines of the lowered StableHLO text (what XLA is given)
  lower s         tracing + lowering
  compile s       XLA compile, wall and process CPU (all threads; steadier on a shared machine)
  peak RSS GiB    the subprocess's peak resident set (imports included), read from /proc by the
                  parent every 0.5 s (so a child killed at --max-rss-gb still reports it)
Use benchmarks/models.py for step times.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024**3


def child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    import models as bench  # benchmarks/models.py

    from msc_seg import config_lib, experiment
    from msc_seg import mesh as mesh_lib

    # The glue's train step, or its guard="where" variant (see load_make_train_step).
    experiment.make_train_step = load_make_train_step(args.guard)

    bench.volunteer_for_oom_killer()
    case = bench.MODELS[args.child]
    weight = 0.1 if args.contrastive_weight is None else args.contrastive_weight
    config = bench.make_benchmark_config(case, args.batch, args.size, args.dtype, weight)
    config.model.update(bench.parse_model_kwargs(args.model_kwargs))  # e.g. remat, scan_blocks
    if args.scheduler:  # else the config's (configs/ade20k_upernet.py picks one per Swin)
        config.xla_cpu_scheduler = args.scheduler
    if args.emitters:  # else the config's (configs/ade20k_upernet.py: "elemental" for Swin-T)
        config.xla_cpu_emitters = args.emitters
    config_lib.validate(config, experiment.runtime_facts())
    mesh = mesh_lib.make_mesh(config.mesh.data)
    batch = mesh_lib.host_batch_to_global(bench.make_synthetic_batch(args.batch, args.size), mesh)
    t = time.perf_counter()
    parts = experiment.build_train_parts(config, bench.NUM_CLASSES, mesh)  # abstract state only
    abstract_s = time.perf_counter() - t
    key = jax.random.key(config.seed)
    t = time.perf_counter()
    lowered = parts.train_step.lower(parts.abstract_state, batch, key)
    lower_s = time.perf_counter() - t
    text = lowered.as_text()
    lines = len(text.splitlines())
    ops = {op: text.count(f"stablehlo.{op}") for op in COUNTED_OPS}
    print(
        f"  {args.child}: abstract state {abstract_s:.1f} s, lowered in {lower_s:.1f} s, "
        f"{lines} HLO lines, {ops}",
        file=sys.stderr,
        flush=True,
    )
    result = {"model": args.child, "hlo_lines": lines, "ops": ops, "lower_s": lower_s}
    if args.lower_only:
        return result
    t, cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    return result | {
        "compile_s": time.perf_counter() - t,
        "compile_cpu_s": time.process_time() - cpu,
        "plan_bytes": bench.planned_bytes(compiled),
    }


# StableHLO ops counted in the lowered program (what XLA is given): convolutions and matmuls
# (each copy is compiled and autotuned separately), loops (scanned blocks), gathers (resizes).
COUNTED_OPS = ("convolution", "dot_general", "while", "gather", "select", "reduce")


WHERE_GUARD = "new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)"
COND_GUARD = "new_state = jax.lax.cond(finite, lambda: new_state, lambda: state)"


def load_make_train_step(guard: str):
    """`msc_seg.train_step.make_train_step` (its non-finite guard is one `jax.lax.cond`), or with
    guard="where" the same module with the guard as the per-leaf `jnp.where(finite, new, old)`
    it had before (same result; the per-leaf selects that all depend on one scalar of every
    gradient make XLA CPU's instruction fusion take > 10 min for HRNet's 941 parameter leaves,
    the cond ~30 s). Fails if the glue no longer has that line."""
    import importlib.util

    from msc_seg import train_step

    if guard == "cond":
        return train_step.make_train_step
    source = pathlib.Path(train_step.__file__).read_text()
    if COND_GUARD not in source:
        raise SystemExit(f"--guard=where: {train_step.__file__} no longer has `{COND_GUARD}`")
    spec = importlib.util.spec_from_loader("train_step_where_guard", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(
        compile(source.replace(COND_GUARD, WHERE_GUARD), train_step.__file__, "exec"),
        module.__dict__,
    )
    return module.make_train_step


def run_child(name: str, args) -> dict:
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
        f"--model-kwargs={args.model_kwargs}",
        f"--guard={args.guard}",
        f"--scheduler={args.scheduler}",
        f"--emitters={args.emitters}",
    ]
    if args.lower_only:
        cmd.append("--lower-only")
    if args.contrastive_weight is not None:
        cmd.append(f"--contrastive-weight={args.contrastive_weight}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
    peak, why = 0, ""
    while proc.poll() is None:
        peak = max(peak, _status_bytes(proc.pid, "VmHWM:"))
        if args.max_rss_gb and _status_bytes(proc.pid, "VmRSS:") > args.max_rss_gb * GIB:
            proc.kill()
            why = f"killed at --max-rss-gb {args.max_rss_gb:g}"
        elif time.perf_counter() - t > args.timeout:
            proc.kill()
            why = f"timed out after {args.timeout:.0f} s"
        time.sleep(0.5)
    text = pathlib.Path(result_file).read_text()
    pathlib.Path(result_file).unlink(missing_ok=True)
    result = json.loads(text) if text else {"model": name}
    if not text:
        result["error"] = why or f"exited with {proc.returncode}"
    result["peak_rss_bytes"] = peak
    result["wall_s"] = time.perf_counter() - t
    return result


def _status_bytes(pid: int, field: str) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def format_row(r: dict) -> str:
    peak = f"{r['peak_rss_bytes'] / GIB:.2f}"
    if "error" in r:
        return f"| {r['model']} | failed: {r['error']} | | | | | {'>= ' + peak} | |"
    ops = " ".join(f"{k[:4]} {v}" for k, v in r["ops"].items())
    if "compile_s" not in r:  # --lower-only
        return (
            f"| {r['model']} | {r['hlo_lines']} | {ops} | {r['lower_s']:.1f} | - | - | {peak} | - |"
        )
    plan = r["plan_bytes"]
    return (
        f"| {r['model']} | {r['hlo_lines']} | {ops} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
        f"{r['compile_cpu_s']:.1f} | {peak} | {'-' if plan is None else f'{plan / GIB:.2f}'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="hrnet")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--model-kwargs",
        default="",
        help="extra segmentor kwargs, e.g. remat=blocks,scan_blocks=False",
    )
    parser.add_argument(
        "--guard",
        default="cond",
        choices=("cond", "where"),
        help="the train step's non-finite guard: as written (one lax.cond) or per-leaf where",
    )
    parser.add_argument(
        "--contrastive-weight", type=float, default=None, help="override (0: no MS+CS loss)"
    )
    parser.add_argument(
        "--scheduler",
        default="",
        choices=("", "memory", "concurrency"),
        help="override the config's xla_cpu_scheduler (the CPU train step's XLA scheduler)",
    )
    parser.add_argument(
        "--emitters",
        default="",
        choices=("", "fusion", "elemental"),
        help="override the config's xla_cpu_emitters (XLA:CPU's emitters of the step's fusions)",
    )
    parser.add_argument(
        "--lower-only", action="store_true", help="trace and lower only: HLO size and op counts"
    )
    parser.add_argument("--max-rss-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        pathlib.Path(args.result_file).write_text(json.dumps(child(args)))
        return
    print(
        f"settings: batch {args.batch}, {args.size}x{args.size}, {args.dtype}, model kwargs "
        f"{args.model_kwargs or '-'}, guard {args.guard}; {os.cpu_count()} CPU cores, load "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    print(
        "| model | HLO lines | ops | lower s | XLA compile s | compile CPU s | peak RSS GiB | "
        "XLA plan GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in filter(None, args.models.split(",")):
        print(format_row(run_child(name, args)), flush=True)
    print(f"load {'/'.join(f'{v:.1f}' for v in os.getloadavg())} (1/5/15 min) at end")


if __name__ == "__main__":
    main()
