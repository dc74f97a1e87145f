"""Word and segment timestamps of transcripts, and SRT / WebVTT / JSON writers.

Two ways to place the words of a chosen hypothesis in time:

* ``"ctc"`` (models with a CTC head): forced alignment of the hypothesis's tokens to the CTC
  head's frames (``torchaudio.functional.forced_align``, Viterbi over the CTC lattice); a word
  starts at the first frame of its first token and ends after the last frame of its last token.
  Its confidence is the mean posterior of its aligned frames.
* ``"attention"`` (any model): dynamic time warping over the decoder's cross-attention, teacher
  forced on the hypothesis, as whisper's ``timing.py`` does: the weights of the heads of the upper
  half of the layers are normalised per head over tokens, median-filtered over frames and
  averaged; the cheapest monotonic path through their negation gives each token its frames.
  Confidence: the decoder's mean token probability over the word.

Both place a word by the model's frames (40 ms apart after subsampling), and a CTC head fires at
a token's start, so a word's end comes out early by about its last sound. ``refine=True`` (the
default) then moves each boundary to where the sound is (:func:`refine_by_energy`): an end forward
while the audio stays loud, a start back while it was, never past the neighbouring word.

Long recordings are split into windows as :mod:`mmseq.longform` does; every window is decoded
and aligned on its own and its times are shifted by its start, so times stay absolute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import ConfigError, InputError
from .longform import HOP_SECONDS, LongformOptions, Window, continuation_prompt, frame_energy, split_audio
from .plots import word_groups


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


def _cross_attention(model, memory, memory_mask, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-attention of every head of the upper half of the decoder's layers
    ``(heads, positions, frames)`` for one input, and the decoder's log-probabilities
    ``(positions, vocab)``. Queries are caught with hooks, so the decoder itself is unchanged."""
    decoder = model.decoder
    layers = list(decoder.layers)[len(decoder.layers) // 2:]
    queries = []
    hooks = [layer.cross_q.register_forward_hook(lambda module, args, out: queries.append(out)) for layer in layers]
    try:
        logits = decoder(ids, memory, memory_mask)
    finally:
        for hook in hooks:
            hook.remove()
    memory = decoder.memory_proj(memory)
    weights = []
    for layer, q in zip(layers, queries):
        keys = layer.memory_kv(memory)[0]  # (1, heads, frames, head_dim)
        q = q.view(1, q.shape[1], layer.heads, -1).transpose(1, 2)  # (1, heads, positions, head_dim)
        scores = (q @ keys.transpose(-1, -2)) / q.shape[-1] ** 0.5
        weights.append(scores.masked_fill(~memory_mask[:, None, None, :], float("-inf")).softmax(-1)[0])
    return torch.cat(weights), logits[0].float().log_softmax(-1)


def dtw(cost: np.ndarray) -> np.ndarray:
    """Cheapest monotonic path through ``cost (rows, columns)`` from the top left to the bottom
    right, moving right, down or diagonally; returns the row of every column ``(columns,)``
    (the last row reached there)."""
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, rows + 1):
        for j in range(1, columns + 1):
            total[i, j] = cost[i - 1, j - 1] + min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
    row_of = np.zeros(columns, dtype=np.int64)
    i, j = rows, columns
    while i > 0 and j > 0:
        row_of[j - 1] = max(row_of[j - 1], i - 1)
        step = np.argmin([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]])
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return row_of


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over ``width`` neighbours along the last axis of ``x (heads, tokens, frames)``."""
    if x.shape[-1] <= width // 2:
        return x
    padded = torch.nn.functional.pad(x, (width // 2, width // 2), mode="reflect")
    return padded.unfold(-1, width, 1).median(-1).values


def attention_words(model, memory, memory_mask, prompt: list[int], tokens: list[int],
                    frame_rate: float, context: list[int] = ()) -> list[Word]:
    """Words of ``tokens`` placed by DTW over the decoder's cross-attention (one input), teacher
    forced after the ``context`` segment, ``<s>`` and ``prompt`` the search forced."""
    groups = word_groups(model.tokenizer, tokens)
    if not tokens or not groups:
        return []
    tokenizer = model.tokenizer
    sequence = list(context) + [tokenizer.bos_id] + list(prompt) + list(tokens) + [tokenizer.eos_id]
    ids = torch.tensor([sequence[:-1]], device=memory.device)
    weights, log_probs = _cross_attention(model, memory, memory_mask, ids)
    first = len(context) + len(prompt)  # position p predicts token p + 1: the tokens follow the prefix
    frames = int(memory_mask[0].sum())
    weights = weights[:, first:first + len(tokens), :frames].float()  # (heads, tokens, frames)
    weights = (weights - weights.mean(1, keepdim=True)) / weights.std(1, keepdim=True).clamp(min=1e-6)
    matrix = _median_filter(weights, 7).mean(0).cpu().numpy()
    row_of = dtw(-matrix.astype(np.float64))
    token_log_probs = log_probs[first:first + len(tokens)].gather(1, torch.tensor(tokens, device=log_probs.device)[:, None])
    probs = token_log_probs[:, 0].exp().cpu().numpy()
    words = []
    for text, positions in groups:
        columns = np.nonzero((row_of >= positions[0]) & (row_of <= positions[-1]))[0]
        start, end = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 0)
        words.append(Word(text, start / frame_rate, end / frame_rate, float(probs[positions].mean())))
    return words


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
        return attention_words(model, memory, mask, list(hypothesis.prompt), list(hypothesis.tokens), rate, context)


def _decode_pieces(model, task, pieces: list, prompts: list, batch_size: int, **options) -> list:
    """Best hypothesis of each piece; pieces with the same prompt share batches."""
    hyps: list = [None] * len(pieces)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    for members in groups.values():
        for begin in range(0, len(members), batch_size):
            part = members[begin:begin + batch_size]
            inputs, lengths = task.collate_inputs([pieces[i] for i in part])
            got = model.generate({"inputs": inputs, "lengths": lengths, "task": task.name}, prompt=prompts[part[0]],
                                 **options)
            for i, h in zip(part, got):
                hyps[i] = h[0]
    return hyps


# -- recordings ------------------------------------------------------------------------------------
def _method(model, method: str, task) -> str:
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


def timed_transcripts(model, sources, batch_size: int = 16, method: str = "auto", prompt=None,
                      longform: LongformOptions | None = None, task: str | None = None,
                      errors: str = "raise", refine: bool = True, **options) -> list:
    """A :class:`TimedTranscript` per audio source (file or waveform), in input order.

    Every window of a long recording is decoded (in batches of ``batch_size``) and aligned on its
    own, its words shifted by the window's start; where a window overlaps the one before it (cut
    inside speech), words that start before the previous window's last word ended are dropped.
    ``errors="report"`` puts an unreadable input's :class:`InputError` in its place; otherwise one
    raises after the others were done. ``refine``: word boundaries moved to the sound
    (:func:`refine_by_energy`). ``options`` go to ``model.generate``.
    """
    task_ = model.route(task, "asr").task
    method = _method(model, method, task_)
    longform = longform or LongformOptions()
    rate = task_.encoder.sample_rate
    later = continuation_prompt(model.tokenizer, prompt)
    context = task_.context_ids(options.get("context"))  # one context (str or words) for every window
    results: list = []
    for source in sources:
        try:
            x = task_.load_input(source)
        except InputError as error:
            if errors != "report":
                raise
            results.append(error)
            continue
        plan = split_audio(x, rate, longform, model) if len(x) > longform.window * rate else [Window(0, len(x))]
        pieces = [x[w.start:w.end] for w in plan]
        prompts = [prompt] + [later] * (len(pieces) - 1)
        hyps = _decode_pieces(model, task_, pieces, prompts, batch_size, **options)
        words: list[Word] = []
        for window, piece, hyp in zip(plan, pieces, hyps):
            offset = window.start / rate
            found = [Word(w.text, round(w.start + offset, 3), round(w.end + offset, 3), round(w.confidence, 4))
                     for w in align(model, piece, hyp, method, task_, context, refine)]
            if window.joins_previous == "overlap" and words:
                found = [w for w in found if w.start >= words[-1].end]
            words.extend(found)
        text = " ".join(w.text for w in words) if words else ""
        results.append(TimedTranscript(text, segments_of(words)))
    return results


# -- writers ---------------------------------------------------------------------------------------
def _clock(seconds: float, separator: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[Segment]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                   for i, s in enumerate(segments, 1))


def to_vtt(segments: list[Segment]) -> str:
    """WebVTT: a ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n"
                                  for s in segments)


def to_json(transcript: TimedTranscript, source=None) -> str:
    """One JSON line: ``{"audio", "text", "segments": [{"text", "start", "end", "words": [...]}]}``."""
    record = {"audio": str(source)} if source is not None else {}
    return json.dumps({**record, **transcript.to_dict()}, ensure_ascii=False)


WRITERS = {"srt": to_srt, "vtt": to_vtt}


def render(transcript: TimedTranscript, fmt: str, source=None) -> str:
    """``transcript`` as ``fmt``: "json", "srt" or "vtt"."""
    if fmt == "json":
        return to_json(transcript, source) + "\n"
    return WRITERS[fmt](transcript.segments)


def write_timed(model, inputs: list[str], fmt: str, batch_size: int = 16, **options) -> int:
    """``mmseq transcribe --timestamps FMT``: JSON lines on stdout; SRT or VTT on stdout for one
    input, else written beside each input as ``INPUT.srt`` / ``.vtt`` (paths on stderr). An
    unreadable input is reported on stderr and the others are still written; returns the exit code."""
    import sys
    from pathlib import Path

    results = timed_transcripts(model, inputs, batch_size, errors="report", **options)
    failures = 0
    for source, result in zip(inputs, results):
        if isinstance(result, InputError):
            print(f"mmseq: error: {result}", file=sys.stderr)
            failures += 1
        elif fmt == "json" or len(inputs) == 1:
            sys.stdout.write(render(result, fmt, source))
        else:
            path = Path(source).with_suffix(f".{fmt}")
            path.write_text(render(result, fmt), encoding="utf-8")
            print(f"{source}: {path}", file=sys.stderr)
    return 1 if failures else 0
