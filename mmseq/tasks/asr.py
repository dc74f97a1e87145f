"""Speech recognition: audio in, text out, scored by WER and CER."""

from __future__ import annotations

import torch

from ..data.audio import as_waveform, audio_duration
from ..errors import InputError, ManifestError
from ..metrics import Metric
from .base import Task, register_task


@register_task("asr")
class SpeechRecognition(Task):
    name = "asr"
    modality = "speech"  # the encoders it reads
    input_field = "audio"
    extensions = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")
    metrics = (Metric("wer", False), Metric("cer", False))

    def read(self, manifest, training: bool, skip_errors: bool = False):
        examples, errors = super().read(manifest, training, skip_errors)
        kept = []
        for example in examples:  # the batch budget needs durations: read headers when absent
            if "duration" not in example:
                try:
                    example["duration"] = audio_duration(example["audio"])  # a FIFO is refused, not waited on
                except Exception as problem:
                    path, line = example["_where"].rsplit(":", 1)
                    why = getattr(problem, "reason", None)  # "is a FIFO ...", "audio file not found"
                    error = ManifestError(path, int(line), f"cannot read audio {example['audio']}"
                                          + (f" ({why})" if why else ""))
                    if not skip_errors:
                        raise error from None
                    errors.append(error)
                    continue
            kept.append(example)
        return kept, errors

    def length(self, example: dict) -> float:
        return float(example["duration"])

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        waveform = as_waveform(source, self.encoder.sample_rate)
        if waveform.abs().max() == 0 and training:
            raise InputError("silent audio (all samples zero)")
        return waveform

    def collate_inputs(self, inputs):
        lengths = torch.tensor([len(x) for x in inputs])
        waveforms = torch.zeros(len(inputs), int(lengths.max()))
        for row, x in enumerate(inputs):
            waveforms[row, : len(x)] = x
        return waveforms, lengths

    def score(self, references, hypotheses) -> dict:
        from ..metrics import speech_metrics

        return speech_metrics([refs[0] for refs in references], hypotheses)
