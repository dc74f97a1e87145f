"""The language model: trained by the shared trainer (task "lm", encoder "null"), loaded as a fusion
scorer, and fused in beam search with exactly the weight asked for."""

from __future__ import annotations

import mmseq
import json

import pytest
import torch

from conftest import TINY_DECODER, make_model, waveform_batch
from mmseq.config import Config, DataConfig, TrainerConfig
from mmseq.errors import ConfigError
from mmseq.decoding.scorers.lm import LanguageModel
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search
from mmseq.tokenizer import CharTokenizer

PROMPTS = ["<|asr|>", "<|caption|>", "<|text|>", "<|short|>"]
SENTENCE = "the red cat sits"


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
    """An LM trained by the shared trainer on one sentence said many times."""
    from mmseq.training.trainer import train

    folder = tmp_path_factory.mktemp("lm")
    manifest, valid = folder / "text.jsonl", folder / "valid.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"s{i}", "text": SENTENCE}) + "\n" for i in range(1280)))
    valid.write_text(json.dumps({"id": "v", "text": SENTENCE}) + "\n")
    config = Config(task="lm", output_dir=str(folder / "exp"),  # one epoch: one validation, one checkpoint
                    data=DataConfig(train=str(manifest), valid=str(valid), batch_size=16, num_workers=0),
                    model=ModelConfig(encoder={"name": "null"}, decoder=dict(TINY_DECODER), ctc_weight=0.0,
                                      label_smoothing=0.0),
                    trainer=TrainerConfig(max_epochs=1, lr=5e-3, warmup_steps=5, device="cpu", log_every=1000))
    config.tokenizer.prompt_tokens = list(PROMPTS)
    train(config)
    return folder / "exp"


def test_trainer_trains_a_language_model(trained_lm):
    lm = LanguageModel.load(trained_lm / "last")
    assert lm.tokenizer.kind == "char"
    untrained = Seq2Seq(ModelConfig(encoder={"name": "null"}, decoder=dict(TINY_DECODER), ctc_weight=0.0),
                        lm.tokenizer, "lm").eval()
    assert lm.perplexity([SENTENCE]) < 1.5 < LanguageModel(untrained.decoder, lm.tokenizer).perplexity([SENTENCE])


def test_loading_a_non_lm_checkpoint_is_refused(tmp_path, char_tokenizer):
    mmseq.save(make_model(char_tokenizer), tmp_path / "asr")
    with pytest.raises(ConfigError, match="not a language model"):
        LanguageModel.load(tmp_path / "asr")


def asr_model_for(lm: LanguageModel, seed: int = 0) -> Seq2Seq:
    tokenizer = CharTokenizer(lm.tokenizer.vocab, prompt_tokens=lm.tokenizer.prompt_tokens)
    return make_model(tokenizer, seed=seed)


def test_fused_scores_are_the_weighted_sum(trained_lm):
    lm = LanguageModel.load(trained_lm / "last")
    model = asr_model_for(lm)
    batch = waveform_batch([0.5, 0.8])
    with torch.no_grad():
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
    weight, prompt = 0.5, model.route().task.prompt()
    options = DecodingOptions(beam_size=3, nbest=3, max_length=25, lm_weight=weight)
    eos, bos = model.tokenizer.eos_id, model.tokenizer.bos_id
    for row, hyps in enumerate(beam_search(model, memory, mask, prompt, options, lm=lm)):
        for hyp in hyps:
            ended = hyp.tokens + [eos]
            with torch.no_grad():
                attention = model.decoder(torch.tensor([[bos] + prompt + hyp.tokens]), memory[row:row + 1],
                                          mask[row:row + 1]).log_softmax(-1)[0, len(prompt):]
                text = lm.decoder(torch.tensor([[bos] + hyp.tokens]), torch.zeros(1, 1, 1),
                                  torch.ones(1, 1, dtype=torch.bool)).log_softmax(-1)[0]
            steps = [float(attention[i, t] + weight * text[i, t]) for i, t in enumerate(ended)]
            if len(ended) == 25:
                steps[-1] = 0.0  # </s> forced at the length limit costs nothing
            assert hyp.log_prob == pytest.approx(sum(steps), abs=1e-3)


def test_a_strong_language_model_steers_the_output(trained_lm):
    lm = LanguageModel.load(trained_lm / "last")
    model = asr_model_for(lm, seed=1)  # untrained: its own outputs are noise
    batch = waveform_batch([0.5, 0.7])
    plain = model.decode_texts(batch, beam_size=4, ctc_weight=0.0, max_length=30)
    fused = model.decode_texts(batch, beam_size=4, ctc_weight=0.0, max_length=30, lm=lm, lm_weight=5.0)
    assert fused == [SENTENCE, SENTENCE] != plain
    # a folder works too, and the prompt's text prefix conditions the LM as well as the decoder
    fused = model.decode_texts(batch, beam_size=2, ctc_weight=0.0, max_length=30, lm=mmseq.load_lm(str(trained_lm / "last"), model.tokenizer),
                               lm_weight=5.0, prompt="the red")
    assert fused == [SENTENCE, SENTENCE]


def test_a_language_model_with_another_vocabulary_is_refused(trained_lm, char_tokenizer):
    lm = LanguageModel.load(trained_lm / "last")
    model = make_model(char_tokenizer)
    with pytest.raises(ConfigError, match="vocabulary"):
        model.generate(waveform_batch([0.4]), beam_size=2, lm=lm, lm_weight=0.3)
