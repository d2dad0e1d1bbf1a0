"""Convert PyTorch / Hugging Face checkpoints into msc_seg weights (params.npz + manifest.json).

    python -m msc_seg.tools.import_weights --format F --input FILE_OR_DIR --output DIR
        [--backbone NAME] [--target backbone|model] [--strict] [--unsafe-pickle]

This module keeps that command and the old import path; the code lives in the package
msc_seg.tools.weights (readers, one converter module per model family, the format registry,
the absl command line in cli.py). `--help` lists the formats.
"""

from msc_seg.tools.weights import *  # noqa: F403  (convert, import_weights, ConversionError, ...)
from msc_seg.tools.weights import __all__ as _package_all
from msc_seg.tools.weights.cli import main, run

__all__ = [*_package_all, "main", "run"]

if __name__ == "__main__":
    run()
