"""Pretrained-weight import (msc_seg.tools.import_weights) and loading (msc_seg.models.pretrained).

Non-parity tests use numpy state dicts written by hand with the official key names. Parity tests
(`-m parity`, need torch + transformers) convert random-initialised Hugging Face models and check
that our Flax models reproduce their outputs to relative error <= 1e-4 in float32.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg.models.deeplab import DeepLabV3Segmentor
from msc_seg.models.pretrained import (
    MANIFEST_FILE,
    PARAMS_FILE,
    PretrainedError,
    apply_pretrained,
    load_pretrained_into_model,
)
from msc_seg.models.segmentor import UPerNetSegmentor
from msc_seg.tools.import_weights import (
    CONVERTERS,
    FORMATS,
    NO_COUNTERPART,
    ConversionError,
    convert,
    import_weights,
    main,
    torch_to_flax,
    write_conversion,
)
from msc_seg.tools.weights.registry import get_converter
from msc_seg.train_state import TrainState

RTOL = 1e-4
# swin_tiny_test: embed 32, depths (2,2,2,2), heads (1,2,4,8), window 4.
SWIN_TINY = dict(embed=32, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=4)
# resnet_tiny_test: stem 8, bottleneck widths 8/16/32/64 (outputs x4), blocks 1/2/1/1.
RESNET_TINY = dict(stem=8, planes=(8, 16, 32, 64), blocks=(1, 2, 1, 1))
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# helpers


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def build_abstract(factory):
    """`nnx.eval_shape` of `factory(rngs)` with concrete RNG counters (fast, see MODELS.md)."""

    def build(key):
        with jax.ensure_compile_time_eval():
            return factory(nnx.Rngs(key))

    return nnx.eval_shape(build, jax.random.key(0))


def random_values(tree, seed=0):
    """Concrete numpy-drawn values for an abstract nnx.State (no XLA initialiser compiles)."""
    rng = np.random.default_rng(seed)

    def draw(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.zeros(x.shape, x.dtype)
        return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)

    return jax.tree.map(draw, tree)


def split_state(abstract, seed=0):
    """-> graphdef, TrainState(params, batch_stats random), concrete RNG state."""
    graphdef, params, rng, batch_stats = nnx.split(abstract, nnx.Param, nnx.RngState, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=random_values(params, seed),
        batch_stats=random_values(batch_stats, seed + 1),
        opt_state=None,
    )
    return graphdef, state, random_values(rng)


def flat(tree) -> dict:
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(tree)}


def official_swin_shapes(embed, depths, heads, window, classes=10) -> dict:
    """Key -> (shape, dtype) of Microsoft's swin_*_patch4_window*.pth `model` dict, by hand."""
    n = window * window
    sd = {
        "patch_embed.proj.weight": (embed, 3, 4, 4),
        "patch_embed.proj.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
    }
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        c = embed * 2**i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            sd |= {
                b + "norm1.weight": (c,),
                b + "norm1.bias": (c,),
                b + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, h),
                b + "attn.relative_position_index": (n, n),
                b + "attn.qkv.weight": (3 * c, c),
                b + "attn.qkv.bias": (3 * c,),
                b + "attn.proj.weight": (c, c),
                b + "attn.proj.bias": (c,),
                b + "norm2.weight": (c,),
                b + "norm2.bias": (c,),
                b + "mlp.fc1.weight": (4 * c, c),
                b + "mlp.fc1.bias": (4 * c,),
                b + "mlp.fc2.weight": (c, 4 * c),
                b + "mlp.fc2.bias": (c,),
            }
            if j % 2:
                sd[b + "attn_mask"] = (4, n, n)
        if i < len(depths) - 1:
            sd |= {
                f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                f"layers.{i}.downsample.norm.weight": (4 * c,),
                f"layers.{i}.downsample.norm.bias": (4 * c,),
            }
    top = embed * 2 ** (len(depths) - 1)
    sd |= {"norm.weight": (top,), "norm.bias": (top,), "head.weight": (classes, top)}
    sd["head.bias"] = (classes,)
    return sd


def random_arrays(shapes: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        k: (
            rng.integers(0, 10, s).astype(np.int64)
            if k.endswith("relative_position_index")
            else rng.standard_normal(s).astype(np.float32)
        )
        for k, s in shapes.items()
    }


def torchvision_resnet_shapes(stem, planes, blocks, classes=10) -> dict:
    """Key -> shape of a torchvision ResNet (bottleneck) state dict, by hand."""

    def bn(prefix, c):
        return {
            f"{prefix}.weight": (c,),
            f"{prefix}.bias": (c,),
            f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,),
            f"{prefix}.num_batches_tracked": (),
        }

    sd = {"conv1.weight": (stem, 3, 7, 7), **bn("bn1", stem)}
    cin = stem
    for i, (p, count) in enumerate(zip(planes, blocks, strict=True), start=1):
        for b in range(count):
            k = f"layer{i}.{b}"
            sd |= {f"{k}.conv1.weight": (p, cin, 1, 1), **bn(f"{k}.bn1", p)}
            sd |= {f"{k}.conv2.weight": (p, p, 3, 3), **bn(f"{k}.bn2", p)}
            sd |= {f"{k}.conv3.weight": (4 * p, p, 1, 1), **bn(f"{k}.bn3", 4 * p)}
            if b == 0:
                sd |= {
                    f"{k}.downsample.0.weight": (4 * p, cin, 1, 1),
                    **bn(f"{k}.downsample.1", 4 * p),
                }
            cin = 4 * p
    sd |= {"fc.weight": (classes, cin), "fc.bias": (classes,)}
    return sd


def resnet_arrays(shapes: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.array(7, np.int64)
        elif k.endswith("running_var") or (
            k.split(".")[-2].startswith("bn") and k.endswith("weight")
        ):
            out[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
        else:
            out[k] = (rng.standard_normal(s) * 0.3).astype(np.float32)
    return out


def torch_style_arrays(factory, seed=0) -> dict:
    """Random values for `factory`'s Param/BatchStat tree under torch names and layouts (the
    inverse of torch_to_flax): the layout of checkpoints whose names our modules mirror (official
    HRNet, the HF UPerNet heads)."""
    abstract = build_abstract(factory)
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    rng = np.random.default_rng(seed)
    sd = {}
    for path, v in nnx.to_flat_state(nnx.state(abstract, (nnx.Param, nnx.BatchStat))):
        *parents, name = map(str, path)
        shape = v.get_value().shape
        if name == "kernel":  # HWIO -> OIHW, [in, out] -> [out, in]
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        key = ".".join([*parents, leaf.get(name, name)])
        sd[key] = rng.standard_normal(shape).astype(np.float32)
    return sd


def tiny_hrnet_arrays(seed=0) -> dict:
    """hrnet_tiny_test's backbone in the official HRNet checkpoint layout."""
    from msc_seg.models.hrnet import make_hrnet

    return torch_style_arrays(lambda rngs: make_hrnet("hrnet_tiny_test", rngs=rngs), seed)


def hf_swin_arrays(official: dict, seed=0) -> dict:
    """Microsoft's Swin state dict under the names SwinBackbone saves (legacy save_pretrained
    names), by hand: q/k/v split, no attention masks, per-stage output norms added."""
    top = {
        "patch_embed.proj": "embeddings.patch_embeddings.projection",
        "patch_embed.norm": "embeddings.norm",
        "norm": "layernorm",
        "head": "classifier",
    }
    block = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn": "attention.self",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    sd = {}
    for key, value in official.items():
        m = re.match(r"^layers\.(\d+)\.(blocks\.\d+\.)?(.*)$", key)
        if not m:
            module, _, leaf = key.rpartition(".")
            sd[f"{top[module]}.{leaf}"] = value
            continue
        prefix, rest = f"encoder.layers.{m[1]}.{m[2] or ''}", m[3]
        module, _, leaf = rest.rpartition(".")
        if not m[2]:  # patch merging: same names
            sd[prefix + rest] = value
        elif module == "attn.qkv":
            for name, part in zip(("query", "key", "value"), np.split(value, 3), strict=True):
                sd[f"{prefix}attention.self.{name}.{leaf}"] = part
        elif rest != "attn_mask":
            sd[f"{prefix}{block[module]}.{leaf}"] = value
    rng = np.random.default_rng(seed)
    for i in range(len(SWIN_TINY["depths"])):
        for p in ("weight", "bias"):
            c = SWIN_TINY["embed"] * 2**i
            sd[f"hidden_states_norms.stage{i + 1}.{p}"] = rng.standard_normal(c).astype(np.float32)
    return sd


def hf_upernet_arrays(seed=0) -> dict:
    """An HF UperNetForSemanticSegmentation state dict with swin_tiny_test sizes, by hand: the
    SwinBackbone under `backbone.`, the heads with each PPM branch's conv at index 1."""
    official = random_arrays(official_swin_shapes(**SWIN_TINY), seed)
    hf_swin = hf_swin_arrays(official, seed)
    sd = {
        f"backbone.{k}": v
        for k, v in hf_swin.items()
        if not k.startswith(("layernorm.", "classifier."))
    }
    model = torch_style_arrays(
        lambda rngs: UPerNetSegmentor(
            num_classes=5,
            backbone="swin_tiny_test",
            decoder_channels=16,
            aux_channels=8,
            drop_path_rate=0.0,
            use_projectors=False,
            rngs=rngs,
        ),
        seed,
    )
    for key, value in model.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            sd[re.sub(r"^(decode_head\.psp_modules\.\d+)\.", r"\1.1.", key)] = value
    return sd


def hf_resnet_arrays(torchvision: dict) -> dict:
    """A torchvision ResNet state dict under HF ResNetForImageClassification names, by hand."""
    top = {
        "conv1": "embedder.embedder.convolution",
        "bn1": "embedder.embedder.normalization",
        "fc": "classifier.1",
    }
    sd = {}
    for key, value in torchvision.items():
        m = re.match(r"^layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)$", key)
        if not m:
            module, _, leaf = key.partition(".")
            sd[f"{top[module]}.{leaf}"] = value
            continue
        stage, block, kind, k, leaf = m.groups()
        where = f"encoder.stages.{int(stage) - 1}.layers.{block}."
        if kind == "downsample.":
            where += "shortcut." + ("convolution." if k == "0" else "normalization.")
        else:
            where += f"layer.{int(k) - 1}."
            where += "convolution." if kind == "conv" else "normalization."
        sd[where + leaf] = value
    return sd


def tiny_deeplab(rngs):
    return DeepLabV3Segmentor(
        num_classes=3, backbone="resnet_tiny_test", output_stride=32, aspp_channels=8, rngs=rngs
    )


# ------------------------------------------------------------------------------------------
# converter (no torch)


def test_torch_to_flax_transposes_kernels_and_renames_norm_statistics():
    conv = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)  # OIHW
    path, kernel = torch_to_flax("a.0.conv.weight", conv)
    assert path == "a/0/conv/kernel" and kernel.shape == (5, 7, 3, 2)
    assert kernel[4, 6, 2, 1] == conv[1, 2, 4, 6]
    linear = np.arange(6, dtype=np.float32).reshape(2, 3)  # [out, in]
    path, kernel = torch_to_flax("mlp.fc1.weight", linear)
    assert path == "mlp/fc1/kernel" and np.array_equal(kernel, linear.T)
    assert torch_to_flax("bn1.weight", np.ones(4))[0] == "bn1/scale"
    assert torch_to_flax("bn1.running_mean", np.ones(4))[0] == "bn1/mean"
    assert torch_to_flax("bn1.running_var", np.ones(4))[0] == "bn1/var"
    assert torch_to_flax("bn1.num_batches_tracked", np.ones(()))[0] is None
    table = np.ones((49, 3))
    assert torch_to_flax("attn.relative_position_bias_table", table)[1].shape == (49, 3)


def test_swin_official_layout_loads_backbone_and_lists_head_norm_and_buffers_as_unused():
    sd = random_arrays(official_swin_shapes(**SWIN_TINY))
    conv = convert(sd, "swin_official", source="swin.pth")
    assert conv.architecture == {"family": "swin", "backbone": "swin_tiny_test", "window_size": 4}
    assert conv.target == "backbone"
    # Every tensor accounted for: loaded or unused with a reason.
    loaded_sources = [s for srcs in conv.loaded.values() for s in srcs]
    assert sorted(loaded_sources + list(conv.unused)) == sorted(sd)
    assert set(conv.unused) == {
        k for k in sd if k.startswith(("norm.", "head.")) or k.endswith(("attn_mask", "_index"))
    }
    assert "classification head" in conv.unused["head.weight"]
    assert "mask" in conv.unused["layers.0.blocks.1.attn_mask"]
    # The output norms norm0..norm3 are the only missing variables, by design.
    assert set(conv.missing) == {f"norm{i}/{p}" for i in range(4) for p in ("scale", "bias")}
    assert all("kept at init" in why for why in conv.missing.values())
    qkv = sd["layers.2.blocks.1.attn.qkv.weight"]
    np.testing.assert_array_equal(conv.params["layers/2/blocks/1/attn/qkv/kernel"], qkv.T)
    assert conv.params["patch_embed/proj/kernel"].shape == (4, 4, 3, 32)
    assert conv.config_overrides == {"model.backbone": "swin_tiny_test", "model.window_size": 4}


def test_swin_official_layout_also_accepts_reference_checkpoints_with_output_norms():
    shapes = official_swin_shapes(**SWIN_TINY)
    shapes |= {f"backbone.norm{i}.{p}": (32 * 2**i,) for i in range(4) for p in ("weight", "bias")}
    sd = random_arrays(shapes)
    conv = convert(sd, "swin_official")
    assert conv.missing == {}
    assert conv.loaded["norm3/scale"] == ["backbone.norm3.weight"]


def test_shape_mismatch_is_an_error_naming_the_key_and_both_shapes():
    sd = random_arrays(official_swin_shapes(**SWIN_TINY))
    sd["layers.1.blocks.0.mlp.fc1.weight"] = np.zeros((100, 64), np.float32)
    with pytest.raises(ConversionError) as e:
        convert(sd, "swin_official", source="bad.pth")
    msg = str(e.value)
    assert "layers.1.blocks.0.mlp.fc1.weight" in msg and "(100, 64)" in msg and "(64, 256)" in msg


def test_wrong_format_or_variant_is_an_error_that_says_what_to_do():
    sd = resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY))
    with pytest.raises(ConversionError, match="is the format right"):
        convert(sd, "swin_official")
    with pytest.raises(ConversionError, match="expects"):
        convert(sd, "torchvision_resnet", backbone="resnet50")
    with pytest.raises(ConversionError, match="--target"):
        convert(sd, "torchvision_resnet", target="model")


def test_hf_resnet_with_an_architecture_we_lack_is_refused_by_its_config():
    sd = {"embedder.embedder.convolution.weight": np.zeros((8, 3, 7, 7), np.float32)}
    with pytest.raises(ConversionError, match="downsample_in_bottleneck=True"):
        convert(sd, "hf_resnet", hf_config={"downsample_in_bottleneck": True})


def test_torchvision_resnet_layout_loads_every_backbone_key_and_lists_fc_unused():
    sd = resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY))
    conv = convert(sd, "torchvision_resnet")
    assert conv.architecture["backbone"] == "resnet_tiny_test"
    assert conv.missing == {}
    loaded_sources = [s for srcs in conv.loaded.values() for s in srcs]
    assert sorted(loaded_sources + list(conv.unused)) == sorted(sd)
    assert {k for k, why in conv.unused.items() if "classification" in why} == {
        "fc.weight",
        "fc.bias",
    }
    assert all("num_batches_tracked" in k for k in conv.unused if not k.startswith("fc."))
    np.testing.assert_array_equal(
        conv.params["layer2/0/downsample/1/var"], sd["layer2.0.downsample.1.running_var"]
    )


def test_hrnet_official_layout_loads_backbone_and_lists_classifier_modules_unused():
    # The official names are ours with torch leaf names (hrnet.py mirrors the checkpoint).
    sd = tiny_hrnet_arrays()
    # Spot checks of names from the official checkpoint layout.
    for key in (
        "layer1.0.downsample.0.weight",
        "transition1.1.0.0.weight",
        "transition2.2.0.0.weight",
        "stage2.0.branches.1.0.conv2.weight",
        "stage2.0.fuse_layers.0.1.1.running_var",
        "stage4.0.fuse_layers.3.0.2.0.weight",
        "stage4.0.fuse_layers.3.0.0.1.running_mean",
    ):
        assert key in sd, key
    head = {
        "incre_modules.0.0.conv1.weight": (4, 8, 1, 1),
        "downsamp_modules.0.0.weight": (8, 8, 3, 3),
        "final_layer.0.weight": (16, 8, 1, 1),
        "classifier.weight": (10, 16),
        "classifier.bias": (10,),
    }
    sd |= {k: np.zeros(s, np.float32) for k, s in head.items()}
    conv = convert(sd, "hrnet_official")
    assert conv.architecture["backbone"] == "hrnet_tiny_test"
    assert conv.missing == {}
    assert set(conv.unused) == set(head)
    assert all("classification head" in why for why in conv.unused.values())


# ------------------------------------------------------------------------------------------
# dispatch table: one converter per format (no torch)

# Each format's checkpoint layout, by hand, with the tiny test variants' shapes.
SYNTHETIC = {
    "swin_official": lambda: random_arrays(official_swin_shapes(**SWIN_TINY)),
    "hf_swin": lambda: hf_swin_arrays(random_arrays(official_swin_shapes(**SWIN_TINY))),
    "hf_upernet": hf_upernet_arrays,
    "hf_resnet": lambda: hf_resnet_arrays(resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY))),
    "torchvision_resnet": lambda: resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY)),
    "hrnet_official": tiny_hrnet_arrays,
}
FAMILY_BACKBONE = {
    "swin": "swin_tiny_test",
    "upernet": "swin_tiny_test",
    "resnet": "resnet_tiny_test",
    "hrnet": "hrnet_tiny_test",
}


def test_dispatch_table_has_one_converter_per_documented_format():
    assert FORMATS == (
        "swin_official",
        "hf_swin",
        "hf_upernet",
        "hf_resnet",
        "torchvision_resnet",
        "hrnet_official",
    )
    assert set(SYNTHETIC) == set(CONVERTERS) == set(FORMATS)  # every format is tested below
    for fmt, converter in CONVERTERS.items():
        assert converter.format == fmt and converter.summary and converter.family in FAMILY_BACKBONE
        assert get_converter(fmt) is converter
        assert converter.targets == (
            ("model", "backbone") if fmt == "hf_upernet" else ("backbone",)
        )
    with pytest.raises(ConversionError, match="--format 'nope' is not one of"):
        get_converter("nope")
    with pytest.raises(ConversionError, match="--format 'nope'"):
        convert(SYNTHETIC["swin_official"](), "nope")


@pytest.mark.parametrize("fmt", FORMATS)
def test_dispatch_table_converts_each_format_with_its_family(fmt):
    sd = SYNTHETIC[fmt]()
    conv = convert(sd, fmt, source=f"{fmt}.ckpt")
    family = CONVERTERS[fmt].family
    assert conv.format == fmt and conv.target == CONVERTERS[fmt].targets[0]
    assert conv.architecture["family"] == family
    assert conv.architecture["backbone"] == FAMILY_BACKBONE[family]
    # Every tensor accounted for, each with a counterpart or a known reason to drop it.
    loaded_sources = [s for srcs in conv.loaded.values() for s in srcs]
    assert sorted(loaded_sources + list(conv.unused)) == sorted(sd)
    assert not [k for k, why in conv.unused.items() if why.startswith(NO_COUNTERPART)]
    assert all(why != "not in the checkpoint" for why in conv.missing.values())


def test_hf_key_tables_give_the_arrays_of_the_official_layouts():
    """HF Swin (legacy names, q/k/v split) and HF ResNet names, renamed by hand from the
    official / torchvision dicts, convert to the same arrays; no torch needed."""
    official = random_arrays(official_swin_shapes(**SWIN_TINY))
    hf, ref = convert(hf_swin_arrays(official), "hf_swin"), convert(official, "swin_official")
    assert hf.missing == {} and set(hf.params) == set(ref.params) | set(ref.missing)
    for key, value in ref.params.items():
        np.testing.assert_array_equal(hf.params[key], value, err_msg=key)
    assert hf.loaded["layers/1/blocks/0/attn/qkv/kernel"] == [
        f"encoder.layers.1.blocks.0.attention.self.{n}.weight" for n in ("query", "key", "value")
    ]
    assert hf.loaded["norm2/scale"] == ["hidden_states_norms.stage3.weight"]

    tv = resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY))
    hf, ref = convert(hf_resnet_arrays(tv), "hf_resnet"), convert(tv, "torchvision_resnet")
    assert set(hf.params) == set(ref.params) and hf.missing == {}
    for key, value in ref.params.items():
        np.testing.assert_array_equal(hf.params[key], value, err_msg=key)
    assert hf.loaded["layer2/0/downsample/1/var"] == [
        "encoder.stages.1.layers.0.shortcut.normalization.running_var"
    ]


def test_hf_upernet_heads_load_at_the_model_root_or_are_left_out_for_a_backbone_target():
    sd = hf_upernet_arrays()
    model = convert(sd, "hf_upernet")
    assert model.missing == {}
    assert model.architecture["num_classes"] == 5 and model.architecture["aux_channels"] == 8
    assert model.architecture["pool_scales"] == (1, 2, 3, 6)
    assert any("pool_scales" in n for n in model.notes)  # no config.json says so
    np.testing.assert_array_equal(
        model.params["decode_head/psp_modules/2/conv/kernel"],
        sd["decode_head.psp_modules.2.1.conv.weight"].transpose(2, 3, 1, 0),
    )
    backbone = convert(sd, "hf_upernet", target="backbone")
    assert backbone.architecture["family"] == "swin"
    assert {k[len("backbone/") :] for k in model.params if k.startswith("backbone/")} == set(
        backbone.params
    )
    heads = {k for k in sd if k.startswith(("decode_head.", "auxiliary_head."))}
    assert heads and all("--target backbone" in backbone.unused[k] for k in heads)


# ------------------------------------------------------------------------------------------
# loading (no torch)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    sd = resnet_arrays(torchvision_resnet_shapes(**RESNET_TINY), seed=3)
    out = tmp_path_factory.mktemp("resnet_tiny")
    write_conversion(convert(sd, "torchvision_resnet", source="tv.pth"), out)
    return out, sd


def test_apply_pretrained_puts_backbone_file_under_backbone_and_keeps_shardings(resnet_file):
    out, sd = resnet_file
    _, state, _ = split_state(build_abstract(tiny_deeplab))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(state, replicated)
    logs = []
    new = apply_pretrained(state, out, log=logs.append)
    old_p, new_p, new_r = flat(state.params), flat(new.params), flat(new.batch_stats)
    np.testing.assert_array_equal(
        new_p["backbone/conv1/kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        new_r["backbone/layer3/0/bn2/mean"], sd["layer3.0.bn2.running_mean"]
    )
    for key, value in new_p.items():
        assert value.sharding == replicated, key
        if not key.startswith("backbone/"):  # decode head and projectors stay as they were
            np.testing.assert_array_equal(value, old_p[key])
    others = [k for k in list(new_p) + list(new_r) if not k.startswith("backbone/")]
    assert f"not in the file, left at init ({len(others)})" in "\n".join(logs)


def test_apply_pretrained_rejects_a_shape_mismatch_naming_the_key(resnet_file, tmp_path):
    out, _ = resnet_file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST_FILE).write_text((out / MANIFEST_FILE).read_text())
    with np.load(out / PARAMS_FILE) as npz:
        arrays = dict(npz)
    arrays["layer1/0/conv2/kernel"] = np.zeros((3, 3, 8, 9), np.float32)
    np.savez(bad / PARAMS_FILE, **arrays)
    _, state, _ = split_state(build_abstract(tiny_deeplab))
    with pytest.raises(
        PretrainedError, match=r"backbone/layer1/0/conv2/kernel.*\(3, 3, 8, 9\).*\(3, 3, 8, 8\)"
    ):
        apply_pretrained(state, bad, log=lambda _: None)


def test_apply_pretrained_strict_rejects_a_file_for_another_architecture(resnet_file, tmp_path):
    out, _ = resnet_file
    partial = tmp_path / "partial"
    partial.mkdir()
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest))
    with np.load(out / PARAMS_FILE) as npz:
        arrays = {k: v for k, v in npz.items() if not k.startswith("layer4/")}
    arrays["layer5/0/conv1/kernel"] = np.zeros((1, 1, 1, 1), np.float32)
    np.savez(partial / PARAMS_FILE, **arrays)
    _, state, _ = split_state(build_abstract(tiny_deeplab))
    with pytest.raises(
        PretrainedError, match="not in the file: backbone/layer4.*lacks: backbone/layer5"
    ):
        apply_pretrained(state, partial, log=lambda _: None)
    new = apply_pretrained(state, partial, strict=False, log=lambda _: None)
    assert flat(new.params)["backbone/conv1/kernel"].shape == (7, 7, 3, 8)


def test_apply_pretrained_needs_no_torch(resnet_file):
    out, _ = resnet_file
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import jax, numpy as np
        from flax import nnx
        from msc_seg.models.pretrained import load_pretrained_into_model
        from msc_seg.models.resnet import make_resnet

        def build(key):
            with jax.ensure_compile_time_eval():
                return make_resnet("resnet_tiny_test", rngs=nnx.Rngs(key))

        def fill(x):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.key(0)
            return np.zeros(x.shape, x.dtype)

        graphdef, state = nnx.split(nnx.eval_shape(build, jax.random.key(0)))
        state = jax.tree.map(fill, state)
        model = load_pretrained_into_model(nnx.merge(graphdef, state), {str(out)!r}, at="")
        print("conv1", float(np.abs(np.asarray(model.conv1.kernel[...])).sum()))
        assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded" in result.stdout and float(result.stdout.split("conv1")[-1]) > 0


def test_cli_writes_params_and_manifest(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    sd = random_arrays(official_swin_shapes(**SWIN_TINY))
    src = tmp_path / "swin_tiny.safetensors"
    safetensors_numpy.save_file(sd, src)
    out = tmp_path / "converted"
    assert main(["--format", "swin_official", "--input", str(src), "--output", str(out)]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == "swin_official" and manifest["target"] == "backbone"
    assert manifest["architecture"]["backbone"] == "swin_tiny_test"
    assert manifest["counts"]["source_tensors"] == len(sd)
    assert set(manifest) >= {"loaded", "missing", "unused", "source"}
    with np.load(out / PARAMS_FILE) as npz:
        assert set(npz.files) == set(manifest["loaded"])
        assert all(npz[k].dtype == np.float32 for k in npz.files)
    # A bad format exits with a message instead of a traceback.
    assert main(["--format", "hrnet_official", "--input", str(src), "--output", str(out)]) == 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m msc_seg.tools.import_weights ARGS` from this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "msc_seg.tools.import_weights", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--format", "nope", "--input", "x.pth", "--output", "out"], "--format=nope"),
        (["--format=hf_swin", "--input=/no/such/swin.pth", "--output=out"], "/no/such/swin.pth"),
    ],
    ids=["unknown-format", "bad-path"],
)
def test_cli_error_is_one_line_naming_the_culprit_with_exit_code_2(args, culprit):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], lines
    assert result.stdout == ""


def test_cli_flag_mistakes_end_in_one_line_and_help_lists_the_formats(tmp_path, capsys):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    src = tmp_path / "swin_tiny.safetensors"
    safetensors_numpy.save_file(random_arrays(official_swin_shapes(**SWIN_TINY)), src)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    good = ["--format=swin_official", f"--input={src}"]
    cases = [
        ([], "--format, --input, --output required"),
        ([*good, "--output", str(tmp_path / "o"), "--bogus"], "'bogus'"),
        ([*good, "--output", str(tmp_path / "o"), "extra"], "'extra'"),
        ([*good, "--output", str(tmp_path / "o"), "--target=model"], "--target 'model'"),
        ([*good, "--output", str(blocker / "out")], str(blocker)),
    ]
    for args, culprit in cases:
        assert main(args) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and culprit in err, (args, err)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(fmt in out for fmt in FORMATS) and "--unsafe-pickle" in out


# ------------------------------------------------------------------------------------------
# parity with PyTorch peers (transformers)


def _require_torch():
    torch = pytest.importorskip("torch", reason="parity tests need torch (the parity extra)")
    transformers = pytest.importorskip(
        "transformers", reason="parity tests need transformers (the parity extra)"
    )
    return torch, transformers


def _randomise(torch, model):
    """Random weights everywhere, norm scales near 1, BN statistics away from (0, 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if p.ndim > 1 else 0.3
            base = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(torch.randn_like(p) * scale + base)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def hf_upernet(tmp_path_factory):
    """A random tiny HF UperNet+Swin (swin_tiny_test sizes), saved and converted with the CLI."""
    torch, transformers = _require_torch()
    swin = transformers.SwinConfig(
        embed_dim=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        drop_path_rate=0.0,
    )
    config = transformers.UperNetConfig(
        backbone_config=swin,
        hidden_size=64,
        auxiliary_channels=32,
        num_labels=5,
        use_auxiliary_head=True,
        auxiliary_in_channels=128,
    )
    model = _randomise(torch, transformers.UperNetForSemanticSegmentation(config))
    hf_dir = tmp_path_factory.mktemp("hf_upernet")
    model.save_pretrained(hf_dir)  # model.safetensors + config.json
    out = tmp_path_factory.mktemp("converted_upernet")
    assert main(["--format", "hf_upernet", "--input", str(hf_dir), "--output", str(out)]) == 0
    return torch, model, hf_dir, out


@pytest.mark.parity
def test_hf_upernet_swin_parity_logits_aux_and_stages(hf_upernet):
    torch, hf, _, out = hf_upernet
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    arch = manifest["architecture"]
    assert arch["backbone"] == "swin_tiny_test" and arch["num_classes"] == 5
    assert manifest["missing"] == {}
    assert set(manifest["unused"]) == {
        "backbone.swin.layernorm.weight",
        "backbone.swin.layernorm.bias",
    } | {k for k in manifest["unused"] if k.endswith("num_batches_tracked")}
    abstract = build_abstract(
        lambda rngs: UPerNetSegmentor(
            num_classes=5,
            backbone="swin_tiny_test",
            decoder_channels=64,
            aux_channels=32,
            aux_in_index=2,
            drop_path_rate=0.0,
            use_projectors=False,
            rngs=rngs,
        )
    )
    graphdef, params, rng, batch_stats = nnx.split(abstract, nnx.Param, nnx.RngState, ...)
    # Applied to the abstract state: every variable must come from the file.
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=None
    )
    state = apply_pretrained(state, out, log=lambda _: None)
    model = nnx.merge(graphdef, state.params, random_values(rng), state.batch_stats)

    # 96x160: stages 3 and 4 (6x10, 3x5) are padded to the window 4; HF's SwinBackbone shifts
    # every odd block at any size (always_partition), like ours and the reference.
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 160)).astype(np.float32)

    @nnx.jit
    def run(m, images):
        return m(images), m.backbone(images)

    outputs, stages = run(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        pixels = torch.from_numpy(x)
        ref = hf(pixel_values=pixels)
        feats = hf.backbone(pixels).feature_maps  # after HF's per-stage norms
        aux = torch.nn.functional.interpolate(
            hf.auxiliary_head(feats), size=x.shape[2:], mode="bilinear", align_corners=False
        )
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
    for i, (ours, theirs) in enumerate(zip(stages, feats, strict=True)):
        assert rel_err(nchw(ours), theirs.numpy()) <= RTOL, f"stage {i}"
    assert rel_err(nchw(outputs.logits), ref.logits.numpy()) <= RTOL
    assert rel_err(nchw(outputs.aux_logits), aux.numpy()) <= RTOL


@pytest.mark.parity
def test_hf_swin_accepts_saved_and_in_memory_key_names(hf_upernet, tmp_path):
    """SwinBackbone saved with save_pretrained (legacy names: attention.self.query, ...) and its
    transformers-5 state_dict (attention.q_proj, ...) convert to the UperNet file's backbone."""
    _, hf, hf_dir, out = hf_upernet
    hf.backbone.save_pretrained(tmp_path / "swin")
    saved = import_weights("hf_swin", tmp_path / "swin", tmp_path / "out", strict=True)
    in_memory = convert({k: v.numpy() for k, v in hf.backbone.state_dict().items()}, "hf_swin")
    with np.load(out / PARAMS_FILE) as npz:
        expected = {k[len("backbone/") :]: npz[k] for k in npz.files if k.startswith("backbone/")}
    for conv in (saved, in_memory):
        assert conv.missing == {} and set(conv.params) == set(expected)
        assert set(conv.unused) == {"swin.layernorm.weight", "swin.layernorm.bias"}
        for key, value in conv.params.items():
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
    # The UperNet file itself, backbone only (e.g. to fine-tune on another class set).
    backbone_only = import_weights("hf_upernet", hf_dir, tmp_path / "bb", target="backbone")
    assert set(backbone_only.params) == set(expected) and backbone_only.missing == {}
    assert all(
        "--target backbone" in why
        for k, why in backbone_only.unused.items()
        if k.startswith(("decode_head.", "auxiliary_head.")) and "num_batches" not in k
    )
    assert saved.loaded["layers/0/blocks/1/attn/qkv/kernel"] == [
        f"encoder.layers.0.blocks.1.attention.self.{n}.weight" for n in ("query", "key", "value")
    ]


@pytest.mark.parity
def test_swin_official_pth_converts_like_the_hf_checkpoint_it_was_made_from(hf_upernet, tmp_path):
    """The same Swin weights in Microsoft's layout (hand-renamed from HF, saved with
    torch.save inside {'model': ...}) give the same arrays as the HF conversion."""
    torch, hf, _, out = hf_upernet
    sd = {k: v.numpy() for k, v in hf.state_dict().items() if k.startswith("backbone.")}
    official = {}
    for i, depth in enumerate(SWIN_TINY["depths"]):
        for j in range(depth):
            src, dst = f"backbone.swin.encoder.layers.{i}.blocks.{j}.", f"layers.{i}.blocks.{j}."
            att = src + "attention."
            official |= {
                dst + "norm1.weight": sd[src + "layernorm_before.weight"],
                dst + "norm1.bias": sd[src + "layernorm_before.bias"],
                dst + "attn.relative_position_bias_table": sd[
                    att + "relative_position_bias.relative_position_bias_table"
                ],
                dst + "attn.relative_position_index": np.zeros((16, 16), np.int64),
                dst + "attn.qkv.weight": np.concatenate(
                    [sd[att + f"{n}_proj.weight"] for n in "qkv"]
                ),
                dst + "attn.qkv.bias": np.concatenate([sd[att + f"{n}_proj.bias"] for n in "qkv"]),
                dst + "attn.proj.weight": sd[att + "o_proj.weight"],
                dst + "attn.proj.bias": sd[att + "o_proj.bias"],
                dst + "norm2.weight": sd[src + "layernorm_after.weight"],
                dst + "norm2.bias": sd[src + "layernorm_after.bias"],
                dst + "mlp.fc1.weight": sd[src + "mlp.fc1.weight"],
                dst + "mlp.fc1.bias": sd[src + "mlp.fc1.bias"],
                dst + "mlp.fc2.weight": sd[src + "mlp.fc2.weight"],
                dst + "mlp.fc2.bias": sd[src + "mlp.fc2.bias"],
            }
            if j % 2:
                official[dst + "attn_mask"] = np.zeros((4, 16, 16), np.float32)
        if i < 3:
            for part in ("reduction.weight", "norm.weight", "norm.bias"):
                official[f"layers.{i}.downsample.{part}"] = sd[
                    f"backbone.swin.encoder.layers.{i}.downsample.{part}"
                ]
    emb = "backbone.swin.embeddings."
    official |= {
        "patch_embed.proj.weight": sd[emb + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[emb + "patch_embeddings.projection.bias"],
        "patch_embed.norm.weight": sd[emb + "norm.weight"],
        "patch_embed.norm.bias": sd[emb + "norm.bias"],
        "norm.weight": np.ones(256, np.float32),
        "norm.bias": np.zeros(256, np.float32),
        "head.weight": np.zeros((10, 256), np.float32),
        "head.bias": np.zeros(10, np.float32),
    }
    pth = tmp_path / "swin_tiny_patch4_window4.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official.items()}}, pth)
    conv = import_weights("swin_official", pth, tmp_path / "converted")
    unused = set(conv.unused)
    assert unused == {
        k for k in official if k.startswith(("norm.", "head.")) or "attn_mask" in k or "index" in k
    }
    with np.load(out / PARAMS_FILE) as npz:
        hf_backbone = {
            k[len("backbone/") :]: npz[k] for k in npz.files if k.startswith("backbone/")
        }
    norms = {k for k in hf_backbone if k.startswith("norm")}
    assert set(conv.params) == set(hf_backbone) - norms and set(conv.missing) == norms
    for key, value in conv.params.items():
        np.testing.assert_array_equal(value, hf_backbone[key], err_msg=key)


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory):
    torch, transformers = _require_torch()
    config = transformers.ResNetConfig(
        embedding_size=RESNET_TINY["stem"],
        hidden_sizes=[4 * p for p in RESNET_TINY["planes"]],
        depths=list(RESNET_TINY["blocks"]),
    )
    model = _randomise(torch, transformers.ResNetModel(config))
    hf_dir = tmp_path_factory.mktemp("hf_resnet")
    model.save_pretrained(hf_dir)
    out = tmp_path_factory.mktemp("converted_resnet")
    conv = import_weights("hf_resnet", hf_dir, out, strict=True)
    return torch, model, conv, out


@pytest.mark.parity
def test_hf_resnet_parity_stage_outputs(hf_resnet):
    """HF ResNet (downsample_in_bottleneck=False, downsample_in_first_stage=False) is the
    torchvision v1.5 architecture: ours at output stride 32 reproduces every stage."""
    torch, hf, conv, out = hf_resnet
    assert conv.missing == {}
    assert all("num_batches_tracked" in k for k in conv.unused)
    from msc_seg.models.resnet import make_resnet

    abstract = build_abstract(
        lambda rngs: make_resnet("resnet_tiny_test", output_stride=32, rngs=rngs)
    )
    graphdef, state = nnx.split(abstract)
    model = load_pretrained_into_model(
        nnx.merge(graphdef, random_values(state)), out, at="", log=lambda _: None
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    stages = nnx.jit(lambda m, images: m(images))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x), output_hidden_states=True).hidden_states[1:]
    for i, (ours, theirs) in enumerate(zip(stages, ref, strict=True)):
        assert rel_err(np.asarray(ours).transpose(0, 3, 1, 2), theirs.numpy()) <= RTOL, i


@pytest.mark.parity
def test_torchvision_resnet_pth_converts_like_the_hf_checkpoint_it_was_made_from(
    hf_resnet, tmp_path
):
    torch, hf, hf_conv, _ = hf_resnet
    renames = (
        ("embedder.embedder.convolution.", "conv1."),
        ("embedder.embedder.normalization.", "bn1."),
    )
    tv = {}
    for key, value in hf.state_dict().items():
        new = key
        for old, rep in renames:
            new = new.replace(old, rep)
        parts = new.split(".")
        if parts[0] == "encoder":  # encoder.stages.S.layers.B.(shortcut|layer.K).(conv|norm)...
            s, b = int(parts[2]), parts[4]
            rest = parts[5:]
            if rest[0] == "shortcut":
                mod = "downsample." + ("0" if rest[1] == "convolution" else "1")
                rest = rest[2:]
            else:
                k = int(rest[1]) + 1
                mod = f"conv{k}" if rest[2] == "convolution" else f"bn{k}"
                rest = rest[3:]
            new = ".".join([f"layer{s + 1}", b, mod, *rest])
        tv[new] = value
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(10, 256), torch.zeros(10)
    assert set(tv) == set(torchvision_resnet_shapes(**RESNET_TINY))  # the torchvision names
    pth = tmp_path / "resnet_tiny.pth"
    torch.save(tv, pth)
    conv = import_weights("torchvision_resnet", pth, tmp_path / "out", strict=True)
    loaded_sources = [s for srcs in conv.loaded.values() for s in srcs]
    assert sorted(loaded_sources + list(conv.unused)) == sorted(tv)
    assert {k for k, why in conv.unused.items() if "classification" in why} == {
        "fc.weight",
        "fc.bias",
    }
    assert set(conv.params) == set(hf_conv.params)
    for key, value in conv.params.items():
        np.testing.assert_array_equal(value, hf_conv.params[key], err_msg=key)
