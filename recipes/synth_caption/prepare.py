"""Make a synthetic image-captioning corpus of simple shapes, for training and testing captioning offline.

Each image holds one to three shapes (circle, square, triangle, star, diamond) in one of six colours (red,
green, blue, yellow, purple, orange), small or large, each at its own place (left, right, top, bottom,
center, with a little jitter), on a plain or lightly textured gray background. Each image has five reference
captions, worded differently and all true ("a large red circle on the left", "there is a big red circle on
the left side", "a red circle left of a small blue square" ...). Everything follows from --seed.

Writes, under --out (default data/synth_caption):
    train.jsonl, valid.jsonl, test.jsonl   {"id": "train_00000", "image": "img/train_00000.png", "captions": [...5]}
    img/<id>.png                           --image-size square RGB PNGs; paths are relative to --out
    text.txt                               the train captions, one a line (for tokenizer training)
    settings.json                          the settings that made them; a rerun with the same settings does nothing

A scene is the exact set of (position, shape, colour, size); valid and test scenes are all different, and
train holds none of them, so a test measures new combinations rather than memorized images.

    python recipes/synth_caption/prepare.py --out data/synth_caption --num-train 4000 --image-size 96
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

# Bump when shapes, colours, rendering or captions change, so old corpora are rebuilt.
CORPUS_VERSION = 1
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then shrunk: smooth edges

SHAPES = ["circle", "square", "triangle", "star", "diamond"]
COLORS = {"red": (215, 35, 35), "green": (35, 160, 55), "blue": (35, 75, 215), "yellow": (240, 205, 25),
          "purple": (135, 55, 175), "orange": (245, 135, 25)}
RADIUS = {"small": 0.08, "large": 0.13}  # of the image side
# Centres (x, y) as fractions of the side. Neighbours are 0.3 apart: two large shapes never touch.
POSITIONS = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8),
             "center": (0.5, 0.5)}
JITTER = 0.015
SHAPE_COUNT_WEIGHTS = {1: 0.3, 2: 0.4, 3: 0.3}
TEXTURES = ["plain", "noise", "stripes", "gradient"]

SIZE_WORDS = {"small": ["small", "little"], "large": ["large", "big"]}
PLACE_PHRASES = {
    "left": ["on the left", "on the left side", "to the left", "at the left of the image", "in the left part of the picture"],
    "right": ["on the right", "on the right side", "to the right", "at the right of the image", "in the right part of the picture"],
    "top": ["at the top", "near the top", "at the top of the image", "in the upper part of the picture", "on the top side"],
    "bottom": ["at the bottom", "near the bottom", "at the bottom of the image", "in the lower part of the picture", "on the bottom side"],
    "center": ["in the center", "in the middle", "in the center of the image", "in the middle of the picture", "at the center"],
}
RELATION_PHRASES = {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
                    "above": ["above", "over"], "below": ["below", "under", "beneath"]}

# ---------------------------------------------------------------------------------------------------------
# Scenes: a tuple of objects (position, shape, colour, size), sorted by position, is the identity of a scene.


def sample_scene(rng: random.Random) -> tuple[tuple[str, str, str, str], ...]:
    count = rng.choices(list(SHAPE_COUNT_WEIGHTS), weights=list(SHAPE_COUNT_WEIGHTS.values()))[0]
    places = rng.sample(list(POSITIONS), count)
    objects, kinds = [], set()
    for place in places:
        while True:  # no two shapes of the same kind and colour: every caption names each one unambiguously
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            if (shape, color) not in kinds:
                break
        kinds.add((shape, color))
        objects.append((place, shape, color, rng.choice(list(RADIUS))))
    return tuple(sorted(objects, key=lambda item: list(POSITIONS).index(item[0])))


def make_splits(num_train: int, num_valid: int, num_test: int, seed: int) -> dict[str, list[tuple]]:
    """Scenes of each split: test and valid scenes all distinct; train scenes (which may repeat, with a
    different rendering) never one of them."""
    rng = random.Random(seed)
    held_out: set[tuple] = set()
    splits: dict[str, list[tuple]] = {"test": [], "valid": [], "train": []}
    for split, count in (("test", num_test), ("valid", num_valid)):
        for _ in range(count * 1000):
            if len(splits[split]) == count:
                break
            scene = sample_scene(rng)
            if scene not in held_out:
                held_out.add(scene)
                splits[split].append(scene)
        else:
            raise SystemExit(f"could not find {count} distinct {split} scenes")
    while len(splits["train"]) < num_train:
        scene = sample_scene(rng)
        if scene not in held_out:
            splits["train"].append(scene)
    return splits


# ---------------------------------------------------------------------------------------------------------
# Captions


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(obj: tuple, rng: random.Random, size: bool = True) -> str:
    """``a large red circle`` / ``a red circle``."""
    _, shape, color, size_name = obj
    words = ([rng.choice(SIZE_WORDS[size_name])] if size else []) + [color, shape]
    return with_article(" ".join(words))


def place(obj: tuple, rng: random.Random) -> str:
    return rng.choice(PLACE_PHRASES[obj[0]])


def relation(first: tuple, second: tuple, rng: random.Random) -> str:
    """Where ``first`` is with respect to ``second`` along the axis that separates them most."""
    (x1, y1), (x2, y2) = POSITIONS[first[0]], POSITIONS[second[0]]
    if abs(x2 - x1) >= abs(y2 - y1):
        key = "left" if x1 < x2 else "right"
    else:
        key = "above" if y1 < y2 else "below"
    return rng.choice(RELATION_PHRASES[key])


def one_shape_captions(obj, rng):
    a = obj
    return [
        lambda: f"{describe(a, rng)} {place(a, rng)}",
        lambda: f"there is {describe(a, rng)} {place(a, rng)}",
        lambda: f"{place(a, rng)} there is {describe(a, rng, size=False)}",
        lambda: f"{describe(a, rng, size=False)} {place(a, rng)}",
        lambda: f"the image shows {describe(a, rng)} {place(a, rng)}",
        lambda: f"{describe(a, rng)} can be seen {place(a, rng)}",
        lambda: f"{describe(a, rng)} is {place(a, rng)}",
    ]


def two_shape_captions(a, b, rng):
    return [
        lambda: f"{describe(a, rng)} {place(a, rng)} and {describe(b, rng)} {place(b, rng)}",
        lambda: f"{describe(a, rng)} {relation(a, b, rng)} {describe(b, rng)}",
        lambda: f"{describe(b, rng, size=False)} {relation(b, a, rng)} {describe(a, rng, size=False)}",
        lambda: f"two shapes: {describe(a, rng)} {place(a, rng)} and {describe(b, rng)} {place(b, rng)}",
        lambda: f"{describe(b, rng)} {place(b, rng)} with {describe(a, rng, size=False)} {place(a, rng)}",
        lambda: f"there is {describe(a, rng)} {relation(a, b, rng)} {describe(b, rng, size=False)}",
        lambda: f"{place(a, rng)} {describe(a, rng)} and {place(b, rng)} {describe(b, rng)}",
    ]


def three_shape_captions(a, b, c, rng):
    return [
        lambda: f"{describe(a, rng)} {place(a, rng)}, {describe(b, rng)} {place(b, rng)} and {describe(c, rng)} {place(c, rng)}",
        lambda: f"three shapes: {describe(a, rng)}, {describe(b, rng)} and {describe(c, rng)}",
        lambda: f"there is {describe(b, rng, size=False)} {place(b, rng)}, {describe(c, rng, size=False)} {place(c, rng)} and {describe(a, rng, size=False)} {place(a, rng)}",
        lambda: f"{describe(a, rng)} {relation(a, b, rng)} {describe(b, rng)}, and {describe(c, rng)} {place(c, rng)}",
        lambda: f"{describe(b, rng)} {relation(b, c, rng)} {describe(c, rng)}, with {describe(a, rng)} {place(a, rng)}",
        lambda: f"{describe(c, rng)} {place(c, rng)}, {describe(a, rng)} {place(a, rng)}, {describe(b, rng)} {place(b, rng)}",
    ]


def make_captions(scene: tuple, rng: random.Random, count: int = 5) -> list[str]:
    """``count`` different true captions of a scene, from templates picked at random."""
    objects = list(scene)
    rng.shuffle(objects)  # which shape a caption names first varies
    templates = [one_shape_captions, two_shape_captions, three_shape_captions][len(objects) - 1](*objects, rng)
    rng.shuffle(templates)
    captions: list[str] = []
    for template in templates * 3:  # each template has several wordings; retry on a repeat
        caption = template()
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            return captions
    raise RuntimeError(f"could not word {count} different captions for {scene}")


# ---------------------------------------------------------------------------------------------------------
# Rendering


def image_plan(scene: tuple, rng: random.Random) -> dict:
    """Everything random about one rendering (jitter, background), drawn here so that the images do not
    depend on how the work is spread over processes."""
    shapes = []
    for place_name, shape, color, size in scene:
        x, y = POSITIONS[place_name]
        shapes.append({"shape": shape, "color": color, "radius": RADIUS[size],
                       "x": x + rng.uniform(-JITTER, JITTER), "y": y + rng.uniform(-JITTER, JITTER)})
    gray = rng.uniform(70, 230)
    return {"shapes": shapes, "background": [gray + rng.uniform(-12, 12) for _ in range(3)],
            "texture": rng.choice(TEXTURES), "texture_seed": rng.getrandbits(32), "angle": rng.uniform(0, math.pi)}


def polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def around(radii, start):
        step = 2 * math.pi / len(radii)
        return [(cx + rr * math.cos(start + i * step), cy + rr * math.sin(start + i * step)) for i, rr in enumerate(radii)]

    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return around([1.05 * r] * 3, -math.pi / 2)
    if shape == "star":
        return around([1.1 * r, 0.45 * r] * 5, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    raise ValueError(f"unknown shape {shape!r}")


def background(plan: dict, size: int) -> np.ndarray:
    """``(size, size, 3)`` float background: a gray, lightly textured."""
    base = np.broadcast_to(np.array(plan["background"], dtype=np.float32), (size, size, 3)).copy()
    generator = np.random.default_rng(plan["texture_seed"])
    ys, xs = np.mgrid[0:size, 0:size] / size
    along = xs * math.cos(plan["angle"]) + ys * math.sin(plan["angle"])
    if plan["texture"] == "noise":
        base += generator.normal(0, 6, (size, size, 1))
    elif plan["texture"] == "stripes":
        base += (6 * np.sin(2 * math.pi * along * generator.uniform(6, 14)))[..., None]
    elif plan["texture"] == "gradient":
        base += (generator.uniform(-20, 20) * (along - along.mean()))[..., None]
    return base


def render(plan: dict, size: int) -> Image.Image:
    canvas = Image.fromarray(np.clip(background(plan, size), 0, 255).astype(np.uint8), "RGB")
    big = size * SUPERSAMPLE
    for item in plan["shapes"]:
        # Coverage mask drawn large then box-averaged down: anti-aliased edges, no dark fringe.
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy, r = item["x"] * big, item["y"] * big, item["radius"] * big
        if item["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            draw.polygon(polygon(item["shape"], cx, cy, r), fill=255)
        canvas.paste(COLORS[item["color"]], None, mask.reduce(SUPERSAMPLE))
    return canvas


def _render_and_save(job: tuple[dict, int, str]) -> None:
    plan, size, path = job
    render(plan, size).save(path, compress_level=1)


# ---------------------------------------------------------------------------------------------------------
# Corpus


def build_corpus(out: Path, settings: dict, jobs: int) -> dict[str, list[dict]]:
    """Write the images, manifests, text.txt and settings.json; returns the manifest rows of each split."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    (out / "settings.json").unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    splits = make_splits(settings["num_train"], settings["num_valid"], settings["num_test"], settings["seed"])
    rows: dict[str, list[dict]] = {}
    work = []
    for split in ("train", "valid", "test"):
        rows[split] = []
        for index, scene in enumerate(splits[split]):
            example_id = f"{split}_{index:05d}"
            rng = random.Random(f"{settings['seed']}/{example_id}")
            rows[split].append({"id": example_id, "image": f"img/{example_id}.png", "captions": make_captions(scene, rng)})
            work.append((image_plan(scene, rng), settings["image_size"], str(out / "img" / f"{example_id}.png")))
    progress = tqdm(total=len(work), desc="drawing", unit="img")
    if jobs <= 1:
        for job in work:
            _render_and_save(job)
            progress.update()
    else:
        with multiprocessing.Pool(jobs) as pool:
            for _ in pool.imap_unordered(_render_and_save, work, chunksize=64):
                progress.update()
    progress.close()
    for split, split_rows in rows.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in split_rows)
    with open(out / "text.txt", "w", encoding="utf-8") as file:
        file.writelines(caption + "\n" for row in rows["train"] for caption in row["captions"])
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return rows


def is_done(out: Path, settings: dict) -> bool:
    try:
        if json.loads((out / "settings.json").read_text()) != settings:
            return False
        for split in ("train", "valid", "test"):
            with open(out / f"{split}.jsonl", encoding="utf-8") as file:
                if not all((out / json.loads(line)["image"]).is_file() for line in file):
                    return False
        return True
    except (OSError, ValueError, KeyError):
        return False


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synth_caption", help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=4000, help="train images (default: %(default)s)")
    parser.add_argument("--num-valid", type=int, default=200, help="valid images (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=200, help="test images (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel drawing processes (default: %(default)s)")
    arguments = parser.parse_args(argv)
    if min(arguments.num_train, arguments.num_valid, arguments.num_test) < 0:
        parser.error("image counts must not be negative")
    if arguments.image_size < 32:
        parser.error("--image-size must be at least 32")
    return arguments


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    out = Path(arguments.out)
    settings = {"version": CORPUS_VERSION, "num_train": arguments.num_train, "num_valid": arguments.num_valid,
                "num_test": arguments.num_test, "image_size": arguments.image_size, "seed": arguments.seed}
    if is_done(out, settings):
        print(f"{out} already holds this corpus (settings.json matches); nothing to do")
        return
    start = time.time()
    rows = build_corpus(out, settings, arguments.jobs)
    counts = ", ".join(f"{split} {len(split_rows)}" for split, split_rows in rows.items())
    print(f"wrote {counts} images with 5 captions each to {out} in {time.time() - start:.1f} s")
    print(f"example: {rows['train'][0]['image'] if rows['train'] else ''} {rows['train'][0]['captions'] if rows['train'] else ''}")


if __name__ == "__main__":
    sys.exit(main())
