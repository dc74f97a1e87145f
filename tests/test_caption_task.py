"""The captioning task: one example per image with all its references, evaluation against all of them,
batches, bad endings given as words, and `mmseq eval` on a caption checkpoint."""

import mmseq
import json
from types import SimpleNamespace

import pytest
import torch
from caption_helpers import COLORS, IMAGE_SIZE, captions_of, make_caption_model, word_tokenizer, write_caption_corpus

from mmseq.decoding.filters import BadEndings, Step
from mmseq.decoding.options import DecodingOptions
from mmseq.decoding.search import beam_search, greedy_search
from mmseq.tasks import ExampleDataset
from mmseq.tokenizer import CharTokenizer


@pytest.fixture
def corpus(tmp_path):
    return write_caption_corpus(tmp_path / "corpus")


@pytest.fixture
def model(tmp_path):
    return make_caption_model(word_tokenizer(tmp_path))


def test_training_and_evaluation_read_one_example_per_image_with_all_its_captions(model, corpus):
    training, errors = model.task.read(corpus, training=True)
    assert not errors and [e["id"] for e in training] == list(COLORS)
    assert all(e["texts"] == captions_of(e["id"]) and e["references"] == captions_of(e["id"]) for e in training)
    assert [model.task.length(e) for e in training] == [3.0] * len(COLORS)  # the batch budget counts captions
    evaluation, _ = model.task.read(corpus, training=False)
    assert [e["id"] for e in evaluation] == list(COLORS)
    assert all(e["references"] == captions_of(e["id"]) and "texts" not in e for e in evaluation)
    assert model.task.length(evaluation[0]) == 1.0


def test_batch_of_images_and_caption_tokens(model, corpus):
    examples, _ = model.task.read(corpus, training=True)
    dataset = ExampleDataset(model.task, examples, training=True)
    batch = model.task.collate([dataset[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["lengths"] is None
    assert batch["size"] == 12 and batch["input_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    tokenizer = model.tokenizer
    prompt = [tokenizer.bos_id, tokenizer.token_id("<|caption|>")]
    texts = [text for example in examples[:4] for text in example["texts"]]
    for row, text in zip(batch["tokens"].tolist(), texts, strict=True):
        text = tokenizer.encode(text)
        assert row[: len(text) + 3] == prompt + text + [tokenizer.eos_id]
    assert batch["prefix_lengths"].tolist() == [2] * 12
    assert batch["references"][0] == captions_of("red")
    # Normalized with the backbone's own mean and std.
    config = model.encoder.data_config()
    expected = [(value / 255 - mean) / std for value, mean, std in zip(COLORS["red"], config["mean"], config["std"])]
    torch.testing.assert_close(batch["inputs"][0].mean((1, 2)), torch.tensor(expected), atol=0.01, rtol=0)
    out = model.train()(batch)
    assert torch.isfinite(out["loss"]) and out["examples"] == 12


def test_captions_sharing_one_encoder_pass_give_the_loss_of_separate_pairs(model, corpus):
    """One image with its captions as rows = the same image repeated once per caption."""
    examples, _ = model.task.read(corpus, training=True)
    item = ExampleDataset(model.task, examples, training=True)[1]
    shared = model.task.collate([item])
    pairs = model.task.collate([{**item, "tokens": [tokens], "prefix_lengths": [length]}
                                for tokens, length in zip(item["tokens"], item["prefix_lengths"])])
    assert "input_index" not in pairs and pairs["inputs"].shape[0] == 3
    torch.manual_seed(0)
    model.eval()  # no dropout: the two passes must agree exactly
    separate, together = model(pairs), model(shared)
    torch.testing.assert_close(together["loss_sum"], separate["loss_sum"])
    assert together["examples"] == separate["examples"] == 3 and together["tokens"] == separate["tokens"]


def test_a_caption_longer_than_the_decoder_drops_only_itself_in_training(model, corpus):
    examples, _ = model.task.read(corpus, training=True)
    limit = model.task.max_tokens
    too_long = "red " * limit
    example = {**examples[0], "texts": [examples[0]["texts"][0], too_long, examples[0]["texts"][2]]}
    item = ExampleDataset(model.task, [example], training=True)[0]
    assert [model.tokenizer.decode(t[2:-1]) for t in item["tokens"]] == [example["texts"][0], example["texts"][2]]
    alone = ExampleDataset(model.task, [{**example, "texts": [too_long]}], training=True)[0]
    assert "longer than the decoder's limit" in alone["error"]


def test_bad_ending_words_ban_the_end_only_after_the_whole_word():
    tokenizer = CharTokenizer(list("abehtonwix "))
    rule = BadEndings(tokenizer, ["the", "a", 5], device="cpu")
    texts = ["on the", "bathe", "the", "a", "on a", "oxa", "no"]
    length = max(map(len, texts))
    eos = tokenizer.eos_id
    for text in texts:
        tokens = torch.tensor([tokenizer.encode(text)])
        log_probs = torch.zeros(1, tokenizer.vocab_size)
        rule.apply(log_probs, Step(tokens.shape[1], tokens, torch.tensor([length + 5])))
        banned = text in ("on the", "the", "a", "on a")
        assert (log_probs[0, eos] == float("-inf")) == banned, text


class ScriptedDecoder:
    """A stand-in decoder that spells ``script`` and then prefers ``</s>``, with ``</s>`` and then
    ``fallback`` as its second choices."""

    def __init__(self, tokenizer, script: str, fallback: str = "x"):
        self.script, self.fallback = tokenizer.encode(script), tokenizer.encode(fallback)[0]
        self.eos, self.vocab = tokenizer.eos_id, tokenizer.vocab_size
        self.config = SimpleNamespace(max_length=64)

    def init_cache(self, memory, memory_mask, max_length=None, offsets=None):
        return ScriptedCache(memory.shape[0])

    def step(self, tokens, cache):
        cache.length += tokens.shape[1]
        done = cache.length - 1  # tokens generated so far (the prefix is <s> alone)
        logits = torch.full((cache.rows, tokens.shape[1], self.vocab), -20.0)
        if done < len(self.script):
            logits[..., self.script[done]], logits[..., self.eos] = 10.0, 5.0
        else:
            logits[..., self.eos], logits[..., self.fallback] = 10.0, 5.0
        return logits


class ScriptedCache:
    def __init__(self, rows):
        self.rows, self.length = rows, 0

    def repeat(self, times):
        self.rows *= times
        return self

    share = repeat

    def select(self, index):
        self.rows = len(index)
        return self

    def reorder(self, index):
        pass


@pytest.mark.parametrize("beam_size", [1, 3])
def test_search_never_ends_right_after_a_bad_word(beam_size):
    tokenizer = CharTokenizer(list("abehtonwix "))
    model = SimpleNamespace(tokenizer=tokenizer, decoder=ScriptedDecoder(tokenizer, "on the"))
    memory, mask = torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool)

    def decode(**options):
        options = DecodingOptions(beam_size=beam_size, max_length=10, **options)
        if beam_size == 1:
            return [tokenizer.decode(h.tokens) for h in greedy_search(model, memory, mask, [], options)]
        return [tokenizer.decode(hyps[0].tokens) for hyps in beam_search(model, memory, mask, [], options)]

    assert decode() == ["on the"] * 2
    assert decode(bad_endings=["the", "with"]) == ["on thex"] * 2  # "the" is not the last word
    assert decode(bad_endings=["he"]) == ["on the"] * 2  # "he" is only the end of a word


def test_eval_on_a_caption_checkpoint_writes_the_caption_metrics(model, corpus, tmp_path):
    from mmseq.cli import main
    from mmseq.metrics import caption_metrics

    mmseq.save(model, tmp_path / "checkpoint")
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "checkpoint"), str(corpus), "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert isinstance(metrics[name], float), name
    assert metrics["examples"] == len(COLORS)
    rows = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text().splitlines()]
    assert [row["references"] for row in rows] == [captions_of(color) for color in sorted(COLORS)]
    expected = caption_metrics([row["references"] for row in rows], [row["hypothesis"] for row in rows])
    assert metrics["CIDEr"] == pytest.approx(expected["CIDEr"]) and metrics["Bleu_4"] == pytest.approx(expected["Bleu_4"])
