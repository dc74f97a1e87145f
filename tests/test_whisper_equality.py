"""mmseq decodes an imported Whisper as transformers decodes the original: the same greedy and
beam-search tokens, log-probabilities and scores, with timestamp tokens off and on, batched and
one input at a time; the three forms a Whisper is kept in import to one checkpoint; and
``mmseq export --format transformers`` gives transformers back a model that decodes as before.

One tiny random Whisper (two layers each side, width 64, Whisper's multilingual vocabulary of
51,865 tokens and its tokenizer built from openai-whisper's files) made by transformers offline,
its weights scaled so that the output follows the audio (attention sharp enough to pick frames,
layers as strong as the token vectors) and ends (the decoder's positions drift toward ``</s>``'s
vector, so ``</s>`` wins after some 10 to 40 tokens). Settings that match transformers' beam
search: ``length_penalty`` alike (both divide the summed log-probabilities by the number of new
tokens, ``</s>`` included) and ``early_stopping="heuristic"`` for its ``early_stopping=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmseq.importers.whisper import import_whisper, non_speech_tokens
from mmseq.importers.whisper_sources import tiktoken_tokenizer_json

transformers = pytest.importorskip("transformers")
pytest.importorskip("whisper")  # openai-whisper's tiktoken files: the tokenizer of 51,865 tokens

VOCAB, EOS, SOT, EN = 51865, 50257, 50258, 50259
TRANSLATE, TRANSCRIBE, STARTOFLM, STARTOFPREV, NOSPEECH, NOTIMESTAMPS, TIMESTAMP_BEGIN = range(50358, 50365)
SECONDS = (1.0, 2.3, 3.1, 4.0)
MAX_NEW = 64  # transformers' max_new_tokens; mmseq's max_length counts </s> too: MAX_NEW + 1


def clip(seconds: float, seed: int) -> np.ndarray:
    """Four random tones with random tremolo over a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    tones = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(100, 4000) * t + rng.uniform(0, 6))
                * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) for _ in range(4))
    return (tones + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def tiny_whisper(n_mels: int = 80, seed: int = 0):
    """transformers' Whisper, random but not degenerate (see the module), with the generation
    settings a real multilingual checkpoint has."""
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=n_mels, encoder_layers=2, decoder_layers=2, d_model=64,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_source_positions=1500, max_target_positions=448, pad_token_id=EOS, bos_token_id=EOS, eos_token_id=EOS,
        decoder_start_token_id=SOT)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name == "model.encoder.embed_positions.weight":
                continue  # layer norms 1 and 0, sinusoidal audio positions: as trained models' are near
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
            elif "embed_tokens" in name:
                parameter.normal_(0, 0.3)
            elif "embed_positions" in name:
                parameter.normal_(0, 0.3)
            else:  # sharp attention, residual branches twice the token vectors
                scale = 4.0 if "q_proj" in name or "k_proj" in name else 1.0
                scale = 2.0 if "out_proj" in name or "fc2" in name else scale
                parameter.normal_(0, scale * parameter.shape[-1] ** -0.5)
        end = model.model.decoder.embed_tokens.weight[EOS]
        positions = model.model.decoder.embed_positions.weight
        positions += 0.8 * torch.arange(len(positions))[:, None] * end / end.norm()
    generation = model.generation_config
    generation.lang_to_id = {"<|en|>": EN, "<|de|>": EN + 2}
    generation.task_to_id = {"translate": TRANSLATE, "transcribe": TRANSCRIBE}
    generation.no_timestamps_token_id, generation.is_multilingual = NOTIMESTAMPS, True
    generation.max_initial_timestamp_index = 50
    generation.alignment_heads = [[1, 0], [1, 2]]
    return model


@pytest.fixture(scope="module")
def tokenizer_json() -> bytes:
    return tiktoken_tokenizer_json(VOCAB)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory, tokenizer_json):
    """The transformers model, its folder and the other two forms, each imported into mmseq."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("whisper-equality")
    backend = Tokenizer.from_str(tokenizer_json.decode())
    model = tiny_whisper()
    # Suppressed as in a real checkpoint: openai-whisper's non-speech symbols and the task tokens.
    model.generation_config.suppress_tokens = non_speech_tokens(SimpleNamespace(backend=backend)) + [
        TRANSLATE, TRANSCRIBE, STARTOFLM, STARTOFPREV, NOSPEECH]
    model.generation_config.begin_suppress_tokens = [220, EOS]
    model.save_pretrained(root / "hf")
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(root / "hf")
    torch.save({"dims": openai_dims(model.config), "model_state_dict": openai_state(model.state_dict())},
               root / "tiny.pt")
    forms = {"transformers": root / "hf", "openai": root / "tiny.pt"}
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
    if ctranslate2 is not None:
        converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
        forms["ctranslate2"] = Path(converter.convert(str(root / "ct2")))
    imported = {form: import_whisper(path, root / f"mmseq-{form}", tokenizer=root / "hf" if form == "openai" else None)
                for form, path in forms.items()}
    audios = [clip(seconds, seed) for seed, seconds in enumerate(SECONDS)]
    features = transformers.WhisperFeatureExtractor(feature_size=80)(
        audios, sampling_rate=16000, return_tensors="pt").input_features
    return SimpleNamespace(hf=model, root=root, forms=forms, imported=imported, audios=audios, features=features,
                           tokenizer=backend)


def openai_dims(config) -> dict:
    return {"n_mels": config.num_mel_bins, "n_audio_ctx": config.max_source_positions,
            "n_audio_state": config.d_model, "n_audio_head": config.encoder_attention_heads,
            "n_audio_layer": config.encoder_layers, "n_vocab": config.vocab_size,
            "n_text_ctx": config.max_target_positions, "n_text_state": config.d_model,
            "n_text_head": config.decoder_attention_heads, "n_text_layer": config.decoder_layers}


def openai_state(hf: dict) -> dict:
    """transformers' state dict in openai-whisper's names (written here, apart from the reader's)."""
    top = {"encoder.embed_positions.weight": "encoder.positional_embedding",
           "decoder.embed_positions.weight": "decoder.positional_embedding",
           "decoder.embed_tokens.weight": "decoder.token_embedding.weight"}
    parts = [("self_attn_layer_norm", "attn_ln"), ("encoder_attn_layer_norm", "cross_attn_ln"),
             ("final_layer_norm", "mlp_ln"), ("self_attn.", "attn."), ("encoder_attn.", "cross_attn."),
             ("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out"), ("fc1", "mlp.0"),
             ("fc2", "mlp.2"), ("layers.", "blocks."), ("encoder.layer_norm", "encoder.ln_post"),
             ("decoder.layer_norm", "decoder.ln")]
    out = {}
    for name, tensor in hf.items():
        if name == "proj_out.weight":
            continue
        name = name.removeprefix("model.")
        if name in top:
            name = top[name]
        else:
            for theirs, ours in parts:
                name = name.replace(theirs, ours)
        out[name] = tensor.detach().clone()
    return out


# -- decoding on both sides -----------------------------------------------------------------------
def hf_suppressed(model, timestamps: bool) -> list[int]:
    """What an mmseq Whisper never generates, for transformers: its suppressed tokens and every
    special token but </s> (mmseq's search never generates those; openai-whisper's lists most of
    them), the timestamps excepted when they are on."""
    specials = range(EOS + 1, TIMESTAMP_BEGIN if timestamps else VOCAB)
    return sorted(set(model.decoding.suppress_tokens) | set(specials))


def hf_generate(hf, features, mmseq_model, timestamps=False, beams=1, nbest=1):
    return hf.generate(features, language="en", task="transcribe", return_timestamps=timestamps,
                       force_unique_generate_call=True, num_beams=beams, num_return_sequences=nbest,
                       max_new_tokens=MAX_NEW, do_sample=False, length_penalty=1.0, early_stopping=False,
                       suppress_tokens=hf_suppressed(mmseq_model, timestamps),
                       begin_suppress_tokens=list(mmseq_model.decoding.suppress_at_start),
                       return_dict_in_generate=True, output_scores=True, output_logits=True)


def generated(row, prompt_length: int) -> list[int]:
    """A transformers output row's new tokens before </s>."""
    row = row.tolist()[prompt_length:]
    return row[: row.index(EOS)] if EOS in row else row


def ended(row, prompt_length: int) -> bool:
    return EOS in row.tolist()[prompt_length:]


def batch_of(audios) -> dict:
    lengths = torch.tensor([len(a) for a in audios])
    inputs = torch.zeros(len(audios), int(lengths.max()))
    for i, audio in enumerate(audios):
        inputs[i, : len(audio)] = torch.from_numpy(audio)
    return {"inputs": inputs, "lengths": lengths}


def mm_generate(model, audios, **options):
    return model.generate(batch_of(audios), max_length=MAX_NEW + 1, **options)


def teacher_forced(hf, features, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """transformers' log-probabilities of ``tokens`` and </s> after ``prompt``, one per step."""
    targets = tokens + [EOS]
    ids = torch.tensor([prompt + targets[:-1]])
    with torch.no_grad():
        logits = hf(input_features=features[None], decoder_input_ids=ids).logits[0, len(prompt) - 1:]
    return logits.float().log_softmax(-1).gather(1, torch.tensor(targets)[:, None])[:, 0]


FORMS = ["transformers", "ctranslate2", "openai"]


def imported(whisper, form):
    if form not in whisper.imported:
        pytest.skip("ctranslate2 is not installed")
    return whisper.imported[form]


# -- the three forms -------------------------------------------------------------------------------
def test_three_forms_import_to_one_checkpoint(whisper):
    models = list(whisper.imported.values())
    reference = models[0].state_dict()
    for model in models[1:]:
        state = model.state_dict()
        assert state.keys() == reference.keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, reference[name]), name
    configs = [json.loads((whisper.root / f"mmseq-{form}" / "config.json").read_text()) for form in whisper.imported]
    # Alike but for the origin; openai's suppressed list (built) names fewer special tokens, which
    # the search never generates anyway; openai's files have no alignment heads, and CTranslate2's
    # converter misses transformers 5's and writes its default (the last half of the heads).
    for config in configs:
        config["training"]["imported"]["from"] = config["model"]["decoder"]["alignment_heads"] = None
        config["decoding"]["suppress_tokens"] = [i for i in config["decoding"]["suppress_tokens"] if i < EOS]
        assert config == configs[0]
    assert configs[0]["tokenizer"]["roles"]["no_timestamps"] == "<|notimestamps|>"


# -- greedy ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_greedy_tokens_and_log_probs_match_transformers(whisper, form):
    model = imported(whisper, form)
    reference = hf_generate(whisper.hf, whisper.features, model)
    prompt = [SOT, EN, TRANSCRIBE, NOTIMESTAMPS]
    assert reference.sequences[:, :4].tolist() == [prompt] * len(SECONDS)
    hyps = mm_generate(model, whisper.audios)
    logits = torch.stack(reference.logits, 1).float().log_softmax(-1)  # (batch, steps, vocab): unprocessed
    lengths = set()
    for i, ((hyp,), row) in enumerate(zip(hyps, reference.sequences)):
        assert ended(row, 4)
        tokens = generated(row, 4)
        assert hyp.tokens == tokens and hyp.prompt == prompt[1:], i
        lengths.add(len(tokens))
        steps = logits[i, : len(tokens) + 1].gather(1, torch.tensor(tokens + [EOS])[:, None])[:, 0]
        ours = teacher_forced_mmseq(model, whisper.audios[i], prompt, tokens)
        torch.testing.assert_close(ours, steps, rtol=0, atol=2e-4)
        assert hyp.log_prob == pytest.approx(float(steps.sum()), abs=1e-3)
    assert len(lengths) > 1 and min(lengths) > 3  # not degenerate: outputs of several lengths


def teacher_forced_mmseq(model, audio, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """mmseq's log-probabilities of ``tokens`` and </s> after ``prompt``, one per step."""
    batch = batch_of([audio])
    targets = tokens + [EOS]
    with torch.no_grad():
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
        logits = model.decoder(torch.tensor([prompt + targets[:-1]]), memory, mask)[0, len(prompt) - 1:]
    return logits.float().log_softmax(-1).gather(1, torch.tensor(targets)[:, None])[:, 0]


# -- beam search ---------------------------------------------------------------------------------------
def hf_nbest(hf, features, mmseq_model, beams: int, penalty: float):
    """transformers' beam search with its whole pool of finished hypotheses: the search Whisper's
    generate runs, called directly, as Whisper's own ``num_return_sequences`` repeats each input
    and keeps one hypothesis of each (made for sampling, it returns the best ``beams`` times)."""
    prompt = torch.tensor([[SOT, EN, TRANSCRIBE, NOTIMESTAMPS]] * len(features))
    return transformers.GenerationMixin.generate(
        hf, input_features=features, decoder_input_ids=prompt, num_beams=beams, num_return_sequences=beams,
        max_new_tokens=MAX_NEW, do_sample=False, length_penalty=penalty, early_stopping=False,
        suppress_tokens=hf_suppressed(mmseq_model, False),
        begin_suppress_tokens=list(mmseq_model.decoding.suppress_at_start),
        return_dict_in_generate=True, output_scores=True)


@pytest.mark.parametrize("beams, penalty", [(3, 0.5), (5, 1.0)])
def test_beam_search_matches_transformers(whisper, beams, penalty):
    """The whole n-best list: its hypotheses, their order and scores, and their summed
    log-probabilities as transformers' own forward pass gives them. mmseq's ``length_penalty`` is
    transformers' (score = total / new tokens ** penalty, </s> counted), and its
    ``early_stopping="heuristic"`` transformers' ``early_stopping=False``."""
    model = imported(whisper, "transformers")
    reference = hf_nbest(whisper.hf, whisper.features, model, beams, penalty)
    results = mm_generate(model, whisper.audios, beam_size=beams, nbest=beams, length_penalty=penalty,
                          early_stopping="heuristic")
    greedy = mm_generate(model, whisper.audios)
    prompt, differs = [SOT, EN, TRANSCRIBE, NOTIMESTAMPS], 0
    for i, hyps in enumerate(results):
        rows = reference.sequences[i * beams:(i + 1) * beams]
        assert all(ended(row, 4) for row in rows)  # none cut at max_new_tokens (see test_length_limit)
        assert [hyp.tokens for hyp in hyps] == [generated(row, 4) for row in rows], i
        scores = reference.sequences_scores[i * beams:(i + 1) * beams]
        assert [hyp.score for hyp in hyps] == pytest.approx(scores.tolist(), abs=1e-4)
        for hyp in hyps:
            total = teacher_forced(whisper.hf, whisper.features[i], prompt, hyp.tokens).sum()
            assert hyp.log_prob == pytest.approx(float(total), abs=1e-3)
            assert hyp.score == pytest.approx(hyp.log_prob / (len(hyp.tokens) + 1) ** penalty, abs=1e-6)
        differs += hyps[0].tokens != greedy[i][0].tokens
    assert differs  # the beam finds what greedy does not


def test_whisper_generate_beam_search_matches(whisper):
    """Whisper's own generate (the language and task prompt, its logit processors) at beam 5."""
    model = imported(whisper, "openai")
    reference = hf_generate(whisper.hf, whisper.features, model, beams=5)
    results = mm_generate(model, whisper.audios, beam_size=5)
    for (hyp,), row, score in zip(results, reference.sequences, reference.sequences_scores):
        assert hyp.tokens == generated(row, 4) and hyp.score == pytest.approx(float(score), abs=1e-4)


def test_length_limit(whisper):
    """Outputs cut at the limit: transformers' ``max_new_tokens=n`` is mmseq's ``max_length=n + 1``
    (which counts the </s> appended, at no cost, to a cut output). Greedy search agrees; a beam
    search that reaches the limit does not quite: transformers ranks its cut hypotheses by their
    n tokens, mmseq by n + 1, and ends the hypotheses whose n-th token is </s> at n too."""
    model = imported(whisper, "transformers")
    reference = whisper.hf.generate(whisper.features, language="en", task="transcribe", max_new_tokens=6,
                                    suppress_tokens=hf_suppressed(model, False),
                                    begin_suppress_tokens=list(model.decoding.suppress_at_start),
                                    return_dict_in_generate=True, output_logits=True)
    steps = torch.stack(reference.logits, 1).float().log_softmax(-1)
    for i, ((hyp,), row) in enumerate(zip(model.generate(batch_of(whisper.audios), max_length=7),
                                          reference.sequences)):
        tokens = generated(row, 4)
        assert len(tokens) == 6 and hyp.tokens == tokens
        total = steps[i].gather(1, torch.tensor(tokens)[:, None]).sum()
        assert hyp.log_prob == pytest.approx(float(total), abs=1e-3)
        assert hyp.score == pytest.approx(hyp.log_prob / 7, abs=1e-6)


# -- timestamps --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beams", [1, 3])
def test_timestamp_tokens_match_transformers(whisper, beams):
    model = imported(whisper, "transformers")
    reference = hf_generate(whisper.hf, whisper.features, model, timestamps=True, beams=beams)
    results = mm_generate(model, whisper.audios, timestamp_tokens=True, beam_size=beams)
    prompt = [SOT, EN, TRANSCRIBE]
    assert reference.sequences[:, :3].tolist() == [prompt] * len(SECONDS)
    pairs = 0
    for i, ((hyp, *_), row) in enumerate(zip(results, reference.sequences)):
        assert ended(row, 3)
        assert hyp.prompt == prompt[1:] and hyp.tokens == generated(row, 3), i
        times = [t for t in hyp.tokens if t >= TIMESTAMP_BEGIN]
        assert hyp.tokens[0] >= TIMESTAMP_BEGIN and times[0] <= TIMESTAMP_BEGIN + 50 and times == sorted(times)
        pairs += sum(a >= TIMESTAMP_BEGIN and b >= TIMESTAMP_BEGIN for a, b in zip(hyp.tokens, hyp.tokens[1:]))
        if beams == 1:
            total = teacher_forced(whisper.hf, whisper.features[i], prompt, hyp.tokens).sum()
            assert hyp.log_prob == pytest.approx(float(total), abs=1e-3)
    assert pairs  # segments closed and opened: the pair rules were exercised


@pytest.mark.parametrize("options", [{}, {"beam_size": 3}, {"timestamp_tokens": True}, {"timestamp_tokens": True,
                                                                                       "beam_size": 3}])
def test_batched_and_one_at_a_time_agree(whisper, options):
    model = imported(whisper, "transformers")
    together = mm_generate(model, whisper.audios, **options)
    for audio, hyps in zip(whisper.audios, together):
        alone = mm_generate(model, [audio], **options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert alone[0].log_prob == pytest.approx(hyps[0].log_prob, abs=1e-4)


def test_timestamps_need_a_tokenizer_that_has_them(whisper):
    from mmseq.errors import MmseqError
    from mmseq.tokenizer import CharTokenizer

    with pytest.raises(MmseqError, match="no timestamp tokens"):
        CharTokenizer(["a"]).timestamp_prompt([5], True)
    model = imported(whisper, "transformers")
    assert model.tokenizer.timestamp_begin == TIMESTAMP_BEGIN and model.tokenizer.no_timestamps_id == NOTIMESTAMPS
    assert model.tokenizer.timestamp_prompt([EN, TRANSCRIBE, NOTIMESTAMPS], True) == [EN, TRANSCRIBE]
    assert model.tokenizer.timestamp_prompt([EN, TRANSCRIBE, NOTIMESTAMPS], False) == [EN, TRANSCRIBE, NOTIMESTAMPS]


# -- export ---------------------------------------------------------------------------------------------
def test_export_gives_transformers_the_same_model(whisper, tmp_path):
    from mmseq.cli import main

    assert main(["export", str(whisper.root / "mmseq-openai"), "--format", "transformers", "--out",
                 str(tmp_path / "out")]) == 0
    back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    original = whisper.hf.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    processor = transformers.WhisperProcessor.from_pretrained(tmp_path / "out")
    features = processor(whisper.audios, sampling_rate=16000, return_tensors="pt").input_features
    torch.testing.assert_close(features, whisper.features, rtol=0, atol=0)
    assert processor.tokenizer.decode([EN, 400, 2000]) == whisper.tokenizer.decode([EN, 400, 2000],
                                                                                   skip_special_tokens=False)
    model = whisper.imported["openai"]
    expected = hf_generate(whisper.hf, whisper.features, model).sequences
    assert torch.equal(hf_generate(back, features, model).sequences, expected)
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["language"] == "<|en|>" and generation["task"] == "transcribe"
    assert generation["no_timestamps_token_id"] == NOTIMESTAMPS and generation["max_initial_timestamp_index"] == 50
    suppressed = hf_suppressed(model, False)  # the route's prompt by default:
    assert torch.equal(back.generate(whisper.features, max_new_tokens=MAX_NEW, suppress_tokens=suppressed),
                       back.generate(whisper.features, max_new_tokens=MAX_NEW, language="en", task="transcribe",
                                     suppress_tokens=suppressed))


def test_key_biases_change_nothing_and_are_dropped(whisper, tmp_path):
    """Fine-tuning in mmseq trains the key biases Whisper lacks: a bias added to every key adds
    the same number to all of a query's scores, which softmax ignores."""
    from mmseq.exporters import export_whisper_transformers
    from mmseq.checkpoint import load

    model = load(whisper.root / "mmseq-transformers")
    tokens = torch.tensor([[SOT, EN, TRANSCRIBE, NOTIMESTAMPS, 400, 2000, 13, 995, 50]])
    batch = batch_of(whisper.audios[1:2])

    def log_probs(model):  # (steps, vocab), every token's
        with torch.no_grad():
            return model.decoder(tokens, *model.encode(batch["inputs"], batch["lengths"]))[0].log_softmax(-1)

    before = log_probs(model)
    torch.manual_seed(3)
    with torch.no_grad():  # the encoder's and the decoder's self-attention keys, the cross-attention keys
        for name, parameter in model.named_parameters():
            if name.endswith("qkv.bias"):
                parameter[64:128] = torch.randn(64)
            elif name.endswith("cross_kv.bias"):
                parameter[:64] = torch.randn(64)
    changed = log_probs(model)
    torch.testing.assert_close(changed, before, rtol=0, atol=1e-4)
    export_whisper_transformers(model, tmp_path / "out")
    back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        theirs = back(input_features=whisper.features[1:2], decoder_input_ids=tokens).logits[0].log_softmax(-1)
    torch.testing.assert_close(theirs, before, rtol=0, atol=2e-4)


def test_export_refuses_what_transformers_cannot_hold(whisper, tmp_path):
    from mmseq.errors import CheckpointError
    from mmseq.exporters import export_whisper_transformers
    from mmseq.adapters import add_lora, decoder_projections
    from mmseq.checkpoint import load

    model = load(whisper.root / "mmseq-transformers")
    add_lora(decoder_projections(model.decoder), 2)
    with pytest.raises(CheckpointError, match="lora_a.* has no place in transformers' Whisper"):
        export_whisper_transformers(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_of_128_mels(tmp_path, tokenizer_json):
    """large-v3's 128 mel bands: the feature extractor the folder names makes them."""
    from mmseq.exporters import export_whisper_transformers

    model = tiny_whisper(n_mels=128, seed=1)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes(tokenizer_json)
    ours = import_whisper(tmp_path / "hf", tmp_path / "mmseq")
    export_whisper_transformers(ours, tmp_path / "out")
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(tmp_path / "out")
    features = extractor([clip(2.0, 9)], sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 128, 3000)
    back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[SOT, EN, TRANSCRIBE, NOTIMESTAMPS, 400]])
    with torch.no_grad():
        torch.testing.assert_close(back(input_features=features, decoder_input_ids=ids).logits,
                                   model(input_features=features, decoder_input_ids=ids).logits, rtol=0, atol=1e-5)


def test_export_format_choice_keeps_onnx_the_default():
    from mmseq.cli import build_parser

    assert build_parser().parse_args(["export", "ckpt", "--out", "x"]).format == "onnx"
    chosen = build_parser().parse_args(["export", "ckpt", "--out", "x", "--format", "transformers"])
    assert chosen.format == "transformers"
