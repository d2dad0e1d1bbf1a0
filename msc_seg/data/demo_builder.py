"""`msc_seg_demo`: a procedural 8-class segmentation dataset that needs no download.

Each 128x128 scene has a sky (vertical gradient) above a wavy horizon and textured ground below.
The classes are built so that a model needs colour/texture AND context AND size, at several
scales, to separate them:

  0 sky       smooth blue gradient, top of the image
  1 ground    mottled green/brown texture, bottom of the image
  2 building  brick-striped grey blocks standing on the horizon
  3 window    small rectangles inside buildings, painted with the sky colour (context: only the
              surrounding building separates a window from sky)
  4 boulder   large discs of a diagonal-stripe orange texture, on the ground
  5 pebble    small discs of the same texture and colour (only size separates them from boulders)
  6 bird      small dark blobs in the sky
  7 hole      small dark blobs of the same colour on the ground (context: sky vs ground)

Ignore pixels (255 in storage): a 1-pixel ring around buildings and boulders, and in some images
a "void" blob of random colour noise. Every image gets its own colour gain, brightness and
Gaussian noise. Examples are a pure function of (seed, split, index), so builds are reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from msc_seg.data.demo import (
    BIRD,
    BOULDER,
    BUILDING,
    GROUND,
    HOLE,
    IMAGE_SIZE,
    PEBBLE,
    SKY,
    STORED_IGNORE,
    WINDOW,
)

# Split name -> stream id folded into the seed, so the splits never share a scene.
_SPLIT_STREAMS = {"train": 1, "validation": 2}


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """[S,S] float noise in [0,1]: a `cells` x `cells` random grid upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, IMAGE_SIZE, endpoint=False)
    i0 = pos.astype(np.int64)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [S, cells+1]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _ring(mask: np.ndarray) -> np.ndarray:
    """Outer 1-pixel boundary of a boolean mask (4-neighbourhood dilation minus the mask)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def generate_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 [128,128,3] and label uint8 [128,128] (255 = ignore)."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    label = np.empty((s, s), np.uint8)
    image = np.empty((s, s, 3), np.float32)

    # Sky / ground split along a wavy horizon.
    horizon = (
        rng.uniform(0.35, 0.6) * s
        + rng.uniform(0, 4) * np.sin(rng.uniform(0.02, 0.08) * xx[0] + rng.uniform(0, 6.3))
    ).astype(np.float32)  # [S]
    is_sky = yy < horizon[None, :]
    label[:] = np.where(is_sky, SKY, GROUND)

    t = (yy / s)[..., None]
    sky_top = np.array([40, 90, 200]) + rng.uniform(-15, 15, 3)
    sky_bottom = np.array([170, 210, 250]) + rng.uniform(-15, 5, 3)
    sky = sky_top * (1 - t) + sky_bottom * t  # [S,S,3]

    mottle = _smooth_noise(rng, 8)[..., None] * 0.7 + _smooth_noise(rng, 24)[..., None] * 0.3
    ground_a = np.array([60, 120, 40]) + rng.uniform(-15, 15, 3)
    ground_b = np.array([120, 95, 50]) + rng.uniform(-15, 15, 3)
    ground = ground_a * (1 - mottle) + ground_b * mottle
    image[:] = np.where(is_sky[..., None], sky, ground)
    ignore = np.zeros((s, s), bool)

    # Buildings standing on the horizon, with sky-coloured windows.
    building_colour = np.array([150, 140, 130]) + rng.uniform(-20, 20, 3)
    for _ in range(rng.integers(0, 4)):
        w = int(rng.integers(16, 36))
        x0 = int(rng.integers(0, s - w))
        base = int(horizon[x0 : x0 + w].max()) + 2
        top = max(2, base - int(rng.integers(22, 52)))
        mask = (xx >= x0) & (xx < x0 + w) & (yy >= top) & (yy < base)
        bricks = ((yy - top) % 5 == 0)[..., None]
        image[mask] = np.where(bricks, building_colour - 45, building_colour)[mask]
        label[mask] = BUILDING
        ignore |= _ring(mask)
        ignore &= ~mask
        # Window grid: cells of 5..7 x 5..8 px with gaps, clear of the building's edges.
        wh, ww = int(rng.integers(5, 8)), int(rng.integers(5, 9))
        gap = int(rng.integers(3, 6))
        row, col = (yy - top - 4) // (wh + gap), (xx - x0 - 3) // (ww + gap)
        on_grid = ((yy - top - 4) - row * (wh + gap) < wh) & ((xx - x0 - 3) - col * (ww + gap) < ww)
        inside = (yy >= top + 4) & (yy < base - 6) & (xx >= x0 + 3) & (xx < x0 + w - 3)
        present = rng.random((s, s)) < 0.85  # some window cells stay bricked up
        present = present[np.clip(row, 0, s - 1).astype(int), np.clip(col, 0, s - 1).astype(int)]
        windows = on_grid & inside & present
        image[windows] = sky[windows]
        label[windows] = WINDOW

    # Boulders (large) and pebbles (small): same stripe texture, only size differs.
    stripes = (((xx + yy) // 3) % 2)[..., None]
    rock_a = np.array([205, 110, 45]) + rng.uniform(-20, 20, 3)
    rock_b = rock_a * 0.7
    rock = np.where(stripes == 1, rock_a, rock_b)

    def place_on_ground(radius: float) -> tuple[float, float] | None:
        for _ in range(10):
            cx = rng.uniform(radius, s - radius)
            cy = rng.uniform(horizon[int(cx)] + radius + 2, s + radius * 0.5)
            if label[min(int(cy), s - 1), int(cx)] == GROUND:
                return cy, cx
        return None

    for klass, count, radii in (
        (BOULDER, rng.integers(0, 3), (13, 22)),
        (PEBBLE, rng.integers(1, 6), (5.0, 8.0)),
    ):
        for _ in range(count):
            r = rng.uniform(*radii)
            where = place_on_ground(r)
            if where is None:
                continue
            mask = _ellipse(yy, xx, where[0], where[1], r * rng.uniform(0.8, 1.0), r)
            image[mask] = rock[mask]
            label[mask] = klass
            if klass == BOULDER:
                ignore |= _ring(mask)
            ignore &= ~mask

    # Birds (sky) and holes (ground): the same dark colour, only the context differs.
    dark = np.array([45, 30, 55]) + rng.uniform(-10, 10, 3)
    for _ in range(rng.integers(1, 5)):
        r = rng.uniform(5, 8)
        where = place_on_ground(r)
        if where is not None:
            mask = _ellipse(yy, xx, where[0], where[1], r * 0.7, r) & (label == GROUND)
            image[mask] = dark
            label[mask] = HOLE
    for _ in range(rng.integers(0, 5)):
        r = rng.uniform(5, 8)
        cx = rng.uniform(r, s - r)
        cy = rng.uniform(r, max(r + 1, horizon[int(cx)] - r - 2))
        mask = _ellipse(yy, xx, cy, cx, r * 0.65, r) & (label == SKY)
        image[mask] = dark
        label[mask] = BIRD

    # An occasional void blob: random colours, ignored.
    if rng.random() < 0.3:
        mask = _ellipse(yy, xx, rng.uniform(0, s), rng.uniform(0, s), *rng.uniform(4, 10, 2))
        image[mask] = rng.uniform(0, 255, (int(mask.sum()), 3))
        ignore |= mask

    label[ignore] = STORED_IGNORE

    # Per-image photometric jitter and sensor noise.
    image = image * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20)
    image = image + rng.normal(0.0, rng.uniform(3, 9), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def generate_example(seed: int, stream: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The example `index` of split stream `stream`, a pure function of its arguments."""
    return generate_scene(np.random.default_rng([seed, stream, index]))


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
    """Seed and split sizes of the demo dataset."""

    seed: int = 0
    num_train: int = 400
    num_validation: int = 100


class MscSegDemo(tfds.core.GeneratorBasedBuilder):
    """Procedural 8-class scenes (see the module docstring); builds offline in seconds."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "1.1.0": "Larger windows, pebbles, birds and holes (learnable at stride 4 in minutes).",
    }
    BUILDER_CONFIGS = [DemoConfig(name="default", description="seed 0, 400 train / 100 val")]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"
                    ),
                    "label": tfds.features.Image(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 1), encoding_format="png"
                    ),
                    "name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        config = self.builder_config
        sizes = {"train": config.num_train, "validation": config.num_validation}
        return {
            split: self._generate_examples(split, sizes[split], stream)
            for split, stream in _SPLIT_STREAMS.items()
        }

    def _generate_examples(self, split: str, count: int, stream: int):
        for index in range(count):
            image, label = generate_example(self.builder_config.seed, stream, index)
            name = f"{split}_{index:05d}"
            yield name, {"image": image, "label": label[..., None], "name": name}
