"""Where results go: clu writers (TensorBoard event files + log), metrics.jsonl, progress lines.

Only process 0 writes files; other processes log to stdout only.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Reporter:
    """Writes scalars/images/text and prints progress with steps/s and ETA."""

    def __init__(self, workdir: str | pathlib.Path, total_steps: int, *, start_step: int = 0):
        self.workdir = pathlib.Path(workdir)
        self.is_main = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(
            str(self.workdir), just_logging=not self.is_main, asynchronous=True
        )
        self.total_steps = total_steps
        self._jsonl = open(self.workdir / "metrics.jsonl", "a") if self.is_main else None  # noqa: SIM115
        self._last_time = time.time()
        self._last_step = start_step

    def restart_clock(self, step: int) -> None:
        """Measures steps/s from `step` on, starting now (e.g. after resuming)."""
        self._last_time, self._last_step = time.time(), step

    def write_scalars(self, step: int, scalars: dict[str, float], *, progress: bool = True) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        if progress:
            now = time.time()
            if step > self._last_step:
                rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
                scalars["steps_per_sec"] = rate
                eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
                loss = scalars.get("loss", float("nan"))
                print(
                    f"step {step}/{self.total_steps} | loss {loss:.4f} | {rate:.2f} steps/s | "
                    f"ETA {_fmt_duration(eta)}",
                    flush=True,
                )
            self._last_time, self._last_step = now, step
        self.writer.write_scalars(step, scalars)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
            self._jsonl.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> uint8 [N,H,W,3]."""
        self.writer.write_images(step, images)

    def write_text(self, step: int, name: str, text: str) -> None:
        self.writer.write_texts(step, {name: f"<pre>{text}</pre>"})

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """int [...,H,W] (-1 = ignore, drawn black) -> uint8 [...,H,W,3]."""
    palette = np.concatenate([np.asarray(palette, np.uint8), np.zeros((1, 3), np.uint8)])
    return palette[np.where(label < 0, len(palette) - 1, label)]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """Blends a colourised label over an uint8 image [...,H,W,3]; ignore pixels show the image."""
    colors = colorize(label, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colors
    return np.where((label >= 0)[..., None], blend, image).astype(np.uint8)


def log_and_print(message: str) -> None:
    logging.info(message)
    print(message, flush=True)
