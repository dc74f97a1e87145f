"""Tokenizers: characters, sentencepiece and Hugging Face ``tokenizers`` files, with special, task
and control tokens.

The tokenizers mmseq trains reserve the same first ids: ``<pad>`` 0 (also the CTC blank), ``<s>``
1, ``</s>`` 2, ``<unk>`` 3, followed by the prompt tokens (task tokens such as ``<|asr|>`` and
control tokens such as ``<|short|>``), then the ordinary vocabulary. A pretrained model's tokenizer
(:class:`BPETokenizer`: Whisper's) keeps its own ids and names its roles instead. A prompt is just
a list of these ids that the decoder is forced through before it generates, as Whisper's
``<|transcribe|>`` is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
import weakref
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, TokenizerError
from .registry import Registry

TOKENIZERS = Registry("tokenizer")

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
TASK_TOKENS = ["<|asr|>", "<|caption|>", "<|text|>"]


class Tokenizer:
    """Shared behaviour; subclasses implement ``_encode`` and ``_decode`` over ordinary tokens.

    ``special_ids``: the ids that are never text (specials and prompt tokens), a range; the search
    never generates them but ``</s>``. ``context_token``: the marker that opens a context segment
    (see :meth:`mmseq.tasks.Task.context_ids`)."""

    kind = "base"
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    context_token = "<|context|>"
    timestamp_begin: int | None = None  # the first timestamp token (``<|0.00|>``): all ids from it on are times
    no_timestamps_id: int | None = None  # the prompt token that asks for no timestamps (``<|notimestamps|>``)

    def __init__(self, prompt_tokens: Iterable[str] = TASK_TOKENS):
        self.prompt_tokens = list(dict.fromkeys(prompt_tokens))
        self.special_tokens = SPECIALS + self.prompt_tokens
        self._special_ids = {token: i for i, token in enumerate(self.special_tokens)}
        self.special_ids = range(len(self.special_tokens))

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_id(self, token: str) -> int:
        """Id of a special or prompt token such as ``"<|asr|>"``."""
        if token not in self._special_ids:
            raise TokenizerError(f"unknown prompt token {token!r}; known: {', '.join(self.prompt_tokens)}")
        return self._special_ids[token]

    def encode(self, text: str) -> list[int]:
        """Text to ordinary token ids (no ``<s>``/``</s>``); unknown symbols become ``<unk>``."""
        if not isinstance(text, str):
            raise TokenizerError(f"expected text, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): sentencepiece would fail deep inside
            raise TokenizerError(f"text holds a lone surrogate (invalid Unicode): {text[:40]!r}") from None
        return self._encode(unicodedata.normalize("NFC", text))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; special and prompt tokens are dropped, decoding stops at ``</s>``."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            if i not in self.special_ids:
                kept.append(i)
        return self._decode(kept)

    def pieces(self) -> list[str]:
        """The string of every id, specials included (what n-gram and language models key on)."""
        return list(self.special_tokens) + [self._decode([i]) for i in range(len(self.special_tokens), self.vocab_size)]

    def word_starts(self) -> list[bool]:
        """For every id: does its piece start a new word (a space or sentencepiece's "▁" first)?"""
        return [i not in self.special_ids and (piece.startswith(("\u2581", " ")) or piece == " ")
                for i, piece in enumerate(self.pieces())]

    def encode_prompt(self, prompt: str | Iterable[str] | None) -> list[int]:
        """A prompt as ids: prompt tokens (``"<|asr|> <|short|>"``) then an optional free text prefix."""
        if prompt is None:
            return []
        words = prompt.split(" ") if isinstance(prompt, str) else list(prompt)
        ids, rest = [], []
        for position, word in enumerate(words):
            if word in self._special_ids and not rest:
                ids.append(self._special_ids[word])
            else:
                rest = words[position:]
                break
        if rest:
            ids += self.encode(" ".join(rest))
        return ids

    def merge_prompt(self, base: list[int], more: list[int]) -> list[int]:
        """A route's prompt ``base`` followed by ``more`` (an example's or a caller's prompt)."""
        return list(base) + list(more)

    def timestamp_prompt(self, prompt: Iterable[int], timestamps: bool) -> list[int]:
        """The prompt ``prompt`` (ids) for decoding with timestamp tokens on or off: on, without the
        "no timestamps" token (Whisper's ``<|notimestamps|>``, see ``no_timestamps_id``); off, as
        given. :class:`TokenizerError` for timestamps on with a tokenizer that has none."""
        if not timestamps:
            return list(prompt)
        if self.timestamp_begin is None:
            raise TokenizerError(f"the {self.kind} tokenizer has no timestamp tokens: decode with timestamp_tokens off")
        return [i for i in prompt if i != self.no_timestamps_id]

    def save(self, folder: str | Path) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError


@TOKENIZERS.register("char")
class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is built from training text."""

    kind = "char"

    def __init__(self, vocab: list[str], prompt_tokens: Iterable[str] = TASK_TOKENS):
        super().__init__(prompt_tokens)
        self.vocab = list(vocab)
        offset = len(self.special_tokens)
        self._ids = {char: offset + i for i, char in enumerate(self.vocab)}

    @classmethod
    def train(cls, texts: Iterable[str], prompt_tokens: Iterable[str] = TASK_TOKENS, **_) -> "CharTokenizer":
        chars = set()
        for text in texts:
            chars.update(unicodedata.normalize("NFC", text))
        return cls(sorted(chars), prompt_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.special_tokens) + len(self.vocab)

    def pieces(self) -> list[str]:
        return list(self.special_tokens) + list(self.vocab)

    def _encode(self, text: str) -> list[int]:
        return [self._ids.get(char, self.unk_id) for char in text]

    def _decode(self, ids: list[int]) -> str:
        offset = len(self.special_tokens)
        return "".join(self.vocab[i - offset] for i in ids)

    def config(self) -> dict:
        return {"type": "char", "vocab": self.vocab, "prompt_tokens": self.prompt_tokens}

    def save(self, folder: str | Path) -> None:
        pass  # the vocabulary lives in config.json


@TOKENIZERS.register("sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """Sentencepiece unigram or BPE subwords, with our special ids reserved inside the model."""

    kind = "sentencepiece"
    file_name = "tokenizer.model"

    def __init__(self, model_file: str | Path, prompt_tokens: Iterable[str] = TASK_TOKENS):
        import sentencepiece

        super().__init__(prompt_tokens)
        self.model_file = str(model_file)
        # The model's bytes are kept, not its path: a checkpoint the tokenizer was loaded from may
        # be deleted (keep-best rotation) while training goes on and saves new ones.
        self.model_proto = read_model_file(model_file)
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        except (OSError, RuntimeError, TypeError) as error:
            raise TokenizerError(f"{model_file}: not a sentencepiece model ({error})") from None
        for token, i in self._special_ids.items():
            if self.processor.piece_to_id(token) != i:
                raise TokenizerError(f"{model_file}: token {token!r} is not at id {i}; train it with mmseq")

    @classmethod
    def train(cls, texts: Iterable[str], prompt_tokens: Iterable[str] = TASK_TOKENS, vocab_size: int = 500,
              model_type: str = "unigram", out: str | Path = "tokenizer.model", **_) -> "SentencePieceTokenizer":
        import sentencepiece

        prompt_tokens = list(dict.fromkeys(prompt_tokens))
        with tempfile.TemporaryDirectory() as tmp:
            corpus = os.path.join(tmp, "text.txt")
            with open(corpus, "w", encoding="utf-8") as file:
                for text in texts:
                    file.write(text.replace("\n", " ") + "\n")
            try:
                sentencepiece.SentencePieceTrainer.train(
                    input=corpus, model_prefix=os.path.join(tmp, "sp"), vocab_size=vocab_size,
                    model_type=model_type, character_coverage=1.0, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                    pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK,
                    # Control symbols, not user-defined ones: text that spells "<|asr|>" stays text (as
                    # with the char tokenizer), so a transcript can never inject a prompt token.
                    control_symbols=prompt_tokens, hard_vocab_limit=False, minloglevel=2,
                )
            except RuntimeError as error:
                # Every character of the text (coverage 1.0) and every special token needs an id.
                needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
                if needed is None:
                    raise
                raise ConfigError(f"tokenizer.vocab_size={vocab_size}: the training text's characters and the "
                                  f"special tokens need at least {needed.group(1)} ids; give a larger vocab_size "
                                  "(or tokenizer.type=char)") from None
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(tmp, "sp.model"), out)
        return cls(out, prompt_tokens)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def pieces(self) -> list[str]:
        return [self.processor.id_to_piece(i) for i in range(self.vocab_size)]

    def _encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def config(self) -> dict:
        return {"type": "sentencepiece", "model_file": self.file_name, "prompt_tokens": self.prompt_tokens}

    def save(self, folder: str | Path) -> None:
        (Path(folder) / self.file_name).write_bytes(self.model_proto)


@TOKENIZERS.register("bpe")
class BPETokenizer(Tokenizer):
    """A pretrained model's tokenizer from a Hugging Face ``tokenizers`` file (``tokenizer.json``,
    byte-level BPE: Whisper's, GPT-2's), keeping the model's own ids.

    ``roles`` name the tokens that play mmseq's parts: ``bos`` (Whisper's
    ``<|startoftranscript|>``), ``eos`` (``<|endoftext|>``), ``pad`` (a token never generated nor
    forced), ``context`` (``<|startofprev|>``, the marker of the previous-text segment) and
    ``no_timestamps`` (``<|notimestamps|>``, dropped from the prompt when timestamp tokens are
    decoded: :meth:`timestamp_prompt`). Every id from ``eos`` on is special: languages, tasks,
    ``<|notimestamps|>``, and the timestamp tokens ``<|0.00|>`` ... (``timestamp_begin`` on), in the
    file or, where it stops short, in the model's vocabulary (``vocab_size``) past its last token.

    ``slots`` group the prompt tokens that set one attribute (``{"language": ["<|en|>", ...],
    "task": ["<|transcribe|>", "<|translate|>"]}``): a prompt's token of a slot replaces the route's
    token of that slot (see :meth:`merge_prompt`), so ``--prompt "<|fr|> <|translate|>"`` turns
    ``<|en|> <|transcribe|> <|notimestamps|>`` into ``<|fr|> <|translate|> <|notimestamps|>``.
    ``prefix_space``: text is encoded with a space before it, as the model writes it after its
    prompt (Whisper's " Hello"); decoding strips it.
    """

    kind = "bpe"
    file_name = "tokenizer.json"
    unk_id = None  # byte-level: every text has tokens

    def __init__(self, model_file: str | Path, roles: dict, vocab_size: int | None = None,
                 slots: dict | None = None, prefix_space: bool = True, timestamp_step: float = 0.02):
        from tokenizers import Tokenizer as HFTokenizer

        self.model_file, self.roles, self.slots = str(model_file), dict(roles), dict(slots or {})
        self.prefix_space, self.timestamp_step = prefix_space, timestamp_step
        self.model_bytes = read_model_file(model_file)
        try:
            self.backend = HFTokenizer.from_str(self.model_bytes.decode("utf-8"))
        except Exception as error:  # tokenizers raises its own Exception type
            raise TokenizerError(f"{model_file}: not a tokenizers file ({_first_line(error)})") from None
        known = self.backend.get_vocab_size()
        self._vocab_size = int(vocab_size or known)
        missing = [name for name in ("bos", "eos", "pad") if name not in self.roles]
        if missing:
            raise TokenizerError(f"tokenizer roles lack {', '.join(missing)} (need bos, eos, pad)")
        ids = {}
        for role, token in self.roles.items():
            ids[role] = self.backend.token_to_id(token)
            if ids[role] is None:
                raise TokenizerError(f"{model_file}: no token {token!r} (the {role} role)")
        self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
        self.context_token = self.roles.get("context", Tokenizer.context_token)
        self.no_timestamps_id = ids.get("no_timestamps")
        self.special_ids = range(self.eos_id, self._vocab_size)
        first = self.backend.token_to_id("<|0.00|>")  # in the file (built from openai-whisper's) or past it
        self.timestamp_begin = first if first is not None else known if self._vocab_size > known else None
        self._special_ids = {self.backend.id_to_token(i): i for i in range(self.eos_id, known)}
        if self.timestamp_begin == known:  # named here, as the file does not name them
            for i in range(self._vocab_size - known):
                self._special_ids[f"<|{i * timestamp_step:.2f}|>"] = known + i
        self.special_tokens = list(self._special_ids)
        self.prompt_tokens = [t for t in self.special_tokens if t not in (self.roles["eos"], self.roles["bos"])]
        for slot, tokens in self.slots.items():
            unknown = [t for t in tokens if t not in self._special_ids]
            if unknown:
                raise TokenizerError(f"tokenizer slot {slot!r} names unknown tokens {unknown[:3]}")
        # id -> its slot, made once: merge_prompt runs for every example read and every search
        self._slot_of = {self._special_ids[t]: slot for slot, tokens in self.slots.items() for t in tokens}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def pieces(self) -> list[str]:
        ids = range(self.backend.get_vocab_size())
        return [self.backend.id_to_token(i) for i in ids] + self.special_tokens[len(ids) - self.eos_id:]

    def word_starts(self) -> list[bool]:
        # Byte-level BPE spells a leading space "Ġ"
        return [i not in self.special_ids and piece.startswith("\u0120") for i, piece in enumerate(self.pieces())]

    def _encode(self, text: str) -> list[int]:
        if self.prefix_space and text and not text.startswith(" "):
            text = " " + text
        return self.backend.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True).strip()

    def merge_prompt(self, base: list[int], more: list[int]) -> list[int]:
        slot_of = self._slot_of
        merged = list(base)
        rest = []
        for i in more:
            slot = slot_of.get(i)
            places = [p for p, j in enumerate(merged) if slot is not None and slot_of.get(j) == slot]
            if places:
                merged[places[0]] = i
            else:
                rest.append(i)
        return merged + rest

    def config(self) -> dict:
        return {"type": "bpe", "model_file": self.file_name, "roles": self.roles, "vocab_size": self._vocab_size,
                "slots": self.slots, "prefix_space": self.prefix_space, "timestamp_step": self.timestamp_step}

    def save(self, folder: str | Path) -> None:
        (Path(folder) / self.file_name).write_bytes(self.model_bytes)


_WORD_STARTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cached_word_starts(tokenizer: Tokenizer) -> list[bool]:
    """``tokenizer.word_starts()``, computed once per tokenizer (a pass over its whole vocabulary)."""
    starts = _WORD_STARTS.get(tokenizer)
    if starts is None:
        starts = _WORD_STARTS[tokenizer] = tokenizer.word_starts()
    return starts


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


MAX_MODEL_BYTES = 64 * 2**20  # sentencepiece models of 100k pieces are a few MB


def read_model_file(path: str | Path) -> bytes:
    """The bytes of a tokenizer model file; a :class:`TokenizerError` for a missing file, one that is
    not a regular file (a FIFO would block, a device never end) or one larger than any real model."""
    from .data.files import read_regular_file

    return read_regular_file(path, MAX_MODEL_BYTES, "tokenizer model", TokenizerError)


def build_tokenizer(config: dict, folder: str | Path | None = None) -> Tokenizer:
    """Rebuild a tokenizer from its ``config()`` (files are looked up in ``folder``)."""
    config = dict(config)
    kind = config.pop("type")
    if kind in ("sentencepiece", "bpe"):
        name = config.get("model_file", TOKENIZERS.get(kind).file_name)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            # A checkpoint's tokenizer lives in its own folder: never read /dev/zero or ../../x for it.
            raise TokenizerError(f"tokenizer model_file must be a file name inside the checkpoint folder, got {name!r}")
        config["model_file"] = Path(folder or ".") / name
    return TOKENIZERS.create(kind, **config)


def train_tokenizer(kind: str, texts: Iterable[str], **settings) -> Tokenizer:
    """Train a tokenizer of a registered kind from texts, e.g. ``train_tokenizer("char", texts)``."""
    return TOKENIZERS.get(kind).train(texts, **settings)

