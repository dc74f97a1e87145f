"""Plots: learning curves, and the decoder's cross-attention drawn on images and as speech alignments."""

import mmseq
import numpy as np
import pytest
import soundfile
import torch
from caption_helpers import IMAGE_SIZE, make_caption_model, word_tokenizer, write_caption_corpus
from conftest import SAMPLE_RATE, tone
from PIL import Image

from mmseq.inference.timestamps import word_groups
from mmseq.plots import attention_of, plot_attention, plot_curves
from mmseq.tokenizer import CharTokenizer


@pytest.fixture
def caption_model(tmp_path):
    return make_caption_model(word_tokenizer(tmp_path), decoding={"max_length": 6})


@pytest.fixture
def image_file(tmp_path):
    write_caption_corpus(tmp_path / "corpus", colors=("red",))
    return tmp_path / "corpus" / "img" / "red.png"


def is_png(path, min_width: int) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.width >= min_width


def test_word_groups_with_characters_and_pieces(tmp_path):
    chars = CharTokenizer(list("a redsqu"))
    assert word_groups(chars, chars.encode("a red square")) == [("a", [0]), ("red", [2, 3, 4]), ("square", [6, 7, 8, 9, 10, 11])]
    pieces = word_tokenizer(tmp_path)
    ids = pieces.encode("a yellow box")
    assert [word for word, _ in word_groups(pieces, ids)] == ["a", "yellow", "box"]
    assert sorted(p for _, positions in word_groups(pieces, ids) for p in positions) == list(range(len(ids)))


def test_image_attention_covers_the_grid_for_every_token(caption_model, image_file):
    found = attention_of(caption_model, image_file)
    rows, cols = found["grid"]
    assert (rows, cols) == (2, 2)  # test_vit: 16-pixel patches of a 32-pixel image
    assert found["attention"].shape == (len(found["tokens"]) + 1, rows * cols)
    np.testing.assert_allclose(found["attention"].sum(1), 1.0, rtol=1e-5)
    assert found["text"] == caption_model.caption([image_file])[0]


def test_image_attention_plot_is_written(caption_model, image_file, tmp_path):
    out = tmp_path / "plots" / "attention.png"
    text = plot_attention(caption_model, image_file, out)
    assert text == caption_model.caption([image_file])[0]
    assert is_png(out, 200)


def test_speech_alignment_plot_is_written(tiny_model, tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone(0.6), SAMPLE_RATE)
    tiny_model.decoding.max_length = 12
    found = attention_of(tiny_model, str(wav))
    assert found["grid"] is None and found["attention"].shape[0] == len(found["tokens"]) + 1
    out = tmp_path / "alignment.png"
    plot_attention(tiny_model, str(wav), out, beam_size=2)
    assert is_png(out, 200)


def test_cli_caption_draws_attention(caption_model, image_file, tmp_path, capsys):
    from mmseq.cli import main

    mmseq.save(caption_model, tmp_path / "checkpoint")
    out = tmp_path / "attention.png"
    assert main(["caption", str(tmp_path / "checkpoint"), str(image_file), "--attention", str(out), "--device", "cpu"]) == 0
    assert is_png(out, 200)
    assert capsys.readouterr().out.strip() == caption_model.caption([image_file])[0].strip()


def test_learning_curves(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("time,split,epoch,step,loss,attention_loss,ctc_loss,accuracy,lr,metric\n"
                   "0,train,1,10,3.0,,,0.2,0.001,\n0,train,1,20,2.0,,,0.4,0.001,\n0,valid,1,20,2.5,,,0.3,,0.7\n")
    plot_curves(log, tmp_path / "curves.png", "CIDEr")
    assert is_png(tmp_path / "curves.png", 400)
