"""Token n-gram language models: Kneser-Ney counted from text, kept as ARPA or safetensors, and
fused in beam search with exactly the weight asked for."""

from __future__ import annotations

import mmseq
import json
import math
from collections import Counter

import pytest
import torch

from conftest import make_model, waveform_batch
from mmseq.errors import ConfigError, InputError
from mmseq.decoding.ngram import BOS, EOS, arpa_word, count_ngrams, kneser_ney, read_arpa, train_ngram, write_arpa
from mmseq.decoding.scorers.ngram import NGramLM
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search
from mmseq.tokenizer import CharTokenizer

PROMPTS = ["<|asr|>", "<|caption|>", "<|text|>", "<|short|>"]
TEXTS = ["the red cat sits", "the cat sat", "a red hat", "the hat sits", "a cat", "red red cat"]


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(TEXTS + ["bdgjklmnopquvwxyz"], prompt_tokens=PROMPTS)


def interpolated(counts: list[Counter], words: list[str], history: tuple, word: str) -> float:
    """Interpolated Kneser-Ney straight from its definition (Chen and Goodman 1998), recursively:
    the reference that the ARPA backoff form must reproduce for every history, seen or not."""
    order = len(counts)
    history = history[len(history) - order + 1:] if len(history) >= order else history
    n = len(history) + 1
    if n < order:  # continuation counts: distinct tokens before, except after <s>
        grams = Counter()
        for gram in counts[n]:
            grams[gram[1:]] += 1
        for gram, count in counts[n - 1].items():
            if gram[0] == BOS:
                grams[gram] = count
    else:
        grams = counts[n - 1]
    values = Counter(v for g, v in grams.items() if len(g) == n and g[-1] != BOS and v <= 2)
    discount = values[1] / (values[1] + 2 * values[2])
    followers = {g[-1]: c for g, c in grams.items() if len(g) == n and g[:-1] == history and g[-1] != BOS}
    lower = 1 / len(words) if n == 1 else interpolated(counts, words, history[1:], word)
    total = sum(followers.values())
    if not total:  # a history never seen: all its mass backs off
        return lower
    return max(followers.get(word, 0) - discount, 0) / total + discount * len(followers) / total * lower


def test_the_backoff_form_is_interpolated_kneser_ney(tokenizer):
    sentences = [list(text) for text in TEXTS]
    counts = count_ngrams(sentences, 3)
    words = sorted(set(tokenizer.vocab) | {EOS})
    lm = NGramLM.from_arpa(kneser_ney(counts, tokenizer.vocab), tokenizer)
    for history in [(BOS,), (BOS, "t"), ("t", "h"), ("e", " "), ("c", "a"), ("z", "q"), ("a", "z"), ("q",)]:
        ids = tuple(tokenizer.bos_id if w == BOS else tokenizer.encode(w)[0] for w in history)
        probs = lm.log_probs(lm._history(ids)).exp()
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)  # a distribution after every history
        for word in words:
            token = tokenizer.eos_id if word == EOS else tokenizer.encode(word)[0]
            assert float(probs[token]) == pytest.approx(interpolated(counts, words, history, word), rel=1e-4)


def test_pruning_keeps_every_distribution_whole_and_drops_rare_ngrams(tokenizer):
    full = train_ngram(tokenizer, TEXTS * 2 + ["zebra quip"], order=3)
    pruned = train_ngram(tokenizer, TEXTS * 2 + ["zebra quip"], order=3, prune=3)
    assert len(pruned[2]) < len(full[2]) and [len(t) for t in pruned[:2]] == [len(t) for t in full[:2]]
    assert ("z", "e", "b") in full[2] and ("z", "e", "b") not in pruned[2]
    lm = NGramLM.from_arpa(pruned, tokenizer)
    for history in [(tokenizer.bos_id,), tuple(tokenizer.encode("ze")), tuple(tokenizer.encode("th"))]:
        assert float(lm.log_probs(lm._history(history)).exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_arpa_and_safetensors_round_trips_score_alike(tokenizer, tmp_path):
    model = train_ngram(tokenizer, TEXTS, order=3)
    write_arpa(model, tmp_path / "lm.arpa.gz")
    back = read_arpa(tmp_path / "lm.arpa.gz")
    model = [{tuple(map(arpa_word, gram)): value for gram, value in table.items()} for table in model]  # " " is "▁"
    assert [list(t) for t in back] == [list(t) for t in model]  # the same n-grams in the same order
    for table, original in zip(back, model):
        for gram, (logp, backoff) in table.items():
            assert logp == pytest.approx(original[gram][0], abs=1e-6)
            assert (backoff is None) == (original[gram][1] is None)
    direct = NGramLM.from_arpa(back, tokenizer)
    direct.save(tmp_path / "ngram")
    for lm in (NGramLM.load(tmp_path / "lm.arpa.gz", tokenizer), NGramLM.load(tmp_path / "ngram", tokenizer)):
        assert lm.order == 3
        assert lm.perplexity(TEXTS) == pytest.approx(direct.perplexity(TEXTS), rel=1e-5)
    # what it was counted on is likelier than what it was not
    assert direct.perplexity(["the red cat"]) < direct.perplexity(["zqx vwk"])


def test_bad_files_are_named(tokenizer, tmp_path):
    write_arpa(train_ngram(tokenizer, TEXTS, order=2), tmp_path / "lm.arpa")
    lines = (tmp_path / "lm.arpa").read_text().splitlines()
    (tmp_path / "cut.arpa").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(InputError, match="cut.arpa: ends before"):
        read_arpa(tmp_path / "cut.arpa")
    lines[8] = "nonsense"
    (tmp_path / "bad.arpa").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="bad.arpa:9: "):
        read_arpa(tmp_path / "bad.arpa")
    with pytest.raises(InputError, match="missing.arpa: not an n-gram model"):
        NGramLM.load(tmp_path / "missing.arpa", tokenizer)
    other = CharTokenizer.train(["xyz"], prompt_tokens=PROMPTS)
    with pytest.raises(ConfigError, match="tokenizer"):
        NGramLM.load(tmp_path / "lm.arpa", other)


def fused_setup(tokenizer, order=3):
    lm = NGramLM.from_arpa(train_ngram(tokenizer, ["the red cat sits"] * 50 + TEXTS, order=order), tokenizer)
    model = make_model(tokenizer, seed=1)  # untrained: its own outputs are noise
    return lm, model


def test_fused_scores_are_the_weighted_sum(tokenizer):
    lm, model = fused_setup(tokenizer)
    batch = waveform_batch([0.5, 0.8])
    with torch.no_grad():
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
    weight, prompt = 0.7, model.route().task.prompt()
    options = DecodingOptions(beam_size=3, nbest=3, max_length=25, lm_weight=weight)
    eos, bos = tokenizer.eos_id, tokenizer.bos_id
    for row, hyps in enumerate(beam_search(model, memory, mask, prompt, options, lm=lm)):
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        for hyp in hyps:
            ended = hyp.tokens + [eos]
            with torch.no_grad():
                attention = model.decoder(torch.tensor([[bos] + prompt + hyp.tokens]), memory[row:row + 1],
                                          mask[row:row + 1]).log_softmax(-1)[0, len(prompt):]
            history, text = lm._history((bos,)), []
            for token in ended:
                text.append(float(lm.log_probs(history)[token]))
                history = lm._history(history + (token,))
            steps = [float(attention[i, t]) + weight * text[i] for i, t in enumerate(ended)]
            if len(ended) == 25:
                steps[-1] = 0.0  # </s> forced at the length limit costs nothing
            assert hyp.log_prob == pytest.approx(sum(steps), abs=1e-3)


def test_a_strong_ngram_model_steers_the_output_and_loads_from_a_folder(tokenizer, tmp_path):
    lm, model = fused_setup(tokenizer, order=6)
    batch = waveform_batch([0.5, 0.7])
    plain = model.decode_texts(batch, beam_size=4, ctc_weight=0.0, max_length=30)
    fused = model.decode_texts(batch, beam_size=4, ctc_weight=0.0, max_length=30, lm=lm, lm_weight=5.0)
    assert fused == ["the red cat sits"] * 2 != plain
    lm.save(tmp_path / "ngram")
    fused = model.decode_texts(batch, beam_size=2, ctc_weight=0.0, max_length=30, lm=mmseq.load_lm(str(tmp_path / "ngram"), model.tokenizer),
                               lm_weight=5.0, prompt="the red")  # the prompt's text conditions the n-grams too
    assert fused == ["the red cat sits"] * 2


def test_the_command_counts_a_checkpoints_tokens(tokenizer, tmp_path, capsys):
    from mmseq.cli import main

    model = make_model(tokenizer)
    mmseq.save(model, tmp_path / "asr")
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tmp_path / "more.txt").write_text("a red cat\n\nthe hat\n")
    assert main(["ngram", str(tmp_path / "asr"), str(tmp_path / "text.jsonl"), str(tmp_path / "more.txt"),
                 "--order", "3", "--out", str(tmp_path / "ngram"), "--arpa", str(tmp_path / "lm.arpa")]) == 0
    assert "3-grams" in capsys.readouterr().out
    lm = NGramLM.load(tmp_path / "ngram", model.tokenizer)
    assert lm.perplexity(["a red cat"]) == pytest.approx(NGramLM.load(tmp_path / "lm.arpa", model.tokenizer)
                                                         .perplexity(["a red cat"]), rel=1e-5)
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    assert main(["ngram", str(tmp_path / "asr"), str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "broken.jsonl:2: not a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert math.isfinite(lm.perplexity(["zzz"]))
