"""Where results go: clu writers (TensorBoard event files + log), metrics.jsonl, progress lines
(training's step lines, `ProgressBar` for evaluation-like loops), durations.

Only process 0 writes files; other processes log to stdout only.
"""

from __future__ import annotations

import json
import logging as py_logging
import math
import os
import pathlib
import sys
import threading
import time

import jax
import numpy as np
from absl import logging


def format_duration(seconds: float) -> str:
    """'1h02m' or '3m07s'; '?' for an unknown (non-finite) duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Reporter:
    """Writes scalars/images/text and prints progress with steps/s and ETA."""

    def __init__(
        self,
        workdir: str | pathlib.Path,
        total_steps: int,
        *,
        start_step: int = 0,
        jsonl: bool = True,
    ):
        """Event files in `workdir` (created at the first write: a run that fails before it
        leaves no empty events file); `jsonl`: also append scalars to workdir/metrics.jsonl."""
        self.workdir = pathlib.Path(workdir)
        self.is_main = jax.process_index() == 0
        self._writer = None
        self.total_steps = total_steps
        self._jsonl = (
            open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115
            if self.is_main and jsonl
            else None
        )
        self._last_time = time.time()
        self._last_step = start_step

    @property
    def writer(self):
        """The clu writer (TensorBoard event files on process 0, log lines elsewhere)."""
        if self._writer is None:
            from clu import metric_writers  # TensorFlow's summary writer: only when a run logs

            self._writer = metric_writers.create_default_writer(
                str(self.workdir), just_logging=not self.is_main, asynchronous=True
            )
        return self._writer

    def drop_rows_after(self, step: int) -> None:
        """Resuming from `step`: metrics.jsonl rows of later steps (written before a kill, about
        to be retrained) move to metrics.superseded.jsonl, so every step has one row. The file
        is rewritten atomically (a temporary file renamed over it)."""
        path = self.workdir / "metrics.jsonl"
        if self._jsonl is None or not path.exists():
            return
        self._jsonl.close()
        keep, superseded = [], []
        for line in path.read_text().splitlines():
            try:
                row_step = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                row_step = 0  # a line cut by a kill: kept as it is
            (superseded if row_step > step else keep).append(line)
        if superseded:
            with open(self.workdir / "metrics.superseded.jsonl", "a") as f:
                f.write("".join(line + "\n" for line in superseded))
            tmp = path.with_name("metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)
        self._jsonl = open(path, "a")  # noqa: SIM115

    def restart_clock(self, step: int) -> None:
        """Measures steps/s from `step` on, starting now (e.g. after resuming)."""
        self._last_time, self._last_step = time.time(), step

    def write_scalars(
        self,
        step: int,
        scalars: dict[str, float],
        *,
        progress: bool = True,
        now: float | None = None,
    ) -> None:
        """now: when `step` finished (default: now); steps/s is measured between these times."""
        scalars = {k: float(v) for k, v in scalars.items()}
        if progress:
            now = time.time() if now is None else now
            if step > self._last_step:
                rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
                scalars["steps_per_sec"] = rate
                eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
                loss = scalars.get("loss", float("nan"))
                print(
                    f"step {step}/{self.total_steps} | loss {loss:.4f} | {rate:.2f} steps/s | "
                    f"ETA {format_duration(eta)}",
                    flush=True,
                )
            self._last_time, self._last_step = now, step
        self.writer.write_scalars(step, scalars)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
            self._jsonl.flush()

    def write_mean_scalars(self, step: int, sums: dict, count: int, now: float | None = None):
        """Writes (and prints the progress line of) the means of `count` steps' summed metrics
        (device arrays, fetched here). now: when `step` finished (default: once fetched)."""
        means = {k: float(v) / count for k, v in jax.device_get(sums).items()}
        self.write_scalars(step, means, now=now)

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> uint8 [N,H,W,3]."""
        self.writer.write_images(step, images)

    def write_text(self, step: int, name: str, text: str) -> None:
        self.writer.write_texts(step, {name: f"<pre>{text}</pre>"})

    def write_config(self, step: int, config: dict) -> None:
        """The resolved config (a JSON-like dict) as TensorBoard hparams (dotted field -> value;
        lists as text) and as the text 'config' (pretty JSON). Process 0 only."""
        if not self.is_main:
            return
        self.writer.write_hparams(hparams_of(config))
        self.write_text(step, "config", json.dumps(config, indent=2, sort_keys=True, default=str))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def hparams_of(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config dict flattened to 'section.field' -> a value TensorBoard's hparams plugin
    takes (bool, int, float, str); lists, tuples and None become their JSON text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(hparams_of(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


class ProgressBar:
    """One updating line on `stream`: 'predict [#####.....] 12/40 | 3.1 img/s | ETA 0m09s'."""

    def __init__(self, total: int, stream=None, label: str = "predict", width: int = 24):
        self.total, self.done, self.label, self.width = total, 0, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._draw()

    def _draw(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} | {rate:.2f} img/s | "
            f"ETA {format_duration(eta)} "
        )
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def message(self, text: str) -> None:
        """Prints a line above the bar (warnings) and redraws the bar."""
        is_tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\r\033[K" if is_tty else "\n") + text + "\n")
        self._draw()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class Heartbeat:
    """A context that prints `message(elapsed)` every `every_s` seconds from a daemon thread
    while its block runs (a compile, which gives no progress of its own), so a log never goes
    silent for longer than `every_s`."""

    def __init__(self, message, *, every_s: float = 10.0):
        self.message, self.every_s = message, every_s
        self._stop = threading.Event()

    def _beat(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.every_s):
            print(self.message(format_duration(time.perf_counter() - start)), flush=True)

    def __enter__(self):
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        return False


class PeriodicProgress:
    """A progress line every `every_s` seconds for loops that go to log files (evaluation):
    'eval: 48/200 images | 3.10 img/s | ETA 0m49s'. Counts what has finished: before a line
    is printed the caller's last result is waited for (`ready`), so the rate is not the rate at
    which work is queued."""

    def __init__(self, total: int | None, *, label: str = "eval", every_s: float = 10.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.done = 0
        self.start = self._last = time.perf_counter()

    def compiling(self) -> Heartbeat:
        """Wraps the loop's first call (its compile): a line every `every_s` seconds."""
        return Heartbeat(lambda t: f"{self.label}: compiling ... {t}", every_s=self.every_s)

    def update(self, n: int, ready=None) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last < self.every_s:
            return
        if ready is not None:
            jax.block_until_ready(ready)
            now = time.perf_counter()
        self._last = now
        done = min(self.done, self.total) if self.total else self.done
        rate = done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = f" | ETA {format_duration((self.total - done) / rate)}" if self.total and rate else ""
        print(f"{self.label}: {done}{of} images | {rate:.2f} img/s{eta}", flush=True)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """int [...,H,W] (-1 = ignore, drawn black) -> uint8 [...,H,W,3]."""
    palette = np.concatenate([np.asarray(palette, np.uint8), np.zeros((1, 3), np.uint8)])
    return palette[np.where(label < 0, len(palette) - 1, label)]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """Blends a colourised label over an uint8 image [...,H,W,3]; ignore pixels show the image."""
    colors = colorize(label, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colors
    return np.where((label >= 0)[..., None], blend, image).astype(np.uint8)


class OneLineLibraryErrors(py_logging.Filter):
    """A logging filter: a library's ERROR record (orbax's background save threads, clu's
    TensorBoard writer) becomes one line, its traceback dropped. A full disk made orbax and clu
    log ~300 lines of tracebacks before the run's own one-line report; with the filter they are
    7 lines. `--verbosity=0` (or any explicit --verbosity) keeps the tracebacks."""

    LIMIT = 300

    def filter(self, record) -> bool:
        if record.levelno >= py_logging.ERROR and (record.exc_info or "\n" in str(record.msg)):
            try:
                text = record.getMessage()
            except (TypeError, ValueError):
                text = str(record.msg)
            text = " ".join(text.split("Traceback (most recent call last)")[0].split())
            if len(text) > self.LIMIT:
                text = text[: self.LIMIT - 5] + " ..."
            record.msg, record.args = text, ()
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def quiet_library_tracebacks() -> None:
    """Installs OneLineLibraryErrors on absl's logger (orbax and clu log through it) and on
    asyncio's (orbax's unretrieved write futures: "Future exception was never retrieved")."""
    for logger in (logging.get_absl_logger(), py_logging.getLogger("asyncio")):
        if not any(isinstance(f, OneLineLibraryErrors) for f in logger.filters):
            logger.addFilter(OneLineLibraryErrors())


def log_and_print(message: str) -> None:
    logging.info(message)
    print(message, flush=True)
