"""Speed and memory of the whole MS + CS contrastive loss (sampling included) vs a matmul floor.

Cases (4 scales, D=256, embeddings at strides 4, 8, 16, 32, float32, the reference's ADE20K loss
settings: tau 0.1, weights 1/0.7/0.4/0.1, both cross-scale terms, 5 / 2500 / 10000 views):
  small:  B=2, 128x128, 10-25 classes per image (uneven Voronoi cells), one group of 2
  large:  B=8, 512x512, 10-25 classes per image (uneven Voronoi cells), one group of 8
  stress: B=16, 512x512, 3-6 large stripes per image, one group of 16 (the 10000 cap binds at
          strides 4 and 8)
For each: median forward and forward+backward wall times; the matmul floor = the FLOPs of the
matmuls the kernels must do (2*D*Ma*Mb per [Ma,Mb] logit matrix for the sampled Ma, Mb): a
cross-scale term 1x forward, 3x forward+backward; a within-scale term (symmetric, only its upper
triangle: losses/within_scale.py) 1/2x forward, 2x forward+backward, not counting its positives'
pass (data-dependent, a few block pairs); over the float32 matmul rate on [4096,256] x [256,4096]
(median of rates measured right before each repeat, since the machine may be shared); XLA's
planned memory (temporaries, and the peak = arguments + outputs + temporaries) from
`compile().memory_analysis()`.

    python benchmarks/contrastive_loss.py --cases small,large,stress --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg.losses import ContrastiveOptions, contrastive_loss_for_batch, sample_batch_anchors

NUM_CLASSES = 150
STRIDES = (4, 8, 16, 32)
DIM = 256
SETTINGS = dict(  # ContrastiveOptions fields (the paper's)
    temperature=0.1,
    scale_weights=(1.0, 0.7, 0.4, 0.1),
    cross_scale=True,
    w_high_low=1.0,
    w_high_mid=1.0,
    detach_coarse=False,
    min_views=5,
    max_views=2500,
    max_total=10000,
)
CASES = {
    "small": dict(batch=2, size=128, regions=(10, 25), layout="voronoi", group=2),
    "large": dict(batch=8, size=512, regions=(10, 25), layout="voronoi", group=8),
    "stress": dict(batch=16, size=512, regions=(3, 6), layout="stripes", group=16),
}


def make_labels(rng: np.random.Generator, batch: int, size: int, case: dict) -> np.ndarray:
    """int32 [B,size,size] label maps with distinct random classes per image and a thin ignore
    band (-1) at the bottom, like a padded ADE20K crop.

    "voronoi": `regions` random cells of uneven size (small cells make V small, as in ADE20K);
    "stripes": `regions` vertical stripes of 0.6-1.4x the mean width (every class is large).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((batch, size, size), np.int32)
    low, high = case["regions"]
    for n in range(batch):
        k = int(rng.integers(low, high + 1))
        if case["layout"] == "stripes":
            widths = rng.uniform(0.6, 1.4, k)
            edges = np.round(np.cumsum(widths) / widths.sum() * size).astype(int)
            cell = np.searchsorted(edges, xx.astype(int), side="right")
        else:
            seeds = rng.uniform(0, size, (k, 2)).astype(np.float32)
            weights = rng.uniform(0.5, 1.5, k).astype(np.float32)  # uneven cell sizes
            dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (
                xx[None] - seeds[:, 1, None, None]
            ) ** 2
            cell = np.argmin(dist * weights[:, None, None], axis=0)
        out[n] = rng.choice(NUM_CLASSES, k, replace=False)[np.minimum(cell, k - 1)]
        out[n, -size // 16 :, :] = -1
    return out


def make_inputs(case: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = make_labels(rng, case["batch"], case["size"], case)
    embeddings = tuple(
        jnp.asarray(
            rng.standard_normal(
                (case["batch"], case["size"] // s, case["size"] // s, DIM), dtype=np.float32
            )
        )
        for s in STRIDES
    )
    return embeddings, jnp.asarray(labels), jax.random.key(seed)


def _seconds(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


class MatmulRate:
    """float32 matmul rate on [4096,256] x [256,4096] (the loss's contraction depth, D = 256)."""

    def __init__(self):
        self.a = jnp.asarray(np.random.default_rng(0).standard_normal((4096, DIM), np.float32))
        self.fn = jax.jit(lambda x, y: x @ y.T)
        jax.block_until_ready(self.fn(self.a, self.a))

    def measure(self) -> float:
        """FLOP/s, best of 3 back-to-back runs."""
        t = min(_seconds(self.fn, (self.a, self.a)) for _ in range(3))
        return 2 * 4096 * 4096 * DIM / t


def timed(fn, args, repeats: int, rate: MatmulRate) -> tuple[float, float]:
    """Median seconds of fn, and the median matmul rate measured right before each repeat (the
    machine may be shared: each repeat's time is paired with a rate taken at the same moment)."""
    jax.block_until_ready(fn(*args))  # compile + warm up
    times, rates = [], []
    for _ in range(repeats):
        rates.append(rate.measure())
        times.append(_seconds(fn, args))
    return statistics.median(times), statistics.median(rates)


def anchor_counts(labels, key, group: int) -> np.ndarray:
    """Valid anchors per group and scale: int [G, S]."""
    anchors = sample_batch_anchors(
        labels,
        key,
        STRIDES,
        images_per_group=group,
        num_classes=NUM_CLASSES,
        min_views=SETTINGS["min_views"],
        max_views=SETTINGS["max_views"],
        max_total=SETTINGS["max_total"],
    )
    return np.stack([np.asarray(a.valid).sum(-1) for a in anchors], axis=1)


def memory(fn, args) -> tuple[float, float]:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        return float("nan"), float("nan")
    temp = stats.temp_size_in_bytes
    peak = stats.argument_size_in_bytes + stats.output_size_in_bytes + temp
    peak -= stats.alias_size_in_bytes
    return temp / 2**20, peak / 2**20


def run_case(name: str, repeats: int, rate: MatmulRate, block: int, col_block: int) -> dict:
    case = CASES[name]
    embeddings, labels, key = make_inputs(case)
    options = ContrastiveOptions(
        **SETTINGS, images_per_group=case["group"], block_size=block, column_block_size=col_block
    )
    kw = dict(num_classes=NUM_CLASSES, options=options)

    def forward(e, lab, k):
        return contrastive_loss_for_batch(e, lab, k, **kw)[0]

    grad = jax.value_and_grad(forward)
    counts = anchor_counts(labels, key, case["group"])
    m = counts.astype(np.float64)
    within = np.sum(m**2)  # [M,M] per scale: the upper triangle, then H Z_J and H^T Z_I
    cross = np.sum(m[:, 0] * m[:, 3] + m[:, 0] * m[:, 2])  # s, then G B and G^T A
    fwd_flops = 2 * DIM * (within / 2 + cross)
    fwd_bwd_flops = 2 * DIM * (2 * within + 3 * cross)
    args = (embeddings, labels, key)
    fwd_t, fwd_rate = timed(jax.jit(forward), args, repeats, rate)
    bwd_t, bwd_rate = timed(jax.jit(grad), args, repeats, rate)
    fwd_temp, _ = memory(forward, args)
    bwd_temp, bwd_peak = memory(grad, args)
    return dict(
        case=name,
        anchors="/".join(str(int(c)) for c in counts.sum(0)),
        rate=(fwd_rate + bwd_rate) / 2,
        fwd=fwd_t,
        fwd_floor=fwd_flops / fwd_rate,
        fwd_bwd=bwd_t,
        fwd_bwd_floor=fwd_bwd_flops / bwd_rate,
        fwd_temp=fwd_temp,
        bwd_temp=bwd_temp,
        bwd_peak=bwd_peak,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="small,large,stress")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--column-block-size", type=int, default=512)
    args = parser.parse_args()
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    for n in names:
        if n not in CASES:
            parser.error(f"unknown case {n!r}; choose from {', '.join(CASES)}")
    rate = MatmulRate()
    print(
        f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s); "
        f"blocks {args.block_size} x {args.column_block_size}; floor = dominant-matmul FLOPs / "
        f"float32 matmul rate on [4096,256]x[256,4096], measured before every repeat\n"
    )
    print(
        "| case | anchors s4/s8/s16/s32 | matmul GFLOP/s | fwd s | fwd floor s | fwd ratio "
        "| fwd+bwd s | fwd+bwd floor s | fwd+bwd ratio | fwd temp MiB | fwd+bwd temp MiB "
        "| fwd+bwd peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        repeats = max(1, args.repeats // 2) if n == "stress" else args.repeats
        r = run_case(n, repeats, rate, args.block_size, args.column_block_size)
        print(
            f"| {r['case']} | {r['anchors']} | {r['rate'] / 1e9:.0f} | {r['fwd']:.3f} | "
            f"{r['fwd_floor']:.3f} | {r['fwd'] / r['fwd_floor']:.2f} | {r['fwd_bwd']:.3f} | "
            f"{r['fwd_bwd_floor']:.3f} | {r['fwd_bwd'] / r['fwd_bwd_floor']:.2f} | "
            f"{r['fwd_temp']:.0f} | {r['bwd_temp']:.0f} | {r['bwd_peak']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
