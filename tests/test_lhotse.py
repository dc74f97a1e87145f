"""Lhotse CutSets as manifests: cuts made with Lhotse itself in the test, read by mmseq (the span
of the recording each cut names, its channel, its supervisions' text), trained on and evaluated."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import soundfile
import torch

from conftest import TINY_DECODER, TINY_ENCODER, sentences, tone
from mmseq.data.audio import AudioSpan, load_audio
from mmseq.data.manifest import read_manifest
from mmseq.errors import ManifestError

lhotse = pytest.importorskip("lhotse")


def make_cutset(folder, count: int = 8, seed: int = 0):
    """Long recordings that each hold several utterances (a tone per text, with silence between),
    one cut per utterance, written as ``cuts.jsonl.gz``; the last recording is stereo at 22.05 kHz
    with the speech on channel 1 only. Returns the manifest path and the cuts."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    folder.mkdir(parents=True, exist_ok=True)
    texts, cuts = sentences(count, seed), []
    per_recording = 4
    for first in range(0, count, per_recording):
        stereo = first + per_recording >= count
        rate = 22050 if stereo else 16000
        pieces, spans, position = [], [], 0.25
        pieces.append(np.zeros(int(0.25 * rate), np.float32))
        for index in range(first, min(first + per_recording, count)):
            seconds = 0.3 + 0.05 * (index % 5)
            pieces += [tone(seconds, 200 + 40 * len(texts[index]), seed + index, rate), np.zeros(int(0.2 * rate), np.float32)]
            spans.append((index, position, seconds))
            position += seconds + 0.2
        audio = np.concatenate(pieces)
        path = folder / f"rec{first}.flac"
        if stereo:
            audio = np.stack([0.01 * np.ones_like(audio), audio], axis=1)
        soundfile.write(path, audio, rate)
        recording = Recording.from_file(path)
        channel = 1 if stereo else 0
        for index, start, seconds in spans:
            supervision = SupervisionSegment(id=f"sup{index}", recording_id=recording.id, start=0.0,
                                             duration=seconds, channel=channel, text=texts[index])
            cuts.append(MonoCut(id=f"cut{index}", start=start, duration=seconds, channel=channel,
                                recording=recording, supervisions=[supervision]))
    cutset = CutSet.from_cuts(cuts)
    manifest = folder / "cuts.jsonl.gz"
    cutset.to_file(manifest)
    return manifest, cuts


def test_each_cut_becomes_an_example_with_lhotses_own_audio(tmp_path):
    manifest, cuts = make_cutset(tmp_path / "corpus")
    examples, errors = read_manifest(manifest, ("audio", "text"))
    assert not errors and [e["id"] for e in examples] == [c.id for c in cuts]
    for example, cut in zip(examples, cuts):
        assert example["text"] == cut.supervisions[0].text
        assert example["duration"] == pytest.approx(cut.duration)
        # The samples Lhotse itself loads for the cut: the span of the file, of the cut's channel.
        expected = cut.load_audio()[0]
        found = load_audio(example["audio"]).numpy()
        assert found.shape == expected.shape
        np.testing.assert_allclose(found, expected, atol=1e-4)
    assert examples[-1]["audio"].channels == [1]  # the stereo file: channel 1 only, not the average
    # Resampled to the encoder's rate like any file; pickled whole for DataLoader workers.
    assert load_audio(examples[-1]["audio"], 16000).shape[0] == pytest.approx(round(cuts[-1].duration * 16000), abs=2)
    span = pickle.loads(pickle.dumps(examples[0]["audio"]))
    assert isinstance(span, AudioSpan) and (span.offset, span.duration) == (cuts[0].start, cuts[0].duration)


def test_cuts_mmseq_cannot_read_are_refused_by_file_and_line(tmp_path):
    manifest, _ = make_cutset(tmp_path / "corpus", count=4)
    lines = gzip.open(manifest, "rt").read().splitlines()
    first = json.loads(lines[0])
    url = json.loads(lines[1])
    url["recording"]["sources"][0].update(type="url", source="https://example.com/a.flac")
    command = json.loads(lines[2])
    command["recording"]["sources"][0].update(type="command", source="rm -rf /tmp/x")
    silent = json.loads(lines[3])
    silent["supervisions"] = []
    mixed = {"id": "mix", "type": "MixedCut", "tracks": []}
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as file:
        file.write("\n".join(json.dumps(line) for line in (first, url, command, silent, mixed)) + "\n")
    with pytest.raises(ManifestError, match=r"bad\.jsonl\.gz:2: .*source type 'url' is not supported"):
        read_manifest(bad, ("audio", "text"))
    examples, errors = read_manifest(bad, ("audio", "text"), skip_errors=True)
    assert [e["id"] for e in examples] == [first["id"]]
    reasons = [str(e) for e in errors]
    assert [r.split(": ")[0].rsplit(":", 1)[1] for r in reasons] == ["2", "3", "4", "5"]
    assert "'command'" in reasons[1] and "no supervision with text" in reasons[2] and "MixedCut" in reasons[3]

    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(manifest.read_bytes()[:-20])  # a copy cut short: the lines before it are kept
    examples, errors = read_manifest(truncated, ("audio", "text"), skip_errors=True)
    assert len(errors) == 1 and "cannot read the compressed manifest" in str(errors[0])


def test_a_model_trains_on_a_cutset_and_mmseq_eval_scores_one(tmp_path, capsys):
    import yaml

    from mmseq.cli import main
    from mmseq.config import load_config
    from mmseq.training.trainer import Trainer

    train, train_cuts = make_cutset(tmp_path / "train", count=12)
    valid, valid_cuts = make_cutset(tmp_path / "valid", count=4, seed=7)
    config = {"task": "asr", "output_dir": str(tmp_path / "exp"),
              "data": {"train": str(train), "valid": str(valid), "batch_size": 100.0, "max_batch_examples": 4,
                       "num_workers": 1},  # a worker process: the cuts' spans travel pickled
              "model": {"encoder": dict(TINY_ENCODER), "decoder": dict(TINY_DECODER), "ctc_weight": 0.3},
              "trainer": {"max_steps": 6, "max_epochs": 2, "lr": 0.003, "warmup_steps": 2, "log_every": 1,
                          "tensorboard": False}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(load_config(path))
    best = trainer.train()
    # Every training input is the cut's span of its recording (at 16 kHz), not the whole file.
    lengths = sorted(trainer.loader.dataset[i]["input"].shape[0] for i in range(len(train_cuts)))
    assert lengths == pytest.approx(sorted(round(c.duration * 16000) for c in train_cuts), abs=2)
    assert trainer.state["step"] == 6

    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", str(best), str(valid), "--out", str(out), "--beam-size", "2", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == len(valid_cuts) and metrics["skipped"] == 0
    assert metrics["words"] == sum(len(c.supervisions[0].text.split()) for c in valid_cuts)
    rows = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in valid_cuts)
    assert {r["references"][0] for r in rows} == {c.supervisions[0].text for c in valid_cuts}
    assert "wer" in capsys.readouterr().out
    assert torch.isfinite(torch.tensor(metrics["wer"]))


def test_relative_audio_paths_are_read_from_the_manifests_folder_first(tmp_path, monkeypatch):
    manifest, cuts = make_cutset(tmp_path / "corpus", count=4)
    line = json.loads(gzip.open(manifest, "rt").readline())
    line["recording"]["sources"][0]["source"] = "rec0.flac"  # beside the manifest
    relative = tmp_path / "corpus" / "relative.jsonl"
    relative.write_text(json.dumps(line) + "\n")
    monkeypatch.chdir(tmp_path)  # not where the file is: Lhotse's own rule would not find it
    example = read_manifest(relative, ("audio", "text"))[0][0]
    assert str(example["audio"]) == str(tmp_path / "corpus" / "rec0.flac")
    np.testing.assert_allclose(load_audio(example["audio"]).numpy(), cuts[0].load_audio()[0], atol=1e-4)
