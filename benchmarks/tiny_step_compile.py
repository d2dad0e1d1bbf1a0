"""Compile time of a config's train step in the tests' tiny form, per `xla_cpu_emitters` value.

    python benchmarks/tiny_step_compile.py [--config demo] [--repeats 4]

The program the suite compiles: `tests/test_paper_configs.tiny_form(configs/NAME.py)`, 8 forced
CPU devices and `--xla_backend_optimization_level=0` (as tests/conftest.py), no persistent cache.
Each repeat builds the train parts afresh and times `lower(...).compile()` once per emitters
value, alternating the values, so that the machine's drift falls on both. Prints each time, the
medians, their ratio and the load average (benchmarks/README.md, "Emitters").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="a file of configs/, without .py")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--emitters", default="fusion,elemental", help="comma list, alternated")
    args = parser.parse_args()

    # As tests/conftest.py, before JAX is imported.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    )
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import jax
    from test_paper_config_steps import synthetic_batch
    from test_paper_configs import load_config, tiny_form

    from msc_seg import config_lib, experiment
    from msc_seg import mesh as mesh_lib

    values = args.emitters.split(",")
    times = {v: [] for v in values}
    load_start = os.getloadavg()
    for _ in range(args.repeats):
        for value in values:
            config = tiny_form(load_config(args.config))
            config.xla_cpu_emitters = value
            spec = experiment.validate(
                config, config_lib.RuntimeFacts(num_devices=jax.device_count())
            )
            mesh = mesh_lib.make_mesh(config.mesh.data)
            parts = experiment.build_train_parts(config, spec.num_classes, mesh)
            batch = mesh_lib.host_batch_to_global(synthetic_batch(config, spec.num_classes), mesh)
            lowered = parts.train_step.lower(parts.abstract_state, batch, jax.random.key(0))
            t = time.perf_counter()
            lowered.compile()
            times[value].append(time.perf_counter() - t)
            print(f"  {value}: {times[value][-1]:.1f} s", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    print(f"train step of tiny_form(configs/{args.config}.py), 8 CPU devices, opt level 0")
    print("| xla_cpu_emitters | compile s (each) | median s | / first |")
    print("|---|---|---|---|")
    for v in values:
        each = ", ".join(f"{t:.1f}" for t in times[v])
        ratio = medians[v] / medians[values[0]]
        print(f"| {v} | {each} | {medians[v]:.1f} | {ratio:.2f} |")
    load = "/".join(f"{x:.1f}" for x in load_start) + " -> "
    print("load 1/5/15: " + load + "/".join(f"{x:.1f}" for x in load_end))


if __name__ == "__main__":
    main()
