"""Word and segment timestamps of transcripts: where the words of a decoded hypothesis lie in its
audio. (The run loop, :mod:`mmseq.inference.run`, calls :func:`align` on every window it decodes;
:mod:`mmseq.inference.writers` renders the results as SRT, WebVTT or JSON.)

Two ways to place the words of a chosen hypothesis in time:

* ``"ctc"`` (models with a CTC head): forced alignment of the hypothesis's tokens to the CTC
  head's frames (``torchaudio.functional.forced_align``, Viterbi over the CTC lattice); a word
  starts at the first frame of its first token and ends after the last frame of its last token.
  Its confidence is the mean posterior of its aligned frames.
* ``"attention"`` (any model): dynamic time warping over the decoder's cross-attention, teacher
  forced on the hypothesis, as whisper's ``timing.py`` does: the weights of the decoder's
  alignment heads (its config's ``alignment_heads``, such as Whisper's; else every head of the
  upper half of the layers) are normalised per head over tokens, median-filtered over frames and
  averaged; the cheapest monotonic path through their negation gives each token the frame where
  it starts. Confidence: the decoder's mean token probability over the word.

Both place a word by the model's frames (40 ms apart in mmseq's speech encoder, 20 ms in
Whisper's), and a CTC head fires at a token's start, so a word's end comes out early by about its
last sound. ``refine=True`` (the default) then moves each boundary to where the sound is
(:func:`refine_by_energy`): an end forward while the audio stays loud, a start back while it was,
never past the neighbouring word.

Long recordings are split into windows as :mod:`mmseq.inference.longform` does; every window is decoded
and aligned on its own and the run loop shifts its times by its start, so times stay absolute.
"""

from __future__ import annotations

import math
import string
import unicodedata
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from ..tokenizer import cached_word_starts
from .longform import HOP_SECONDS, frame_energy


@dataclass
class Word:
    text: str
    start: float  # seconds from the start of the recording
    end: float
    confidence: float  # 0..1


@dataclass
class Segment:
    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)


@dataclass
class TimedTranscript:
    """What ``model.transcribe(..., timestamps=True)`` returns per input."""

    text: str
    segments: list[Segment]

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words]

    def to_dict(self) -> dict:
        return {"text": self.text, "segments": [asdict(s) for s in self.segments]}


# -- alignment of one window -------------------------------------------------------------------------
def _frame_rate(encoder, frames: int, samples: int) -> float:
    rate = getattr(encoder, "frame_rate", None)
    return float(rate) if rate else frames / (samples / encoder.sample_rate)


def ctc_words(model, log_probs: torch.Tensor, tokens: list[int], frame_rate: float) -> list[Word]:
    """Words of ``tokens`` placed by forced alignment to CTC ``log_probs (frames, vocab)``."""
    import torchaudio.functional as AF

    groups = word_groups(model.tokenizer, tokens)
    if not tokens or not groups:
        return []
    frames = log_probs.shape[0]
    if len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:])) > frames:
        return []  # CTC cannot emit these tokens in so few frames: no alignment exists
    labels, scores = AF.forced_align(log_probs[None].float().cpu(), torch.tensor([tokens]),
                                     blank=model.tokenizer.pad_id)
    spans = AF.merge_tokens(labels[0], scores[0].exp(), blank=model.tokenizer.pad_id)
    words = []
    for text, positions in groups:
        parts = [spans[p] for p in positions]
        confidence = float(np.mean([s.score for s in parts]))
        words.append(Word(text, parts[0].start / frame_rate, parts[-1].end / frame_rate, confidence))
    return words


def word_groups(tokenizer, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """The words of a token sequence, each with the positions of its tokens.

    A token belongs to the word that its text ends in; tokens that are only whitespace (a
    character tokenizer's spaces) belong to no word.

    >>> from mmseq.tokenizer import CharTokenizer
    >>> tokenizer = CharTokenizer(list("a red"))
    >>> word_groups(tokenizer, tokenizer.encode("a red"))
    [('a', [0]), ('red', [2, 3, 4])]
    """
    words = tokenizer.decode(tokens).split()
    groups = [(word, []) for word in words]
    for position in range(len(tokens)):
        if not tokenizer.decode(tokens[position:position + 1]).strip():
            continue
        index = len(tokenizer.decode(tokens[: position + 1]).split()) - 1
        if 0 <= index < len(groups):
            groups[index][1].append(position)
    return [(word, positions) for word, positions in groups if positions]


def alignment_heads(decoder) -> list[tuple[int, int]]:
    """The ``(layer, head)`` pairs whose cross-attention places the words: the decoder config's
    ``alignment_heads`` (a pretrained model's own, such as Whisper's), else every head of the
    upper half of the layers."""
    config = decoder.config
    if config.alignment_heads:
        return [(int(layer), int(head)) for layer, head in config.alignment_heads]
    layers = len(decoder.layers)
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(config.heads)]


def _places_word(text: str) -> bool:
    """Whether a token's text holds more than whitespace and punctuation."""
    return any(not (ch.isspace() or unicodedata.category(ch).startswith("P") or ch in string.punctuation)
               for ch in text)


def word_spans(tokenizer, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """The words of ``tokens``, each with the positions of the tokens that place it in time.

    A word begins at a token the tokenizer marks as a word start
    (:meth:`~mmseq.tokenizer.Tokenizer.word_starts`: Whisper's " Hello", sentencepiece's "▁hello",
    a character tokenizer's space), so punctuation stays with its word (``'"Hello,'``). Its
    punctuation and whitespace tokens do not place it (a pause after "Hello," is the comma's, as
    whisper's timing gives it), unless it has nothing else.

    >>> from mmseq.tokenizer import CharTokenizer
    >>> tokenizer = CharTokenizer(list("a red,"))
    >>> word_spans(tokenizer, tokenizer.encode("a red,"))
    [('a', [0]), ('red,', [2, 3, 4])]
    """
    starts = cached_word_starts(tokenizer)
    groups: list[list[int]] = []
    for position, token in enumerate(tokens):
        if not groups or (0 <= token < len(starts) and starts[token]):
            groups.append([])
        groups[-1].append(position)
    spans = []
    for positions in groups:
        text = tokenizer.decode([tokens[p] for p in positions]).strip()
        pieces = {p: tokenizer.decode([tokens[p]]) for p in positions}
        placing = [p for p in positions if _places_word(pieces[p])] or [p for p in positions if pieces[p].strip()]
        if text and placing:
            spans.append((text, placing))
    return spans


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through ``cost (rows, columns)`` from the top left to the bottom
    right, each move right, down or diagonal: its ``(rows, columns)`` indices in order. Cells of
    one anti-diagonal do not depend on each other, so each is computed in one array operation; on
    a tie the path moves right (as whisper's ``dtw_cpu``)."""
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf)
    total[0, 0] = 0.0
    move = np.zeros((rows + 1, columns + 1), dtype=np.int8)  # 0 diagonal, 1 down, 2 right
    for diagonal in range(2, rows + columns + 1):
        i = np.arange(max(1, diagonal - columns), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        across, down, right = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        chosen = np.where((across < down) & (across < right), 0, np.where((down < across) & (down < right), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(chosen, [across, down, right])
        move[i, j] = chosen
    path = []
    i, j = rows, columns
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = move[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    found = np.array(path[::-1], dtype=np.int64).reshape(-1, 2)
    return found[:, 0], found[:, 1]


def dtw(cost: np.ndarray) -> np.ndarray:
    """The row of every column ``(columns,)`` on :func:`dtw_path` (the last row reached there)."""
    rows, columns = dtw_path(cost)
    row_of = np.zeros(cost.shape[1], dtype=np.int64)
    np.maximum.at(row_of, columns, rows)
    return row_of


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over ``width`` neighbours along the last axis of ``x (heads, tokens, frames)``."""
    if x.shape[-1] <= width // 2:
        return x
    padded = torch.nn.functional.pad(x, (width // 2, width // 2), mode="reflect")
    return padded.unfold(-1, width, 1).median(-1).values


def attention_words(model, memory, memory_mask, prompt: list[int], tokens: list[int],
                    frame_rate: float, context: list[int] = (), frames: int | None = None) -> list[Word]:
    """Words of ``tokens`` placed by dynamic time warping over the decoder's cross-attention (one
    input), teacher forced after the ``context`` segment, ``<s>`` and the ``prompt`` the search
    forced, and followed by ``</s>``, as whisper's ``timing.py`` does.

    The weights of the :func:`alignment_heads` over the first ``frames`` memory frames (the audio's;
    default: the mask's), made a softmax over those frames alone, are normalised per head over the
    positions from ``<s>`` to ``</s>`` (mean and standard deviation), median-filtered over 7
    frames and averaged over heads. The cheapest monotonic path through their negation, over the
    rows that predict each token and then ``</s>``, enters each row at a frame: a word starts where
    the row of its first token is entered and ends where the row after its last token is (tokens
    as :func:`word_spans` places them). Confidence: the decoder's mean probability of those tokens."""
    tokenizer, decoder = model.tokenizer, model.decoder
    spans = word_spans(tokenizer, tokens)
    if not tokens or not spans:
        return []
    sequence = list(context) + [tokenizer.bos_id] + list(prompt) + list(tokens) + [tokenizer.eos_id]
    ids = torch.tensor([sequence], device=memory.device)
    logits, weights = decoder(ids, memory, memory_mask, return_attention=alignment_heads(decoder))
    frames = min(int(memory_mask[0].sum()), frames or memory.shape[1])
    weights = weights[0, :, len(context):, :frames].float()  # (heads, <s> .. </s>, frames)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)  # a softmax over the audio's frames
    deviation, mean = torch.std_mean(weights, dim=1, keepdim=True, correction=0)
    matrix = _median_filter((weights - mean) / deviation.clamp(min=1e-8), 7).mean(0)
    first = len(prompt)  # the row of the prompt's last token (of <s> without one) predicts the first token
    matrix = matrix[first:first + len(tokens) + 1]  # (tokens + 1, frames): the last row predicts </s>
    rows, columns = dtw_path(-matrix.double().cpu().numpy())
    entered = columns[np.concatenate([[True], np.diff(rows) > 0])]  # (tokens + 1,) frame each row is entered
    at = len(context) + first
    token_ids = torch.tensor(tokens, device=logits.device)[:, None]
    probs = logits[0, at:at + len(tokens)].float().log_softmax(-1).gather(1, token_ids)[:, 0].exp().cpu().numpy()
    return [Word(text, float(entered[positions[0]]) / frame_rate, float(entered[positions[-1] + 1]) / frame_rate,
                 float(probs[positions].mean())) for text, positions in spans]


def refine_by_energy(words: list[Word], piece: torch.Tensor, sample_rate: int, quiet: float = 0.3) -> list[Word]:
    """``words`` with boundaries moved to the sound of ``piece (samples,)``: 10 ms frames are loud
    above ``floor + quiet * (loud - floor)`` dB (the 5th and 95th percentiles, as the long-audio
    split reads pauses); an end moves forward through loud frames (back through quiet ones), a start
    back through loud frames (forward through quiet ones), never past the neighbouring word's
    boundary. In speech without pauses the model's own boundary stays."""
    if not words:
        return words
    energy = frame_energy(piece, sample_rate)
    floor, top = torch.quantile(energy, 0.05), torch.quantile(energy, 0.95)
    if float(top - floor) < 6.0:  # no contrast between sound and silence to go by
        return words
    loud = (energy >= floor + quiet * (top - floor)).tolist()
    count = len(loud)
    frame = lambda seconds: min(count - 1, max(0, int(round(seconds / HOP_SECONDS))))  # noqa: E731
    starts = [frame(w.start) for w in words]
    ends = [max(frame(w.end) - 1, s) for w, s in zip(words, starts)]  # last frame inside the word
    refined, previous_end = [], -1
    for i, word in enumerate(words):
        start, end = starts[i], ends[i]
        limit = starts[i + 1] - 1 if i + 1 < len(words) else count - 1
        while end + 1 <= limit and loud[end + 1]:
            end += 1
        while end > start and not loud[end]:
            end -= 1
        while start - 1 > previous_end and loud[start - 1]:
            start -= 1
        while start < end and not loud[start]:
            start += 1
        # A 25 ms frame is loud once the sound is well inside it: the onset is near its last
        # 10 ms, the offset near its first.
        begin = start * HOP_SECONDS + (0.015 if loud[start] and start > previous_end + 1 else 0.0)
        finish = end * HOP_SECONDS + (0.01 if loud[end] else HOP_SECONDS)
        refined.append(Word(word.text, round(min(begin, finish), 3), round(finish, 3), word.confidence))
        previous_end = end
    return refined


def align(model, piece: torch.Tensor, hypothesis, method: str, task, context: list[int] = (),
          refine: bool = True) -> list[Word]:
    """Words of ``hypothesis`` (of ``model.generate``) in the audio ``piece (samples,)`` of
    ``task``, times in seconds from the piece's start. ``method``: "ctc" or "attention";
    ``context``: the context segment the search forced (ids); ``refine``: boundaries moved to the
    sound (:func:`refine_by_energy`)."""
    words = _align(model, piece, hypothesis, method, task, context)
    return refine_by_energy(words, piece, task.encoder.sample_rate) if refine else words


def _align(model, piece, hypothesis, method, task, context) -> list[Word]:
    route = model.route(task.name)
    ctc_head = route.ctc_head
    inputs, lengths = task.collate_inputs([piece])
    with torch.no_grad():
        memory, mask = route.encoder(inputs.to(model.device), lengths.to(model.device))
        frames = int(mask[0].sum())
        rate = _frame_rate(route.encoder, frames, piece.shape[-1])
        if method == "ctc":
            log_probs = model.ctc_log_probs(memory, ctc_head)[0, :frames]
            return ctc_words(model, log_probs, list(hypothesis.tokens), rate)
        # An encoder that pads every input to a fixed window (Whisper's 30 s) has memory past the
        # audio: its words are placed in the audio's frames only.
        audio = max(1, math.ceil(piece.shape[-1] * rate / task.encoder.sample_rate - 1e-6))
        return attention_words(model, memory, mask, list(hypothesis.prompt), list(hypothesis.tokens), rate, context,
                               frames=min(frames, audio))


# -- methods and segments ------------------------------------------------------------------------------------
def check_method(model, method: str, task) -> str:
    """The alignment method for ``task``'s route: "ctc" or "attention" (``"auto"``: "ctc" when the
    route has a CTC head)."""
    has_ctc = model.route(task.name).ctc_head is not None
    if method == "auto":
        return "ctc" if has_ctc else "attention"
    if method not in ("ctc", "attention"):
        raise ConfigError(f"unknown timestamp method {method!r}: use 'auto', 'ctc' or 'attention'")
    if method == "ctc" and not has_ctc:
        raise ConfigError("timestamps by 'ctc' need a model with a CTC head; use 'attention'")
    return method


def segments_of(words: list[Word], max_pause: float = 0.6, max_seconds: float = 7.0,
                max_chars: int = 84) -> list[Segment]:
    """Words grouped into subtitle segments: a new one after a pause of ``max_pause`` seconds, or
    when it would pass ``max_seconds`` or ``max_chars``."""
    segments: list[Segment] = []
    for word in words:
        last = segments[-1] if segments else None
        if (last is None or word.start - last.end >= max_pause or word.end - last.start > max_seconds
                or len(last.text) + 1 + len(word.text) > max_chars):
            segments.append(Segment(word.text, word.start, word.end, [word]))
        else:
            last.text += " " + word.text
            last.end = max(last.end, word.end)
            last.words.append(word)
    return segments
