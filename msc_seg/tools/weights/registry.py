"""The checkpoint formats the importer knows: --format name -> its Converter.

To add a format, write its key table, canonicaliser and build step beside its model family
(swin.py, resnet.py, ...) as a `Converter`, and list it here.
"""

from __future__ import annotations

from msc_seg.tools.weights import hrnet, resnet, swin, upernet
from msc_seg.tools.weights.common import ConversionError, Converter

CONVERTERS: dict[str, Converter] = {
    c.format: c
    for c in (
        swin.SWIN_OFFICIAL,
        swin.HF_SWIN,
        upernet.HF_UPERNET,
        resnet.HF_RESNET,
        resnet.TORCHVISION_RESNET,
        hrnet.HRNET_OFFICIAL,
    )
}
FORMATS = tuple(CONVERTERS)


def get_converter(fmt: str) -> Converter:
    """The Converter of --format `fmt`; ConversionError naming it when there is none."""
    if fmt not in CONVERTERS:
        raise ConversionError(f"--format {fmt!r} is not one of {FORMATS}")
    return CONVERTERS[fmt]


def resolve_target(converter: Converter, target: str | None) -> str:
    """--target, or the format's default; ConversionError when the format cannot write it."""
    target = target or converter.targets[0]
    if target not in converter.targets:
        raise ConversionError(
            f"--target {target!r} is not available for --format {converter.format}; use "
            f"{' or '.join(sorted(converter.targets))}"
        )
    return target
