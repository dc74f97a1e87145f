"""On a CUDA GPU (``pytest -m cuda``, run by ``tools/gpu_check.sh``; skipped without one): mixed
precision trains like fp32, ``torch.compile`` trains like eager, CUDA decoding equals CPU
decoding, and a resumed GPU run matches an uninterrupted one.

Tolerances: bf16 autocast and the fp16 scaler keep every one of the first steps' training losses
within 5 % of fp32's (bf16 has an 8-bit mantissa: about 0.4 % per rounding, and the losses of a
few steps agree to a percent or two); ``torch.compile`` in fp32 within 0.1 %; decoding gives the
same tokens and scores within 1e-3; resume within 1e-4 of the straight run's weights (CUDA's CTC
loss backward adds in a varying order, so the two are not bit for bit the same).
"""

import csv
import json
import shutil

import pytest
import torch

from conftest import make_model, waveform_batch, write_speech_corpus, write_train_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def train_losses(folder, manifest, **trainer) -> list[float]:
    from mmseq.config import load_config
    from mmseq.training.trainer import train

    config = write_train_config(folder, manifest, device="cuda", **trainer)
    train(load_config(config))
    with open(folder / "out" / "log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["split"] == "train"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_speech_corpus(tmp_path_factory.mktemp("cuda") / "corpus")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(corpus, tmp_path, precision):
    reference = train_losses(tmp_path / "fp32", corpus, precision="fp32", max_steps=5, max_epochs=1)
    mixed = train_losses(tmp_path / precision, corpus, precision=precision, max_steps=5, max_epochs=1)
    assert len(mixed) == len(reference) >= 5
    assert mixed == pytest.approx(reference, rel=0.05), (precision, mixed, reference)


def test_compiled_model_trains_like_eager(corpus, tmp_path):
    eager = train_losses(tmp_path / "eager", corpus, precision="fp32", max_steps=3, max_epochs=1)
    compiled = train_losses(tmp_path / "compiled", corpus, precision="fp32", compile=True, max_steps=3, max_epochs=1)
    assert compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("beam_size, ctc_weight", [(1, 0.0), (4, 0.0), (4, 0.3)])
def test_cuda_decoding_equals_cpu_decoding(char_tokenizer, beam_size, ctc_weight):
    model = make_model(char_tokenizer, seed=2)
    batch = waveform_batch([0.4, 0.9, 0.6, 0.3], seed=3)
    options = dict(beam_size=beam_size, ctc_weight=ctc_weight, nbest=beam_size, max_length=20, max_length_ratio=1.0)
    cpu = model.generate(batch, **options)
    gpu = model.to("cuda").generate(batch, **options)
    assert [[h.tokens for h in hyps] for hyps in gpu] == [[h.tokens for h in hyps] for hyps in cpu]
    for g, c in zip(gpu, cpu):
        assert [h.score for h in g] == pytest.approx([h.score for h in c], abs=1e-3)


def test_resume_on_gpu_matches_an_uninterrupted_run(corpus, tmp_path):
    from safetensors.torch import load_file

    from mmseq.config import load_config
    from mmseq.training.trainer import train

    first = write_train_config(tmp_path / "resumed", corpus, device="cuda", precision="fp32", max_epochs=1)
    train(load_config(first))
    train(load_config(first, ["trainer.max_epochs=2"]))
    state = json.loads((tmp_path / "resumed" / "out" / "last" / "trainer_state.json").read_text())
    straight = write_train_config(tmp_path / "straight", corpus, device="cuda", precision="fp32", max_epochs=2)
    train(load_config(straight))
    assert json.loads((tmp_path / "straight" / "out" / "last" / "trainer_state.json").read_text())["step"] == \
        state["step"]
    expected = load_file(tmp_path / "straight" / "out" / "last" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "out" / "last" / "model.safetensors")
    worst = max(float((expected[k].float() - got[k].float()).abs().max()) for k in expected)
    print(f"resume on GPU: largest weight difference {worst:.2e}")
    assert worst <= 1e-4
    shutil.rmtree(tmp_path / "straight", ignore_errors=True)
