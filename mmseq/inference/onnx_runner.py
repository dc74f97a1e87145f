"""Greedy and beam search over graphs written by ``mmseq export --format onnx``, with onnxruntime
and numpy only (no torch), as :mod:`mmseq.decoding.search` decodes in PyTorch.

>>> from mmseq.inference.onnx_runner import OnnxModel
>>> model = OnnxModel("exp/synth_speech/onnx")
>>> model.transcribe(["a.wav"], beam_size=4)

The search follows :func:`mmseq.decoding.search.greedy_search` and :func:`mmseq.decoding.search.beam_search` step
for step (same filters, same pool of finished hypotheses, same stopping rules and scores), so it
finds the same hypotheses up to the last bits of float arithmetic. Supported options:
``beam_size``, ``max_length``, ``max_length_ratio``, ``min_length``, ``length_penalty``,
``length_bonus``, ``nbest``, ``early_stopping``, ``suppress_tokens`` and ``suppress_at_start`` (ids
never generated, and never first: Whisper's). Decoding is attention-only: the CTC prefix scorer,
language-model fusion, ``no_repeat_ngram`` and ``bad_endings`` are not part of the export (a
checkpoint whose default ``ctc_weight`` is above 0 is decoded with 0 here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError, InputError

NEG_INF = np.float32(-np.inf)
SUPPORTED = ("beam_size", "max_length", "max_length_ratio", "min_length", "length_penalty", "length_bonus",
             "nbest", "early_stopping", "suppress_tokens", "suppress_at_start")


@dataclass
class OnnxHypothesis:
    tokens: list[int]  # generated ids, prompt and </s> excluded
    score: float  # (log_prob + length_bonus * length) / length ** length_penalty
    log_prob: float
    prompt: list[int] = field(default_factory=list)

    @property
    def output(self) -> list[int]:
        return self.prompt + self.tokens


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` along the last axis, best first (ties: lower index first)."""
    index = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, index, -1), index


class OnnxModel:
    """The exported encoder and decoder step, run with onnxruntime.

    Args:
        folder: what ``mmseq export --format onnx`` wrote.
        threads: intra-op threads of each session (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, folder: str | Path, threads: int | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("the ONNX runner needs onnxruntime: pip install 'mmseq[export]'") from None
        folder = Path(folder)
        if not (folder / "onnx_config.json").is_file():
            raise CheckpointError(f"{folder}: not an ONNX export (no onnx_config.json; see `mmseq export`)")
        self.folder = folder
        self.settings = json.loads((folder / "onnx_config.json").read_text())
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), options, providers=providers)
        self.step = onnxruntime.InferenceSession(str(folder / "decoder_step.onnx"), options, providers=providers)
        self.decoding = {k: v for k, v in self.settings["decoding"].items() if k in SUPPORTED}
        self.eos, self.bos = self.settings["eos_id"], self.settings["bos_id"]
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..tokenizer import build_tokenizer

            config = json.loads((self.folder / "config.json").read_text())
            self._tokenizer = build_tokenizer(config["tokenizer"], self.folder)
        return self._tokenizer

    # -- graphs -----------------------------------------------------------------------------
    def encode(self, inputs: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``cross_kv (layers, 2, batch, heads, frames, head_dim)`` and ``memory_mask (batch, frames)``."""
        window = self.settings.get("input_samples")
        if window:  # an encoder of a fixed input window (Whisper's 30 s) was exported for whole windows
            if inputs.shape[1] > window:
                raise InputError(f"audio of {inputs.shape[1]} samples is longer than this encoder's window of "
                                 f"{window}: cut long audio into windows")
            inputs = np.pad(inputs, ((0, 0), (0, window - inputs.shape[1])))
        feed = {"inputs": inputs}
        if "lengths" in self.settings["inputs"]:
            feed["lengths"] = np.asarray(lengths if lengths is not None else [inputs.shape[1]] * len(inputs), np.int64)
        cross_kv, memory_mask = self.encoder.run(["cross_kv", "memory_mask"], feed)
        return cross_kv, memory_mask

    def _step(self, tokens, self_kv, cross_kv, memory_mask):
        return self.step.run(None, {"tokens": tokens, "self_kv": self_kv, "cross_kv": cross_kv,
                                    "memory_mask": memory_mask})

    def _start(self, cross_kv, memory_mask, prefix: list[int]):
        decoder = self.settings["decoder"]
        rows = cross_kv.shape[2]
        empty = np.zeros((decoder["layers"], 2, rows, decoder["heads"], 0, decoder["head_dim"]), np.float32)
        tokens = np.tile(np.asarray(prefix, np.int64), (rows, 1))
        return self._step(tokens, empty, cross_kv, memory_mask)

    # -- the parts of a step (as in mmseq.decoding.search) -------------------------------------------
    def _options(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(SUPPORTED))
        if unknown:
            raise ConfigError(f"the ONNX runner does not support {unknown[0]!r}; it supports {', '.join(SUPPORTED)}")
        merged = {**self.decoding, **options}
        if merged["beam_size"] < 1 or not 1 <= merged["nbest"] <= merged["beam_size"]:
            raise ConfigError(f"beam_size must be >= 1 and nbest between 1 and beam_size; got {merged}")
        return merged

    def _limits(self, memory_mask: np.ndarray, options: dict, room: int) -> np.ndarray:
        if room < 1:
            raise InputError("the prompt leaves no room for output in the decoder's max_length")
        limit = np.full(memory_mask.shape[:1], min(options["max_length"], room), np.int64)
        if options["max_length_ratio"] is not None:
            frames = memory_mask.sum(1).astype(np.float32)
            by_input = np.ceil(frames * np.float32(options["max_length_ratio"])).astype(np.int64) + 1
            limit = np.minimum(limit, by_input)
        return np.maximum(limit, min(room, max(1, options["min_length"] + 1)))

    def _suppressed(self, options: dict, vocab: int) -> tuple[np.ndarray, np.ndarray]:
        """Masks added to every step's log-probabilities ``(vocab,)``, and to the first step's: the
        special ids (but ``</s>``) and ``suppress_tokens``; first also ``suppress_at_start``."""
        mask = np.zeros(vocab, np.float32)
        start, stop = self.settings.get("special_ids") or (0, self.settings["special_tokens"])  # (older exports)
        mask[start:stop] = NEG_INF  # never generated, but </s>
        mask[self.eos] = 0.0
        mask[[i for i in options.get("suppress_tokens") or () if 0 <= i < vocab]] = NEG_INF
        first = mask.copy()
        first[[i for i in options.get("suppress_at_start") or () if 0 <= i < vocab]] = NEG_INF
        return mask, first

    def _filter(self, log_probs: np.ndarray, steps: int, limits: np.ndarray, options: dict, masks) -> np.ndarray:
        eos = self.eos
        log_probs += masks[1] if steps == 0 else masks[0]  # (mmseq.decoding.filters.Suppress)
        if steps < options["min_length"]:
            log_probs[:, eos] = NEG_INF
        at_limit = steps + 1 >= limits
        if at_limit.any():  # at its length limit a row must end, at no cost
            log_probs[at_limit] = NEG_INF
            log_probs[at_limit, eos] = 0.0
        return log_probs

    @staticmethod
    def _score(total, length, options):
        return (total + np.float32(options["length_bonus"]) * length) / np.float32(length) ** np.float32(
            options["length_penalty"])

    # -- search -----------------------------------------------------------------------------
    def generate(self, inputs: np.ndarray, lengths: np.ndarray | None = None, prompt: list[int] | None = None,
                 **options) -> list[list[OnnxHypothesis]]:
        """n-best hypotheses per input, best first; ``options`` override the checkpoint's decoding."""
        options = self._options(options)
        cross_kv, memory_mask = self.encode(inputs, lengths)
        prompt = list(self.settings["prompt"]) + list(prompt or [])
        prefix = [self.bos] + prompt
        limits = self._limits(memory_mask, options, self.settings["decoder"]["max_length"] - len(prefix))
        if options["beam_size"] == 1:
            return [[hyp] for hyp in self._greedy(cross_kv, memory_mask, prefix, prompt, limits, options)]
        return self._beam(cross_kv, memory_mask, prefix, prompt, limits, options)

    def _greedy(self, cross_kv, memory_mask, prefix, prompt, limits, options):
        eos, batch = self.eos, memory_mask.shape[0]
        max_new = int(limits.max())
        log_probs, self_kv = self._start(cross_kv, memory_mask, prefix)
        masks = self._suppressed(options, log_probs.shape[-1])
        out = np.full((batch, max_new), eos, np.int64)
        totals = np.zeros(batch, np.float32)
        alive = np.arange(batch)
        for step in range(max_new):
            log_probs = self._filter(log_probs, step, limits[alive], options, masks)
            token = log_probs.argmax(-1)
            totals[alive] += log_probs[np.arange(len(alive)), token]
            out[alive, step] = token
            done = token == eos
            if done.all():
                break
            if done.any():
                keep = ~done
                alive, token = alive[keep], token[keep]
                self_kv, cross_kv, memory_mask = self_kv[:, :, keep], cross_kv[:, :, keep], memory_mask[keep]
            log_probs, self_kv = self._step(token[:, None], self_kv, cross_kv, memory_mask)
        hyps = []
        for row, total in zip(out.tolist(), totals.tolist()):
            length = row.index(eos) + 1 if eos in row else len(row)
            score = float(self._score(np.float32(total), length, options))
            hyps.append(OnnxHypothesis(row[: length - (eos in row)], score, total, prompt))
        return hyps

    def _beam(self, cross_kv, memory_mask, prefix, prompt, limits, options):
        eos, beam, nbest = self.eos, options["beam_size"], options["nbest"]
        batch = memory_mask.shape[0]
        max_new = int(limits.max())
        log_probs, self_kv = self._start(cross_kv, memory_mask, prefix)
        masks = self._suppressed(options, log_probs.shape[-1])
        # Each input's rows: its beam, which shares the input's cross-attention keys and values.
        log_probs, self_kv = log_probs.repeat(beam, 0), self_kv.repeat(beam, 2)
        lengths = np.arange(1, max_new + 1, dtype=np.float32)
        alive = np.arange(batch)
        scores = np.zeros((batch, beam), np.float32)
        scores[:, 1:] = NEG_INF
        tokens = np.zeros((batch * beam, 0), np.int64)
        pool_scores = np.full((batch, beam), NEG_INF, np.float32)
        pool_totals = np.zeros((batch, beam), np.float32)
        pool_tokens = np.full((batch, beam, max_new), eos, np.int64)
        for step in range(max_new):
            inputs = len(alive)
            log_probs = self._filter(log_probs, step, limits[alive].repeat(beam), options, masks)
            width = log_probs.shape[-1]
            totals = (scores.reshape(-1, 1) + log_probs).reshape(inputs, beam * width)
            top_scores, top_index = _topk(totals, min(2 * beam, beam * width))
            source = np.arange(inputs)[:, None] * beam + top_index // width
            top_token = top_index % width
            is_eos = top_token == eos

            length = step + 1
            ending = is_eos[:, :beam] & (top_scores[:, :beam] > NEG_INF)
            ended_scores = np.where(ending, self._score(top_scores[:, :beam], length, options), NEG_INF)
            ended_tokens = np.concatenate([tokens[source[:, :beam].reshape(-1)].reshape(inputs, beam, step),
                                           top_token[:, :beam, None]], -1)
            ended_tokens = np.pad(ended_tokens, ((0, 0), (0, 0), (0, max_new - length)), constant_values=eos)
            merged_scores, keep = _topk(np.concatenate([pool_scores[alive], ended_scores], 1), beam)
            pool_scores[alive] = merged_scores
            pool_totals[alive] = np.take_along_axis(np.concatenate([pool_totals[alive], top_scores[:, :beam]], 1),
                                                    keep, 1)
            pool_tokens[alive] = np.take_along_axis(np.concatenate([pool_tokens[alive], ended_tokens], 1),
                                                    keep[..., None], 1)

            scores, live = _topk(np.where(is_eos, NEG_INF, top_scores), beam)
            index = np.take_along_axis(source, live, 1).reshape(-1)
            new_tokens = np.take_along_axis(top_token, live, 1).reshape(-1)
            tokens = np.concatenate([tokens[index], new_tokens[:, None]], 1)
            self_kv = self_kv[:, :, index]

            done = self._done(scores, merged_scores, length, limits[alive], lengths, options)
            if done.all():
                break
            if done.any():
                keep_inputs = np.nonzero(~done)[0]
                rows = (keep_inputs[:, None] * beam + np.arange(beam)).reshape(-1)
                alive, scores, tokens, new_tokens = alive[keep_inputs], scores[keep_inputs], tokens[rows], new_tokens[rows]
                self_kv = self_kv[:, :, rows]
                cross_kv, memory_mask = cross_kv[:, :, keep_inputs], memory_mask[keep_inputs]
            log_probs, self_kv = self._step(new_tokens[:, None], self_kv, cross_kv, memory_mask)
        return [self._finished(*rows, prompt, nbest)
                for rows in zip(pool_scores.tolist(), pool_totals.tolist(), pool_tokens.tolist())]

    def _done(self, scores, pool_scores, length: int, limit, lengths, options) -> np.ndarray:
        """Which inputs stop: their n-best are finished and no live row can beat them (or, with
        ``early_stopping="heuristic"``, the pool's worst beats the best live row now), no row is
        alive, or the length limit is reached; as :func:`mmseq.decoding.search.beam_search`."""
        later = (lengths[None] > length) & (lengths[None] <= limit[:, None].astype(np.float32))
        with np.errstate(invalid="ignore"):
            reachable = np.where(later, self._score(scores[:, :1], lengths[None], options), NEG_INF).max(1)
        done = (pool_scores[:, options["nbest"] - 1] >= reachable) | (scores[:, 0] == NEG_INF) | (length >= limit)
        if options["early_stopping"] == "heuristic":
            done |= (pool_scores[:, -1] > NEG_INF) & (pool_scores[:, -1] >= self._score(scores[:, 0], length, options))
        return done

    def _finished(self, scores: list, totals: list, rows: list, prompt, nbest: int) -> list[OnnxHypothesis]:
        """One input's finished pool as its n-best hypotheses (an empty one when none finished)."""
        eos = self.eos
        hyps = [OnnxHypothesis(row[: row.index(eos)] if eos in row else row, score, total, prompt)
                for score, total, row in zip(scores, totals, rows) if score > -math.inf]
        return hyps[:nbest] or [OnnxHypothesis([], -math.inf, -math.inf, prompt)]

    # -- convenience ------------------------------------------------------------------------
    def decode_texts(self, inputs, lengths=None, **options) -> list[str]:
        return [self.tokenizer.decode(hyps[0].output) for hyps in self.generate(inputs, lengths, **options)]

    def transcribe(self, audio, batch_size: int = 16, **options) -> list[str]:
        """Transcripts of audio files or 1-D float waveforms at the model's sample rate, in order."""
        if self.settings["modality"] != "speech":
            raise ConfigError(f"{self.folder}: a {self.settings['modality']} model, not a speech one")
        waveforms = [self._read(item) for item in audio]
        order = sorted(range(len(waveforms)), key=lambda i: -len(waveforms[i]))  # batches of similar length
        texts: list[str] = [""] * len(waveforms)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            lengths = np.array([len(waveforms[i]) for i in chunk], np.int64)
            batch = np.zeros((len(chunk), int(lengths.max())), np.float32)
            for row, i in enumerate(chunk):
                batch[row, : lengths[row]] = waveforms[i]
            for i, text in zip(chunk, self.decode_texts(batch, lengths, **options)):
                texts[i] = text
        return texts

    def _read(self, item) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return item.astype(np.float32)
        import soundfile

        try:
            samples, rate = soundfile.read(str(item), dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises several kinds
            raise InputError(f"{item}: unreadable audio ({error})") from None
        if rate != self.settings["sample_rate"]:
            raise InputError(f"{item}: {rate} Hz; this model takes {self.settings['sample_rate']} Hz (resample first)")
        return samples.mean(1)
