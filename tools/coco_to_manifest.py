"""COCO captions with Karpathy's splits to mmseq caption manifests.

Reads Karpathy's ``dataset_coco.json`` (which image is in which split, and where it lies) and, when
given, COCO's ``captions_train2014.json`` / ``captions_val2014.json`` (the captions; without them the
``raw`` sentences of ``dataset_coco.json`` are used). Writes under --out:

    train.jsonl   Karpathy "train" + "restval" (113,287 images)
    val.jsonl     Karpathy "val" (5,000)
    test.jsonl    Karpathy "test" (5,000)

one line an image: ``{"id": "391895", "image": "images/val2014/COCO_val2014_000000391895.jpg",
"captions": [...]}``, the image path relative to --out (manifest paths are relative to their folder),
made from --images (default: --out itself) and the ``filepath``/``filename`` fields.

    python tools/coco_to_manifest.py --karpathy data/coco/dataset_coco.json \\
        --captions data/coco/annotations/captions_train2014.json data/coco/annotations/captions_val2014.json \\
        --images data/coco/images --out data/coco
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from tqdm import tqdm

from mmseq.errors import InputError

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def _field(record, key, kind, path, where):
    if not isinstance(record, dict):
        raise InputError(f"{path}: {where} is not an object")
    if key not in record:
        raise InputError(f"{path}: {where} lacks {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{path}: {where}.{key} has the wrong type ({type(value).__name__})")
    return value


def clean_caption(text: str) -> str:
    """COCO captions hold stray newlines and double spaces; keep the words, case and punctuation."""
    return re.sub(r"\s+", " ", text).strip()


def read_karpathy(path) -> list[dict]:
    """``dataset_coco.json`` -> ``[{"id", "relative_path", "split", "sentences"}]`` in file order."""
    data = load_json(path)
    images = _field(data, "images", list, path, "the top object")
    records = []
    for index, image in enumerate(images):
        where = f"images[{index}]"
        filename = _field(image, "filename", str, path, where)
        filepath = image.get("filepath", "")  # absent in the Flickr files, present for COCO
        split = _field(image, "split", str, path, where)
        if split not in SPLIT_OF:
            raise InputError(f"{path}: {where}.split is {split!r}; expected one of {sorted(SPLIT_OF)}")
        if "cocoid" in image:
            image_id = _field(image, "cocoid", int, path, where)
        else:
            digits = re.findall(r"\d+", filename)
            if not digits:
                raise InputError(f"{path}: {where} has no 'cocoid' and no number in its filename {filename!r}")
            image_id = int(digits[-1])
        sentences = [
            clean_caption(_field(sentence, "raw", str, path, f"{where}.sentences[{number}]"))
            for number, sentence in enumerate(image.get("sentences", []))
        ]
        records.append({"id": image_id, "relative_path": os.path.join(filepath, filename), "split": split,
                        "sentences": [s for s in sentences if s]})
    if not records:
        raise InputError(f"{path}: holds no images")
    return records


def read_coco_captions(paths) -> dict[int, list[str]]:
    """COCO ``captions_*.json`` files -> image id -> captions, in annotation id order."""
    found: dict[int, list[tuple[int, str]]] = {}
    for path in paths:
        data = load_json(path)
        annotations = _field(data, "annotations", list, path, "the top object")
        for index, annotation in enumerate(annotations):
            where = f"annotations[{index}]"
            image_id = _field(annotation, "image_id", int, path, where)
            caption = clean_caption(_field(annotation, "caption", str, path, where))
            if caption:
                found.setdefault(image_id, []).append((annotation.get("id", index), caption))
    return {image_id: [caption for _, caption in sorted(pairs)] for image_id, pairs in found.items()}


def build_manifests(karpathy: list[dict], captions: dict[int, list[str]] | None, images_root, out) -> dict[str, list[dict]]:
    """The rows of each output split. ``captions=None`` takes the Karpathy sentences."""
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for record in karpathy:
        texts = record["sentences"] if captions is None else captions.get(record["id"], [])
        if not texts:
            source = "dataset_coco.json" if captions is None else "the COCO caption files given"
            raise InputError(f"image {record['id']} ({record['relative_path']}) has no captions in {source}")
        image_path = os.path.relpath(Path(images_root) / record["relative_path"], start=out)
        rows[SPLIT_OF[record["split"]]].append(
            {"id": str(record["id"]), "image": Path(image_path).as_posix(), "captions": texts})
    return rows


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--karpathy", required=True, help="Karpathy's dataset_coco.json")
    parser.add_argument("--captions", nargs="*", default=[],
                        help="COCO captions_train2014.json and captions_val2014.json (default: use dataset_coco.json)")
    parser.add_argument("--images", default=None, help="folder holding train2014/ and val2014/ (default: --out)")
    parser.add_argument("--out", default="data/coco", help="output folder (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    out = Path(arguments.out)
    images_root = Path(arguments.images) if arguments.images else out
    try:
        karpathy = read_karpathy(arguments.karpathy)
        captions = read_coco_captions(arguments.captions) if arguments.captions else None
        rows = build_manifests(karpathy, captions, images_root, out)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for split, split_rows in rows.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as file:
            for row in tqdm(split_rows, desc=split, unit="img", disable=len(split_rows) < 1000):
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                if not (out / row["image"]).is_file():
                    missing.append(row["image"])
    print(", ".join(f"{split} {len(r)} images" for split, r in rows.items()) + f" written to {out}")
    if missing:
        total = sum(len(r) for r in rows.values())
        print(f"warning: {len(missing)} of {total} images not found under {images_root} (first: {out / missing[0]})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
