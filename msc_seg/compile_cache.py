"""Compile once per machine: JAX's persistent compilation cache for real runs, its hits in the log,
an honest "compiling ..." line, and XLA's slow-compile alarm kept out of the default log.

    enable(cache_dir)      turns the cache on (default: $MSC_SEG_COMPILE_CACHE, else
                           $XDG_CACHE_HOME/msc_seg/jax or ~/.cache/msc_seg/jax)
    Compilation(what, key) a context around the first call of a jitted function: prints
                           "compiling the train step (...)" before, and after it "ready in N s
                           (compiled | loaded from the persistent compilation cache)"; keeps each
                           key's compile time in the cache folder to predict the next one
    quiet_xla_alarms()     drops XLA's "Very slow compile? If you want to file a bug" blocks from
                           this process's stderr (a normal first compile of a paper model on a CPU
                           takes minutes: that is no bug)
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import sys
import threading
import time

# JAX (and reporting, which imports it) are imported where used: main.run() installs
# quiet_xla_alarms before parsing flags, and a refused command line should not pay ~1.5 s for
# importing JAX first.

_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"
_events = {_HIT: 0, _MISS: 0}
_listening = False
_cache_dir: pathlib.Path | None = None


def default_dir() -> pathlib.Path:
    if os.environ.get("MSC_SEG_COMPILE_CACHE"):
        return pathlib.Path(os.environ["MSC_SEG_COMPILE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path("~/.cache").expanduser()
    return pathlib.Path(base) / "msc_seg" / "jax"


def _count(event: str, **_) -> None:
    if event in _events:
        _events[event] += 1


def enable(
    cache_dir: str | os.PathLike | None = None, *, min_compile_secs: float = 1.0
) -> pathlib.Path | None:
    """Turns the persistent compilation cache on in `cache_dir` (None: `default_dir()`) for
    programs whose compile takes at least `min_compile_secs`.

    Returns the folder, or None when the cache stays off: with several processes (it would
    serve process 0 only, see below), or when the folder cannot be created. Either is said in
    one log line.
    """
    global _listening, _cache_dir
    import jax

    from msc_seg import reporting

    if jax.process_count() > 1:
        # Measured (localhost, 2 processes x 4 CPU devices, 3 restarts sharing one cache): no
        # hang any more (the start-up hang came from the lazily created backend, see
        # distributed._start_backend_in_step), but no gain either: JAX writes entries from
        # process 0 only, the other processes' programs have other keys (they miss every time),
        # and process 0's hit then waits for their compile at the first step.
        reporting.log_and_print(
            "note: persistent compilation cache off for multi-process runs (JAX caches process "
            "0's programs only; the others would compile anyway); every process compiles"
        )
        return None
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reporting.log_and_print(
            f"note: persistent compilation cache off: cannot create {folder} ({e})"
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    reset_backend_cache()  # JAX opens its cache once: make it use this folder
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _listening:
        jax.monitoring.register_event_listener(_count)
        _listening = True
    _cache_dir = folder
    return folder


def reset_backend_cache() -> None:
    """Makes JAX re-open its persistent cache at the configured folder on the next compile."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


# Seconds between the "compiling ... 1m10s" lines: a log never goes silent for longer.
HEARTBEAT_S = 10.0


class Compilation:
    """Wraps the first call of a jitted function (its compile) with progress lines.

    what: "the train step"; key: what identifies the program across runs (model, shapes,
    device kind), used to remember how long its compile took on this machine.
    """

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key

    def _history_file(self) -> pathlib.Path | None:
        return _cache_dir / "msc_seg_compile_times.json" if _cache_dir else None

    def _history(self) -> dict:
        path = self._history_file()
        try:
            return json.loads(path.read_text()) if path and path.exists() else {}
        except (OSError, ValueError):
            return {}

    def __enter__(self):
        from msc_seg import reporting

        seconds = self._history().get(self.key)
        if seconds is None:
            hint = "first run on this machine: this can take minutes on a CPU"
        elif _cache_dir is not None:
            hint = f"cached here before (a compile took {reporting.format_duration(seconds)})"
        else:
            hint = f"about {reporting.format_duration(seconds)}"
        reporting.log_and_print(f"compiling {self.what} ({hint}) ...")
        self._hits, self._misses = _events[_HIT], _events[_MISS]
        self._start = time.perf_counter()
        self._heartbeat = reporting.Heartbeat(
            lambda t: f"compiling {self.what} ... {t}", every_s=HEARTBEAT_S
        ).__enter__()
        return self

    def __exit__(self, exc_type, *_):
        import jax

        from msc_seg import reporting

        self._heartbeat.__exit__(exc_type)
        if exc_type is not None:
            return False
        seconds = time.perf_counter() - self._start
        hit = _events[_HIT] > self._hits and _events[_MISS] == self._misses
        how = "loaded from the persistent compilation cache" if hit else "compiled"
        reporting.log_and_print(
            f"{self.what} ready in {reporting.format_duration(seconds)} ({how})"
        )
        path = self._history_file()
        if path is not None and not hit and jax.process_index() == 0:
            history = self._history() | {self.key: round(seconds, 1)}
            try:
                path.write_text(json.dumps(history, indent=1, sort_keys=True))
            except OSError:
                pass
        return False


_ALARM_MARK = "Very slow compile?"


def quiet_xla_alarms() -> None:
    """Filters XLA's slow-compile alarm blocks out of file descriptor 2 (stderr) of this
    process; every other line passes through unchanged. Idempotent; no-op where fds cannot be
    duplicated."""
    global _filtering
    if _filtering:
        return
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return
    _filtering = True
    global _original_stderr
    _original_stderr = original

    def pump():
        filt = _AlarmFilter(lambda data: os.write(original, data))
        with os.fdopen(read_end, "rb", buffering=0) as src:
            for chunk in iter(lambda: src.read(65536), b""):
                filt.feed(chunk)
        filt.flush()

    thread = threading.Thread(target=pump, name="quiet-xla-alarms", daemon=True)
    thread.start()

    def drain():  # at exit: close the pipe (fd 2 back to the terminal) and let the pump finish
        sys.stderr.flush()
        os.dup2(original, 2)
        thread.join(timeout=5)

    atexit.register(drain)


_filtering = False
_original_stderr: int | None = None


def write_stderr_now(text: str) -> None:
    """Writes `text` to the real stderr at once, past the alarm filter's pipe: for a last line
    before `os._exit`, which would kill the filter thread before it forwards anything."""
    sys.stderr.flush()
    os.write(_original_stderr if _original_stderr is not None else 2, text.encode())


class _AlarmFilter:
    """Passes bytes through, except XLA's slow-compile alarm: its header line (`E... slow_operation_
    alarm.cc:NN]`), the `****` block holding "Very slow compile?" and "The operation took ...".

    Partial lines (progress bars redrawn with '\r') pass at once unless they could be the start
    of an alarm; a `****` block is held until it closes (at most 8 lines)."""

    def __init__(self, write):
        self.write = write
        self.partial = b""
        self.block: list[bytes] = []

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if "slow_operation_alarm.cc" in text or text.startswith("The operation took"):
            return
        if self.block or text.startswith("****"):
            self.block.append(line)
            closing = len(self.block) > 1 and text.startswith("****")
            if closing or len(self.block) > 8:
                held = b"".join(self.block)
                self.block = []
                if _ALARM_MARK.encode() not in held:
                    self.write(held)
            return
        self.write(line)

    def feed(self, data: bytes) -> None:
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        for line in lines:
            self._line(line + b"\n")
        rest = self.partial.decode("utf-8", "replace").lstrip()
        if self.partial and not self.block and not rest.startswith(("*", "E", "The operation")):
            self.write(self.partial)  # e.g. a progress bar redrawn with '\r'
            self.partial = b""

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""
        if self.block:
            held = b"".join(self.block)
            if _ALARM_MARK.encode() not in held:
                self.write(held)
            self.block = []
