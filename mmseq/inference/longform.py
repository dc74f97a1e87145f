"""Long audio: split a recording into windows the model can decode, then join their texts.

Split points come from pauses: stretches of low energy (``split="energy"``), or of CTC blanks
between words (``split="ctc"``, for models with a CTC head; robust to steady noise). A window
spans the sound between two pauses with a little of their silence, so no word is cut and the
texts of neighbouring windows join end to end; long silences are not decoded (models trained on
trimmed utterances misread them, and some hallucinate). Where no pause falls inside the allowed
window length (fast, continuous speech), the window is cut at its quietest moment and the next one
starts ``overlap`` seconds earlier; the words the two texts share in that overlap are aligned and
kept once.

The pieces here are pure functions of the waveform (and of per-window texts), so the splitting and
joining can be tested without a model; the run loop (:mod:`mmseq.inference.run`) puts them around a
model's batched decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import math

import torch

from ..errors import ConfigError

HOP_SECONDS = 0.01  # analysis frame hop: cut points are placed to 10 ms
MIN_WINDOW = 0.1  # shortest window (s): ten analysis frames, room for a cut, shorter than any word


@dataclass
class LongformOptions:
    window: float = 30.0  # longest window in seconds; longer recordings are split
    split: str = "energy"  # how pauses are found: "energy" or "ctc"
    min_pause: float = 0.2  # shortest pause (seconds) that makes a clean cut
    overlap: float = 2.0  # overlap (seconds) of windows cut inside speech, where no pause was found
    quiet: float = 0.3  # energy split: a frame is quiet below floor + quiet * (loud - floor) in dB
    segment_pause: float | None = None  # pauses this long (s) always end a window: one sentence each,
    #   for models trained on single sentences (None: windows as long as allowed)
    silence_before: float = 0.1  # silence (s) kept before the sound of a window (at most half the pause)
    silence_after: float = 0.1  # and after it: match the utterances the model was trained on

    def __post_init__(self):
        # A window of less than a few analysis frames has nowhere to cut (it ended in an IndexError).
        if not (isinstance(self.window, (int, float)) and math.isfinite(self.window) and self.window >= MIN_WINDOW):
            raise ConfigError(f"window={self.window!r}: must be a number of seconds, at least {MIN_WINDOW}")


def fit_window(options: LongformOptions, encoder) -> LongformOptions:
    """``options`` with windows no longer than ``encoder`` takes: an encoder with a fixed input
    window (``window_samples`` at its ``sample_rate``, Whisper's 30 s) caps ``options.window``."""
    samples, rate = getattr(encoder, "window_samples", None), getattr(encoder, "sample_rate", None)
    if not samples or not rate or options.window <= samples / rate:
        return options
    return replace(options, window=samples / rate)


@dataclass
class Window:
    start: int  # first sample
    end: int  # one past the last sample
    joins_previous: str = "start"  # how it joins the window before: "start", "pause" or "overlap"


# -- pauses ------------------------------------------------------------------------------------------
def frame_energy(waveform: torch.Tensor, sample_rate: int, hop: float = HOP_SECONDS) -> torch.Tensor:
    """Energy in dB of 25 ms frames every ``hop`` seconds ``(frames,)``; frame ``i`` starts at
    sample ``i * hop * sample_rate``."""
    step, size = int(round(hop * sample_rate)), int(round(0.025 * sample_rate))
    padded = torch.nn.functional.pad(waveform.float(), (0, size))
    frames = padded.unfold(0, size, step)[: max(1, -(-len(waveform) // step))]
    return 10 * torch.log10(frames.pow(2).mean(1) + 1e-10)


def quiet_runs(quiet: torch.Tensor, min_frames: int) -> list[tuple[int, int]]:
    """Runs ``(start, end)`` (end exclusive) of at least ``min_frames`` True frames of ``quiet``."""
    edges = torch.diff(torch.cat([torch.tensor([0]), quiet.int(), torch.tensor([0])])).tolist()
    starts = [i for i, d in enumerate(edges) if d == 1]
    ends = [i for i, d in enumerate(edges) if d == -1]
    return [(s, e) for s, e in zip(starts, ends) if e - s >= min_frames]


def energy_pauses(waveform: torch.Tensor, sample_rate: int, options: LongformOptions) -> tuple[list, torch.Tensor]:
    """Pauses ``[(start, end)]`` in 10 ms frames, and the frame energies in dB."""
    energy = frame_energy(waveform, sample_rate)
    floor, loud = torch.quantile(energy, 0.05), torch.quantile(energy, 0.95)
    quiet = energy < floor + options.quiet * (loud - floor)
    return quiet_runs(quiet, max(1, round(options.min_pause / HOP_SECONDS))), energy


@torch.no_grad()
def ctc_pauses(model, waveform: torch.Tensor, options: LongformOptions,
               task: str | None = None) -> tuple[list, torch.Tensor]:
    """Pauses from the CTC head: runs of blank frames at least ``options.min_pause`` long, or
    0.1 s long between two words.

    The recording is encoded in pieces of ``options.window`` seconds; returns pauses in 10 ms
    frames and a per-frame cost (blank log-probability, negated) for forced cuts.
    """
    route, tokenizer = model.route(task, "asr"), model.tokenizer
    if route.ctc_head is None:
        raise ConfigError(f"split='ctc' needs a CTC head, and task {route.name!r} has none; use split='energy'")
    sample_rate = route.encoder.sample_rate
    piece = int(options.window * sample_rate)
    paths, blank_log_probs = [], []
    for start in range(0, len(waveform), piece):
        part = waveform[start:start + piece].to(model.device)
        memory, mask = route.encoder(part[None], torch.tensor([len(part)], device=model.device))
        log_probs = model.ctc_log_probs(memory, route.ctc_head)[0, : int(mask.sum())]
        paths.append(log_probs.argmax(-1).cpu())
        blank_log_probs.append(log_probs[:, tokenizer.pad_id].cpu())
    path, blank_log_prob = torch.cat(paths), torch.cat(blank_log_probs)
    # Word boundaries: blanks after a space character (the blanks before it are still the word's
    # tail), or before a sentencepiece piece that starts a word ("▁...").
    vocabulary = [tokenizer.decode([i]) if i not in tokenizer.special_ids else "" for i in range(tokenizer.vocab_size)]
    ends_word = [text.endswith(" ") for text in vocabulary]
    starts_word = [piece.startswith("▁") for piece in tokenizer.pieces()]
    frames_per_second = len(path) / (len(waveform) / sample_rate)
    to_hop = 1.0 / (frames_per_second * HOP_SECONDS)
    blank = path == tokenizer.pad_id
    runs = quiet_runs(blank, 1)
    pauses = []
    labels = path.tolist()
    for start, end in runs:
        before = labels[start - 1] if start > 0 else None
        after = labels[end] if end < len(labels) else None
        seconds = (end - start) * to_hop * HOP_SECONDS
        between_words = before is None or after is None or ends_word[before] or starts_word[after]
        # A long run is a pause wherever it is (a sentence's end emits no space); a short one must
        # lie between two words.
        if seconds >= options.min_pause or (between_words and seconds >= min(options.min_pause, 0.1)):
            pauses.append((int(start * to_hop), int(end * to_hop)))
    hops = -(-len(waveform) // int(round(HOP_SECONDS * sample_rate)))
    cost = -blank_log_prob[(torch.arange(hops) / to_hop).long().clamp(max=len(path) - 1)]
    return pauses, cost


# -- windows -----------------------------------------------------------------------------------------
def plan_windows(total: int, pauses: list[tuple[int, int]], cost: torch.Tensor, sample_rate: int,
                 options: LongformOptions) -> list[Window]:
    """Windows of at most ``options.window`` seconds over ``total`` samples.

    ``pauses``: ``(start, end)`` in 10 ms frames; ``cost``: per-frame loudness used to place a cut
    where no pause fits (lower is quieter). A window spans the sound between two pauses, with
    ``options.silence_before`` and ``options.silence_after`` of their silence (each at most half
    the pause). It is as long as allowed, ending at the latest pause that fits; with
    ``options.segment_pause``, the first pause at least that long ends it sooner. Silence beyond
    that, at the ends of the recording too, is not decoded.
    """
    hop = int(round(HOP_SECONDS * sample_rate))
    frames = -(-total // hop)
    longest = max(1, int(options.window / HOP_SECONDS))
    overlap = min(int(options.overlap / HOP_SECONDS), longest // 2)
    segment = int(options.segment_pause / HOP_SECONDS) if options.segment_pause is not None else None

    def before(pause):  # frames of the pause kept at the start of the window after it
        return min(int(options.silence_before / HOP_SECONDS), (pause[1] - pause[0]) // 2)

    def after(pause):  # and at the end of the window before it
        return min(int(options.silence_after / HOP_SECONDS), (pause[1] - pause[0]) // 2)

    start, end = 0, frames
    inner = []
    for pause in pauses:
        if pause[0] <= 0:
            start = pause[1] - before(pause)  # leading silence
        elif pause[1] >= frames:
            end = pause[0] + after(pause)  # trailing silence
        else:
            inner.append(pause)
    windows, join = [], "start"
    while True:
        fitting = [p for p in inner if p[0] > start and p[0] + after(p) <= start + longest]
        breaks = [p for p in fitting if segment is not None and p[1] - p[0] >= segment]
        if not breaks and end - start <= longest:
            break
        if fitting:
            pause = breaks[0] if breaks else max(fitting, key=lambda p: p[0])
            windows.append(Window(start * hop, (pause[0] + after(pause)) * hop, join))
            start, join = pause[1] - before(pause), "pause"
            continue
        # No pause: cut at the quietest frame of the window's last quarter, overlap the next one.
        low = start + max(overlap + 1, 3 * longest // 4)
        cut = low + int(cost[low:start + longest].argmin())
        windows.append(Window(start * hop, min(total, cut * hop), join))
        start, join = cut - overlap, "overlap"
    windows.append(Window(start * hop, min(total, end * hop), join))
    return windows


def split_audio(waveform: torch.Tensor, sample_rate: int, options: LongformOptions, model=None,
                task: str | None = None) -> list[Window]:
    """Windows of a recording ``(samples,)``: one window when it is short enough. ``split="ctc"``
    uses the CTC head of ``model``'s route ``task`` (default: its speech route); that route's
    encoder caps the window length (:func:`fit_window`)."""
    if model is not None:
        options = fit_window(options, model.route(task, "asr").encoder)
    if len(waveform) <= options.window * sample_rate:
        return [Window(0, len(waveform))]
    if options.split == "energy":
        pauses, cost = energy_pauses(waveform, sample_rate, options)
    elif options.split == "ctc":
        if model is None:
            raise ConfigError("split='ctc' needs a model with a CTC head; use split='energy'")
        pauses, cost = ctc_pauses(model, waveform, options, task)
    else:
        raise ConfigError(f"unknown long-audio split {options.split!r}: use 'energy' or 'ctc'")
    return plan_windows(len(waveform), pauses, cost, sample_rate, options)


# -- joining -----------------------------------------------------------------------------------------
def merge_overlap(left: list[str], right: list[str]) -> list[str]:
    """Words of two texts whose ends overlap in time, kept once.

    Every overlap length is tried; the one whose aligned words agree most (by count, then by
    share, so that one coincidental word does not outweigh a real overlap) wins, and the texts are
    joined at its middle, where both windows heard the words whole (a word cut by a window's edge
    is garbled at that edge). Without any agreement the texts are simply put together.
    """
    best, best_score = 0, (0, 0.0)
    for size in range(1, min(len(left), len(right)) + 1):
        matches = sum(a == b for a, b in zip(left[-size:], right[:size]))
        score = (matches, matches / size)
        if matches and score > best_score:
            best, best_score = size, score
    if not best:
        return left + right
    return left[: len(left) - best + best // 2] + right[best // 2:]


def join_texts(texts: list[str], windows: list[Window]) -> str:
    """One text from the texts of consecutive windows."""
    if len(texts) == 1:
        return texts[0]
    words: list[str] = []
    for text, window in zip(texts, windows):
        new = text.split()
        words = merge_overlap(words, new) if window.joins_previous == "overlap" else words + new
    return " ".join(words)


# -- decoding ----------------------------------------------------------------------------------------
def continuation_prompt(tokenizer, prompt) -> list[int]:
    """The prompt of every window after the first: its task and control tokens, not its text
    prefix (which the first window's text already starts with)."""
    ids = tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt or [])
    return [i for i in ids if i in tokenizer.special_ids]


def decode_windows(recordings: list, plans: list[list[Window]], prompts: list, later_prompts: list, decode,
                   contexts: list | None = None, previous_text: bool = False, join=join_texts,
                   boosts: list | None = None) -> list:
    """One result per recording, from ``decode(pieces, prompts, contexts) -> outputs`` (texts, or
    records with a ``.text``): the first window of recording ``i`` with ``prompts[i]``, its later
    windows with ``later_prompts[i]``, each with the recording's context ``contexts[i]`` (and, when
    ``boosts`` is given, its words to boost ``boosts[i]``, a fourth argument of ``decode``); then
    ``join(outputs, windows)`` makes each recording's result (default: its texts joined). A
    recording of one window is passed whole (it may be any input, an image too).

    Every window goes to one call, unless ``previous_text``: then the windows are decoded in rounds
    (the k-th window of every recording in round k, batched together), each later window with the
    text of the window before as its context, as Whisper conditions on its previous text."""
    contexts = contexts or [None] * len(recordings)

    def piece(i, k):
        return recordings[i] if len(plans[i]) == 1 else recordings[i][plans[i][k].start:plans[i][k].end]

    def context(i, j):
        if not previous_text or j == 0:
            return contexts[i]
        before = outputs[i][j - 1]
        return before if isinstance(before, str) else before.text

    outputs = [[None] * len(plan) for plan in plans]
    rounds = max(map(len, plans), default=0) if previous_text else 1
    for k in range(rounds):
        jobs = [(i, j) for i, plan in enumerate(plans) for j in range(len(plan)) if not previous_text or j == k]
        if not jobs:
            continue
        extra = [] if boosts is None else [[boosts[i] for i, _ in jobs]]
        got = decode([piece(i, j) for i, j in jobs], [prompts[i] if j == 0 else later_prompts[i] for i, j in jobs],
                     [context(i, j) for i, j in jobs], *extra)
        for (i, j), output in zip(jobs, got):
            outputs[i][j] = output
    return [join(outputs[i], plan) for i, plan in enumerate(plans)]
