"""FLOPs of one train step of the paper models, XLA's count of the lowered program (for MFU).

    python benchmarks/train_flops.py [--models deeplabv3,hrnet,...] [--batch 16] [--size 512]
        [--dtype bfloat16] [--contrastive-weights 0.1,0]

A GPU-compiled program hides its convolutions and matmuls in cuDNN / cuBLAS calls, so its cost
analysis counts far too few FLOPs (and jax 0.11's GPU `Lowered.cost_analysis()` returns none):
run this with JAX_PLATFORMS=cpu to count them from the lowered program, without building weights
(abstract state) or compiling. Same configs as benchmarks/models.py, with `model.scan_blocks`
off: the cost analysis counts a scanned body once.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deeplabv3,hrnet,ocrnet,upernet_swin_t")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--contrastive-weights", default="0.1")
    parser.add_argument("--json", default="", help="also write {model: {weight: flops}} here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    import jax.numpy as jnp
    import models as bench  # benchmarks/models.py

    backend = jax.default_backend()
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.dtype}, backend {backend}")
    print("| model | contrastive weight | TFLOP per train step |\n|---|---|---|")
    counts = {}
    for name in args.models.split(","):
        for weight in map(float, args.contrastive_weights.split(",")):
            # XLA's cost analysis counts a while loop's body once, whatever its trip count:
            # unroll the scanned blocks (same FLOPs, a larger program) so that all are counted.
            _, _, parts = bench.build_benchmark_parts(
                name, args.batch, args.size, args.dtype, weight, scan_blocks=False
            )
            shape = (args.batch, args.size, args.size)
            batch = {
                "image": jax.ShapeDtypeStruct((*shape, 3), jnp.float32),
                "label": jax.ShapeDtypeStruct(shape, jnp.int32),
            }
            lowered = parts.train_step.lower(parts.abstract_state, batch, jax.random.key(0))
            flops = bench.compiled_flops(lowered)
            text = "-" if flops is None else f"{flops / 1e12:.2f}"
            print(f"| {bench.MODELS[name].label} | {weight:g} | {text} |", flush=True)
            counts.setdefault(name, {})[f"{weight:g}"] = flops
            if args.json:  # after every row, so a run stopped early keeps what it counted
                pathlib.Path(args.json).write_text(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
