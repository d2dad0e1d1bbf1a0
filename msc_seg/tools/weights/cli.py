"""The weight importer's command line (absl flags).

    python -m msc_seg.tools.import_weights --format=F --input=FILE_OR_DIR --output=DIR
        [--backbone=NAME] [--target=backbone|model] [--strict] [--unsafe-pickle]

`--flag value` works as well as `--flag=value`; `--help` lists the formats and flags. Exit
status: 0 when DIR was written (a summary on stdout); 2 for bad flags, a bad --input or a
checkpoint that cannot be converted, with one line `error: ...` on stderr naming the flag, path
or key at fault.

The flags live in a FlagValues of their own rather than absl's global FLAGS, so `main` can run
several times in one process and --input/--output do not collide with msc_seg.main's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from msc_seg.models.pretrained import TARGETS
from msc_seg.tools.weights.common import ConversionError
from msc_seg.tools.weights.conversion import import_weights, summarise
from msc_seg.tools.weights.registry import CONVERTERS, FORMATS

PROG = "python -m msc_seg.tools.import_weights"
USAGE = (
    f"usage: {PROG} --format=F --input=FILE_OR_DIR --output=DIR [--backbone=NAME] "
    "[--target=backbone|model] [--strict] [--unsafe-pickle]\n\n"
    "Convert a PyTorch / Hugging Face checkpoint into msc_seg weights (params.npz + "
    "manifest.json);\nthen train with --config.model.pretrained=DIR."
)
HELP_ARGS = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull")
REQUIRED = ("format", "input", "output")
EXIT_ERROR = 2


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """Define the importer's flags on `flag_values` (a fresh FlagValues per parse)."""
    fv = flag_values
    flags.DEFINE_enum(
        "format", None, list(FORMATS), "Checkpoint format (required); see --help.", flag_values=fv
    )
    flags.DEFINE_string(
        "input",
        None,
        "Checkpoint file (.safetensors, or .pth/.pt/.bin/.ckpt/.tar with torch) or Hugging Face "
        "model folder (required).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Directory to write params.npz + manifest.json into (required).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "backbone",
        None,
        "Variant name (e.g. swin_t, resnet101, hrnet_w48) instead of the detected one.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "target",
        None,
        list(TARGETS),
        "What the weights fill: 'backbone' (every format) or 'model' (hf_upernet only, its "
        "default: backbone + heads).",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "strict",
        False,
        "Fail on tensors without a counterpart and on variables the checkpoint lacks (beyond "
        "the known design differences).",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "unsafe-pickle",
        False,
        "torch.load(weights_only=False): runs the file's pickled code; only for files you trust.",
        flag_values=fv,
    )
    return fv


def usage(flag_values: flags.FlagValues) -> str:
    formats = "\n".join(
        f"  {c.format:<19} {c.summary} [--target {'|'.join(c.targets)}]"
        for c in CONVERTERS.values()
    )
    return (
        f"{USAGE}\n\nFormats:\n{formats}\n\nFlags:\n"
        f"{flag_values.get_help(include_special_flags=False)}"
    )


def _error(message: object) -> int:
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the importer. argv: the arguments without the program name (default sys.argv[1:]).

    Returns the exit status: 0, or 2 after one line `error: ...` on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    fv = define_flags(flags.FlagValues())
    if any(a in HELP_ARGS for a in argv):
        print(usage(fv))
        return 0
    try:
        extra = fv([PROG, *argv])[1:]
    except flags.Error as e:
        return _error(e)
    if extra:
        return _error(
            f"unexpected argument(s) {' '.join(extra)!r}; pass --format, --input and --output "
            "as flags (see --help)"
        )
    absent = [f"--{name}" for name in REQUIRED if not fv[name].value]
    if absent:
        return _error(f"{', '.join(absent)} required (see --help)")
    try:
        conversion = import_weights(
            fv.format,
            fv.input,
            fv.output,
            backbone=fv.backbone,
            target=fv.target,
            strict=fv.strict,
            unsafe_pickle=fv["unsafe-pickle"].value,
        )
    except (ConversionError, OSError) as e:  # OSError: e.g. an --output that cannot be made
        return _error(e)
    print(summarise(conversion, fv.output))
    return 0


def run() -> None:
    """Console entry point: exit with `main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
