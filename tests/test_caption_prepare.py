"""recipes/synth_caption/prepare.py: disjoint splits, five true and different captions, readable images."""

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmseq.data.images import load_image

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synth_caption" / "prepare.py"


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("synth_caption_prepare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(out, *extra):
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--num-train", "40", "--num-valid", "10",
               "--num-test", "10", *extra]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def read(out, split):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_caption")
    run(out, "--jobs", "2")
    return out


def test_manifests_images_and_captions(corpus):
    ids = set()
    for split, count in (("train", 40), ("valid", 10), ("test", 10)):
        rows = read(corpus, split)
        assert len(rows) == count
        for row in rows:
            assert set(row) == {"id", "image", "captions"} and row["image"] == f"img/{row['id']}.png"
            assert len(row["captions"]) == 5 and len(set(row["captions"])) == 5
            assert all(caption.strip() == caption and caption for caption in row["captions"])
            image = load_image(corpus / row["image"])
            assert image.size == (96, 96) and image.mode == "RGB"
            ids.add(row["id"])
    assert len(ids) == 60
    assert len((corpus / "text.txt").read_text().splitlines()) == 40 * 5


def test_rerun_reuses_and_output_is_deterministic(corpus, tmp_path):
    assert "nothing to do" in run(corpus, "--jobs", "2")
    run(tmp_path / "again", "--jobs", "1")
    for split in ("train", "valid", "test"):
        assert read(tmp_path / "again", split) == read(corpus, split)
    for name in ("train_00000.png", "test_00009.png"):
        assert (tmp_path / "again" / "img" / name).read_bytes() == (corpus / "img" / name).read_bytes()
    run(tmp_path / "other", "--seed", "1", "--image-size", "128")
    assert read(tmp_path / "other", "train") != read(corpus, "train")
    assert load_image(tmp_path / "other" / "img" / "valid_00000.png").size == (128, 128)


def test_bad_arguments_are_refused(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--image-size", "8"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "image-size" in result.stderr


def test_splits_share_no_scene(prepare):
    splits = prepare.make_splits(3000, 300, 300, seed=3)
    test, valid = set(splits["test"]), set(splits["valid"])
    assert len(test) == 300 and len(valid) == 300 and not test & valid
    assert not set(splits["train"]) & (test | valid)
    counts = {len(scene) for scene in splits["train"]}
    assert counts == {1, 2, 3}
    assert splits == prepare.make_splits(3000, 300, 300, seed=3)


def relations_in(caption, prepare):
    """(colour shape, relation key, colour shape) triples a caption states."""
    phrase_to_key = {phrase: key for key, phrases in prepare.RELATION_PHRASES.items() for phrase in phrases}
    name = f"((?:{'|'.join(prepare.COLORS)}) (?:{'|'.join(prepare.SHAPES)}))"
    object_pattern = rf"(?:an? )?(?:(?:small|little|large|big) )?{name}"
    relation_pattern = "|".join(sorted(map(re.escape, phrase_to_key), key=len, reverse=True))
    found = []
    for match in re.finditer(rf"{object_pattern} ({relation_pattern}) {object_pattern}", caption):
        found.append((match.group(1), phrase_to_key[match.group(2)], match.group(3)))
    return found


def test_captions_are_true(prepare):
    rng = random.Random(0)
    size_words = {word: size for size, words in prepare.SIZE_WORDS.items() for word in words}
    for _ in range(300):
        scene = prepare.sample_scene(rng)
        objects = {f"{color} {shape}": (place, size) for place, shape, color, size in scene}
        for caption in prepare.make_captions(scene, rng):
            for name in objects:  # every shape is named, with its colour
                assert name in caption, (caption, scene)
            for size_word, name in re.findall(r"(small|little|large|big) (\w+ \w+)", caption):
                assert objects[name][1] == size_words[size_word], (caption, scene)
            for first, key, second in relations_in(caption, prepare):
                (x1, y1), (x2, y2) = prepare.POSITIONS[objects[first][0]], prepare.POSITIONS[objects[second][0]]
                truth = {"left": x1 < x2, "right": x1 > x2, "above": y1 < y2, "below": y1 > y2}
                assert truth[key], (caption, scene)
            for name, (place, _) in objects.items():  # a place phrase right after a shape is its own
                for phrase in re.findall(rf"{name} ((?:on|at|in|to|near) the [\w ]+?)(?:,| and| with|$)", caption):
                    if not phrase.startswith(("to the left of ", "to the right of ")):  # relations, checked above
                        assert any(phrase.startswith(p) for p in prepare.PLACE_PHRASES[place]), (caption, scene)


def test_rendered_shape_is_where_and_what_the_scene_says(prepare):
    scene = (("left", "circle", "red", "large"),)
    plan = prepare.image_plan(scene, random.Random(1))
    plan["texture"] = "plain"
    pixels = np.asarray(prepare.render(plan, 96)).astype(int)
    assert np.abs(pixels[48, 19] - prepare.COLORS["red"]).max() <= 2  # the circle's centre
    background = np.array(plan["background"])
    for y, x in ((48, 77), (19, 48), (77, 48), (48, 48)):  # right, top, bottom, centre: empty
        assert np.abs(pixels[y, x] - background).max() <= 2
