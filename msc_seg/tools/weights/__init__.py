"""Convert PyTorch / Hugging Face checkpoints into msc_seg weights (params.npz + manifest.json).

Run it as `python -m msc_seg.tools.import_weights` (cli.py), then train with
`--config.model.pretrained=DIR`; msc_seg.models.pretrained loads DIR without torch. Formats
(registry.py maps each to its converter, which sits beside its model family):

* `swin_official` (swin.py; target backbone): Microsoft `swin_{tiny,small,base,large}_patch4_
  window*.pth` (`{'model': sd}`), and the reference's segmentation Swin state dicts (same keys
  + norm0..3);
* `hf_swin` (swin.py; backbone): transformers SwinModel / SwinBackbone /
  SwinForImageClassification;
* `hf_upernet` (upernet.py; model, or backbone with `--target backbone`): transformers
  UperNetForSemanticSegmentation with a Swin backbone (backbone + decode head + aux head);
* `hf_resnet` (resnet.py; backbone): transformers ResNetModel / ResNetBackbone /
  ResNetForImageClassification;
* `torchvision_resnet` (resnet.py; backbone): torchvision or timm ResNet-50/101 (same keys);
* `hrnet_official` (hrnet.py; backbone): `hrnetv2_w48_imagenet_pretrained.pth` (and W18).

The steps: readers.py reads the file into numpy (torch only for `.pth`-like files); the
format's converter renames each key to our torch-style layout ("canonical" keys) or gives the
reason it is not loaded; detect.py finds the variant from the tensor shapes; conversion.py
transforms layouts, checks every tensor against the abstract target model and writes the
result.

Layout rules: conv kernels OIHW -> HWIO, linear weights [out,in] -> [in,out], norm `weight` ->
`scale`, BatchNorm `running_mean`/`running_var` -> BatchStat `mean`/`var`, `num_batches_tracked`
dropped; Hugging Face Swin q/k/v projections are concatenated into the fused `qkv` of the
official layout.
"""

from msc_seg.tools.weights.common import (
    NO_COUNTERPART,
    Architecture,
    ConversionError,
    Converter,
    Request,
    torch_to_flax,
)
from msc_seg.tools.weights.conversion import (
    Conversion,
    abstract_shapes,
    convert,
    import_weights,
    summarise,
    write_conversion,
)
from msc_seg.tools.weights.detect import detect_hrnet, detect_resnet, detect_swin
from msc_seg.tools.weights.readers import TORCH_SUFFIXES, read_checkpoint
from msc_seg.tools.weights.registry import CONVERTERS, FORMATS, get_converter

__all__ = [
    "CONVERTERS",
    "FORMATS",
    "NO_COUNTERPART",
    "TORCH_SUFFIXES",
    "Architecture",
    "Conversion",
    "ConversionError",
    "Converter",
    "Request",
    "abstract_shapes",
    "convert",
    "detect_hrnet",
    "detect_resnet",
    "detect_swin",
    "get_converter",
    "import_weights",
    "read_checkpoint",
    "summarise",
    "torch_to_flax",
    "write_conversion",
]
