"""Manifests: good lines, every kind of broken line named by ``file:line``, skipping, paths."""

import json
import os

import pytest

from mmseq.data.manifest import read_manifest
from mmseq.errors import ManifestError

REQUIRED = ("audio", "text")


def write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_good_lines(tmp_path):
    manifest = write(tmp_path / "m.jsonl", [
        {"id": "a", "audio": "wav/a.wav", "text": "hello", "duration": 1.5},
        "",  # blank lines are allowed
        {"audio": "/abs/b.wav", "text": "world", "duration": 2},
    ])
    examples, errors = read_manifest(manifest, REQUIRED)
    assert errors == []
    assert [e["text"] for e in examples] == ["hello", "world"]
    assert examples[0]["id"] == "a" and examples[0]["duration"] == 1.5
    assert examples[1]["id"] == "m-3"  # a missing id is made from the file name and line
    assert examples[0]["_where"] == f"{manifest}:1" and examples[1]["_where"] == f"{manifest}:3"


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "set"
    folder.mkdir(parents=True)
    manifest = write(folder / "m.jsonl", [{"audio": "wav/a.wav", "text": "x"}, {"audio": "/abs/b.wav", "text": "y"}])
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    examples, _ = read_manifest(os.path.relpath(manifest, tmp_path), REQUIRED)
    # Absolute, so a later change of working folder cannot break them.
    assert examples[0]["audio"] == str(folder / "wav" / "a.wav")
    assert examples[1]["audio"] == "/abs/b.wav"


BROKEN = [
    ("{not json", "not valid JSON"),
    (json.dumps({"text": "hello"}), "missing field 'audio'"),
    (json.dumps({"audio": "a.wav"}), "missing field 'text'"),
    (json.dumps({"audio": "a.wav", "text": 5}), "wrong type"),
    (json.dumps({"audio": "a.wav", "text": "x", "duration": "long"}), "wrong type"),
    (json.dumps({"audio": "a.wav", "text": "x", "duration": True}), "wrong type"),
    (json.dumps({"audio": 3, "text": "x"}), "non-empty path"),
    (json.dumps({"audio": "", "text": "x"}), "non-empty path"),
    (json.dumps({"audio": "a.wav", "text": "   "}), "empty text"),
    (json.dumps(["a.wav", "text"]), "expected a JSON object"),
    (json.dumps("a string"), "expected a JSON object"),
    (json.dumps({"image": "a.jpg", "captions": []}), "captions"),
    (json.dumps({"image": "a.jpg", "captions": ["ok", ""]}), "captions"),
    (json.dumps({"audio": "a.wav", "text": "x", "context": ["ok", 5]}), "'context' must be a string or a list"),
]


@pytest.mark.parametrize("line, reason", BROKEN, ids=[r + str(i) for i, (_, r) in enumerate(BROKEN)])
def test_broken_line_names_file_and_line(tmp_path, line, reason):
    good = json.dumps({"audio": "a.wav", "image": "a.jpg", "text": "fine", "captions": ["fine"]})
    manifest = write(tmp_path / "m.jsonl", [good, good, line])
    required = ("image",) if "captions" in line else REQUIRED
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest, required)
    assert f"{manifest}:3" in str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.line == 3 and caught.value.path == str(manifest)


def test_skip_errors_collects_every_bad_line(tmp_path):
    lines = [json.dumps({"audio": "a.wav", "text": "fine"})] + [line for line, _ in BROKEN[:6]]
    manifest = write(tmp_path / "m.jsonl", lines)
    examples, errors = read_manifest(manifest, REQUIRED, skip_errors=True)
    assert len(examples) == 1
    assert [e.line for e in errors] == list(range(2, 8))
    assert all(isinstance(e, ManifestError) and f"{manifest}:" in str(e) for e in errors)


def test_missing_manifest_and_folder(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found") as caught:
        read_manifest(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(caught.value)
    with pytest.raises(ManifestError, match="not a file"):
        read_manifest(tmp_path)


def test_invalid_utf8_is_a_manifest_error_not_a_crash(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"audio": "a.wav", "text": "caf\xe9"}\n')
    examples, errors = read_manifest(manifest, REQUIRED, skip_errors=True)
    # Undecodable bytes are replaced, so the line still reads; it must not raise UnicodeDecodeError.
    assert len(examples) + len(errors) == 1
