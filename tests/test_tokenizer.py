"""Tokenizers: round trips, fixed special ids, unknown symbols, prompts, save and rebuild."""

import json
import shutil

import pytest

from mmseq.errors import TokenizerError
from mmseq.tokenizer import (CharTokenizer, SentencePieceTokenizer, TASK_TOKENS, build_tokenizer,
                             train_tokenizer)

PROMPTS = TASK_TOKENS + ["<|short|>", "<|long|>"]


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    from conftest import sentences

    out = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    return SentencePieceTokenizer.train(sentences(200), prompt_tokens=PROMPTS, vocab_size=60, out=out)


@pytest.fixture
def char(texts):
    return CharTokenizer.train(texts, prompt_tokens=PROMPTS)


def test_char_round_trip_and_ids(char, texts):
    for text in texts[:50]:
        ids = char.encode(text)
        assert len(ids) == len(text)
        assert min(ids) >= len(char.special_tokens)
        assert char.decode(ids) == text
    assert char.vocab_size == 4 + len(PROMPTS) + len(set("".join(texts)))


def test_sentencepiece_round_trip(sentencepiece_tokenizer, texts):
    tokenizer = sentencepiece_tokenizer
    assert 40 <= tokenizer.vocab_size <= 80
    for text in texts[:50]:
        ids = tokenizer.encode(text)
        assert min(ids) >= len(tokenizer.special_tokens)
        assert tokenizer.decode(ids) == text
    # Subwords: fewer tokens than characters on the training text.
    assert sum(len(tokenizer.encode(t)) for t in texts) < sum(len(t) for t in texts)


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_special_ids_are_fixed(kind, char, sentencepiece_tokenizer):
    tokenizer = char if kind == "char" else sentencepiece_tokenizer
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.special_tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    for offset, token in enumerate(PROMPTS):
        assert tokenizer.token_id(token) == 4 + offset
    if kind == "sentencepiece":
        processor = tokenizer.processor
        assert [processor.id_to_piece(i) for i in range(4 + len(PROMPTS))] == tokenizer.special_tokens
    with pytest.raises(TokenizerError, match="<|nope|>"):
        tokenizer.token_id("<|nope|>")


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_unknown_symbols_become_unk(kind, char, sentencepiece_tokenizer):
    tokenizer = char if kind == "char" else sentencepiece_tokenizer
    ids = tokenizer.encode("cat \u4e2d dog")
    assert tokenizer.unk_id in ids
    assert tokenizer.encode("cat") == tokenizer.encode("cat")  # known text has no unk
    assert tokenizer.unk_id not in tokenizer.encode("the big dog")
    if kind == "char":
        assert ids == tokenizer.encode("cat ") + [tokenizer.unk_id] + tokenizer.encode(" dog")


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_prompt_tokens_in_text_are_not_special(kind, char, sentencepiece_tokenizer):
    # A prompt token spelled inside ordinary text is text, not the special id: a transcript can
    # never inject a control token.
    tokenizer = char if kind == "char" else sentencepiece_tokenizer
    ids = tokenizer.encode("the <|asr|> cat <|short|>")
    assert not set(ids) & set(range(4, len(tokenizer.special_tokens)))


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_encode_prompt(kind, char, sentencepiece_tokenizer):
    tokenizer = char if kind == "char" else sentencepiece_tokenizer
    asr, short = tokenizer.token_id("<|asr|>"), tokenizer.token_id("<|short|>")
    assert tokenizer.encode_prompt(None) == []
    assert tokenizer.encode_prompt("<|asr|> <|short|>") == [asr, short]
    assert tokenizer.encode_prompt(["<|asr|>", "<|short|>"]) == [asr, short]
    assert tokenizer.encode_prompt("<|short|> the big") == [short] + tokenizer.encode("the big")
    assert tokenizer.encode_prompt("the big") == tokenizer.encode("the big")
    # Control tokens only count at the start: later, they are text.
    assert tokenizer.encode_prompt("the <|short|>") == tokenizer.encode("the <|short|>")


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_decode_drops_specials_and_stops_at_eos(kind, char, sentencepiece_tokenizer):
    tokenizer = char if kind == "char" else sentencepiece_tokenizer
    body = tokenizer.encode("red cat")
    ids = [tokenizer.bos_id, tokenizer.token_id("<|asr|>")] + body + [tokenizer.eos_id] + tokenizer.encode("dog")
    assert tokenizer.decode(ids) == "red cat"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(TokenizerError):
        tokenizer.encode(["not", "text"])


def test_char_save_and_rebuild(char, tmp_path, texts):
    (tmp_path / "tokenizer.json").write_text(json.dumps(char.config()))
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    rebuilt = build_tokenizer(config, tmp_path)
    assert isinstance(rebuilt, CharTokenizer)
    assert rebuilt.special_tokens == char.special_tokens and rebuilt.vocab_size == char.vocab_size
    assert all(rebuilt.encode(t) == char.encode(t) for t in texts[:20])


def test_sentencepiece_save_copies_the_model_file(sentencepiece_tokenizer, tmp_path, texts):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    sentencepiece_tokenizer.save(folder)
    assert (folder / "tokenizer.model").is_file()
    config = json.loads(json.dumps(sentencepiece_tokenizer.config()))
    assert config["model_file"] == "tokenizer.model"  # relative: the folder can move
    moved = tmp_path / "moved"
    shutil.move(folder, moved)
    rebuilt = build_tokenizer(config, moved)
    assert isinstance(rebuilt, SentencePieceTokenizer)
    assert rebuilt.special_tokens == sentencepiece_tokenizer.special_tokens
    assert all(rebuilt.encode(t) == sentencepiece_tokenizer.encode(t) for t in texts[:20])
    # Saving into the folder it was loaded from is a no-op, not an error.
    rebuilt.save(moved)


def test_sentencepiece_rejects_foreign_models(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        SentencePieceTokenizer(bad)


def test_train_tokenizer_by_name(texts):
    tokenizer = train_tokenizer("char", texts[:10])
    assert isinstance(tokenizer, CharTokenizer)
    assert tokenizer.prompt_tokens == TASK_TOKENS
