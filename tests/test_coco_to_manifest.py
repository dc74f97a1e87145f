"""tools/coco_to_manifest.py on small fake COCO and Karpathy files."""

import importlib.util
import json
from pathlib import Path

import pytest

from mmseq.data.manifest import read_manifest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "coco_to_manifest.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("coco_to_manifest", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def karpathy_image(cocoid, folder, split, sentences):
    return {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": cocoid, "split": split,
            "cocoid": cocoid, "sentids": list(range(len(sentences))),
            "sentences": [{"tokens": s.lower().split(), "raw": s, "imgid": cocoid, "sentid": i}
                          for i, s in enumerate(sentences)]}


@pytest.fixture
def files(tmp_path):
    karpathy = {"dataset": "coco", "images": [
        karpathy_image(9, "train2014", "train", ["A cat.", "A small cat."]),
        karpathy_image(25, "val2014", "restval", ["Two dogs."]),
        karpathy_image(30, "val2014", "val", ["A bus on a road."]),
        karpathy_image(42, "val2014", "test", ["A red kite."]),
    ]}
    coco_train = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}], "annotations": [
        {"image_id": 9, "id": 7, "caption": "A cat sitting\n on a mat. "},
        {"image_id": 9, "id": 3, "caption": "A  cat on a mat."},
    ]}
    coco_val = {"images": [], "annotations": [
        {"image_id": 25, "id": 1, "caption": "Two dogs play."},
        {"image_id": 30, "id": 2, "caption": "A bus."},
        {"image_id": 42, "id": 4, "caption": "A kite flies."},
        {"image_id": 42, "id": 5, "caption": "A red kite in the sky."},
    ]}
    paths = {}
    for name, data in (("dataset_coco.json", karpathy), ("captions_train2014.json", coco_train),
                       ("captions_val2014.json", coco_val)):
        paths[name] = tmp_path / name
        paths[name].write_text(json.dumps(data))
    return paths


def rows(out, split):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_captions_from_coco_files_with_karpathy_splits(tool, files, tmp_path):
    out = tmp_path / "coco"
    images = out / "images"
    (images / "val2014").mkdir(parents=True)
    (images / "val2014" / "COCO_val2014_000000000030.jpg").write_bytes(b"jpeg")
    code = tool.main(["--karpathy", str(files["dataset_coco.json"]), "--captions", str(files["captions_train2014.json"]),
                      str(files["captions_val2014.json"]), "--images", str(images), "--out", str(out)])
    assert code == 0
    train = rows(out, "train")
    assert [row["id"] for row in train] == ["9", "25"]  # restval joins train
    assert train[0] == {"id": "9", "image": "images/train2014/COCO_train2014_000000000009.jpg",
                        "captions": ["A cat on a mat.", "A cat sitting on a mat."]}  # annotation id order, spaces cleaned
    assert rows(out, "val") == [{"id": "30", "image": "images/val2014/COCO_val2014_000000000030.jpg",
                                 "captions": ["A bus."]}]
    assert rows(out, "test")[0]["captions"] == ["A kite flies.", "A red kite in the sky."]
    examples, _ = read_manifest(out / "val.jsonl", required=("image", "captions"))
    assert Path(examples[0]["image"]).read_bytes() == b"jpeg"  # the path resolves from the manifest's folder


def test_karpathy_sentences_when_no_coco_files(tool, files, tmp_path):
    assert tool.main(["--karpathy", str(files["dataset_coco.json"]), "--out", str(tmp_path / "out")]) == 0
    train = rows(tmp_path / "out", "train")
    assert train[0]["image"] == "train2014/COCO_train2014_000000000009.jpg"  # images root defaults to --out
    assert train[0]["captions"] == ["A cat.", "A small cat."]


def test_missing_captions_name_the_image(tool, files, tmp_path, capsys):
    code = tool.main(["--karpathy", str(files["dataset_coco.json"]), "--captions", str(files["captions_train2014.json"]),
                      "--out", str(tmp_path / "out")])
    assert code == 1
    assert "image 25" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"dataset": "coco"}', "lacks 'images'"),
    ('{"images": [{"filename": "a.jpg", "split": "train"}]}', "no 'cocoid' and no number"),
    ('{"images": [{"filename": "a1.jpg", "split": "extra"}]}', "images\\[0\\].split"),
    ('{"images": [{"filename": 5, "split": "train"}]}', "images\\[0\\].filename has the wrong type"),
    ('{"images": [{"filename": "a1.jpg", "split": "train", "sentences": [{"tokens": []}]}]}',
     "images\\[0\\].sentences\\[0\\] lacks 'raw'"),
])
def test_malformed_karpathy_file_is_named(tool, tmp_path, content, message):
    path = tmp_path / "broken_karpathy.json"
    path.write_text(content)
    with pytest.raises(tool.InputError, match=f"broken_karpathy.json: .*{message}"):
        tool.read_karpathy(path)


def test_malformed_coco_file_is_named(tool, tmp_path, capsys):
    path = tmp_path / "broken_captions.json"
    path.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "x"}, {"image_id": "2", "caption": "y"}]}))
    with pytest.raises(tool.InputError, match=r"broken_captions.json: annotations\[1\].image_id"):
        tool.read_coco_captions([path])
    assert tool.main(["--karpathy", str(tmp_path / "absent.json")]) == 1
    assert "absent.json: file not found" in capsys.readouterr().err
