"""Where one train step's time goes, per XLA operation: a jax.profiler trace of the real jitted
train step (benchmarks/models.py's config, synthetic batch) with XLA:CPU's per-thunk trace events
on, summed by operation and printed as a table.

    python benchmarks/profile_step.py --model upernet_swin_t [--batch 2] [--size 512] [--top 30]
        [--contrastive-weight 0.1] [--steps 1] [--trace-dir DIR]

The table: op name (XLA's HLO instruction, e.g. `convolution.123`, `fusion.45`), the op's kind
from the optimised HLO (convolution, dot, fusion kind), total ms over --steps timed steps,
its share of the step, and the calls. A "kind" summary follows. CPU backend only (on a GPU use
the TensorBoard profile plugin). The trace stays in --trace-dir for Perfetto.

Read the shares with two limits in mind: XLA:CPU runs matmuls (dot thunks) asynchronously on its
thread pool, so a dot's event can end long before its result exists (the gap before its
consumer is its real cost: matmul-heavy code, e.g. the contrastive loss, is under-counted; time
it directly, as benchmarks/contrastive_loss.py does); and jax.profiler keeps at most 1,000,000
events (the table then warns that later steps are missing).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def enable_per_op_events() -> None:
    """XLA:CPU emits one trace event per thunk (operation) only with this flag."""
    flag = "--xla_cpu_enable_xprof_traceme=true"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def op_kinds(hlo_text: str) -> dict[str, str]:
    """instruction name -> what it is: the opcode, or for fusions `fusion(kind: root op)`."""
    kinds = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^=]*?\s([a-z\-]+)\(", hlo_text, re.M):
        kinds[m.group(1)] = m.group(2)
    return kinds


# jax.profiler keeps at most this many trace events; a step with many small loop-body ops
# (the contrastive loss's blocks: ~600k events per UPerNet-Swin-T step) reaches it.
TRACE_EVENT_CAP = 1_000_000


def summarize(trace_dir: pathlib.Path, kinds: dict[str, str], steps: int, step_s: float, top: int):
    paths = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not paths:
        sys.exit(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace")
    with gzip.open(paths[-1]) as f:
        events = json.load(f)["traceEvents"]
    total = collections.Counter()
    calls = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or "dur" not in e:
            continue
        base = name.split(":")[0].strip()
        if base in kinds:
            total[base] += e["dur"] / 1e3  # ms
            calls[base] += 1
    if not total:
        sys.exit("the trace holds no per-op events (is this the CPU backend?)")
    step_ms = 1e3 * step_s * steps
    print(f"timed steps: {steps}, median step {step_s:.2f} s; per-op times summed over threads")
    if len(events) >= TRACE_EVENT_CAP:
        timed = [e["ts"] for e in events if e.get("ph") == "X"]
        span_ms = (max(timed) - min(timed)) / 1e3
        print(
            f"WARNING: the trace holds {len(events):,} events, jax.profiler's cap: it covers the "
            f"first {span_ms:.0f} ms of the {step_ms:.0f} ms of steps, so the shares below "
            "under-count; profile fewer steps (--steps 1)"
        )
    print("| op | kind | ms | share of step | calls |\n|---|---|---|---|---|")
    for name, ms in total.most_common(top):
        print(f"| {name} | {kinds[name]} | {ms:.0f} | {100 * ms / step_ms:.1f}% | {calls[name]} |")
    by_kind = collections.Counter()
    for name, ms in total.items():
        by_kind[kinds[name]] += ms
    print("\n| kind | ms | share of step |\n|---|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.0f} | {100 * ms / step_ms:.1f}% |")
    print(f"\nsum of op times {sum(total.values()):.0f} ms vs {step_ms:.0f} ms of steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="upernet_swin_t")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--contrastive-weight", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps after one warm-up")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--trace-dir", default="")
    parser.add_argument("--hlo-out", default="", help="also write the optimised HLO here")
    args = parser.parse_args()
    enable_per_op_events()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    import models as bench  # benchmarks/models.py

    from msc_seg import mesh as mesh_lib

    config, mesh, parts = bench.build_benchmark_parts(
        args.model, args.batch, args.size, args.dtype, args.contrastive_weight
    )
    batch = mesh_lib.host_batch_to_global(bench.make_synthetic_batch(args.batch, args.size), mesh)
    state = jax.block_until_ready(parts.create_state())
    key = jax.random.key(config.seed)
    t = time.perf_counter()
    compiled = parts.train_step.lower(state, batch, key).compile()
    print(f"compiled in {time.perf_counter() - t:.0f} s", flush=True)
    hlo = compiled.as_text()
    kinds = op_kinds(hlo)
    if args.hlo_out:
        pathlib.Path(args.hlo_out).write_text(hlo)
    state, _ = jax.block_until_ready(compiled(state, batch, key))  # warm-up
    trace_dir = pathlib.Path(args.trace_dir or tempfile.mkdtemp(prefix="msc_seg_profile_"))
    times = []
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.steps):
            t = time.perf_counter()
            state, _ = jax.block_until_ready(compiled(state, batch, key))
            times.append(time.perf_counter() - t)
    times.sort()
    summarize(trace_dir, kinds, args.steps, times[len(times) // 2], args.top)
    print(f"trace: {trace_dir}")


if __name__ == "__main__":
    main()
