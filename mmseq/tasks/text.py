"""Text to text: a source text in, a target text out, scored by BLEU, chrF and exact match.

Manifest lines: ``{"id": "s1", "source": "bonjour le monde", "text": "hello world"}``. The source is
tokenized by the text encoder's own tokenizer (:class:`mmseq.encoders.text.TextEncoder`), the
target by the model's tokenizer, so the two sides may use different alphabets.
"""

from __future__ import annotations

import torch

from ..errors import InputError, ManifestError
from ..metrics import Metric
from .base import Task, register_task


def exact_match(references: list[list[str]], hypotheses: list[str]) -> float:
    """Percent of hypotheses equal to one of their references (runs of whitespace ignored)."""
    if not hypotheses:
        return 0.0
    same = sum(" ".join(h.split()) in {" ".join(r.split()) for r in refs} for refs, h in zip(references, hypotheses))
    return 100.0 * same / len(hypotheses)


@register_task("text")
class TextToText(Task):
    name = "text"
    modality = "text"  # the encoders it reads
    input_field = "source"
    extensions = (".txt",)
    metrics = (Metric("bleu", True), Metric("chrf", True), Metric("exact", True))

    def read(self, manifest, training: bool, skip_errors: bool = False):
        """Examples with their ``length`` in tokens: the longer of the source and the target, so
        ``data.batch_size`` counts padded tokens per batch, as fairseq's ``max_tokens`` does."""
        examples, errors = super().read(manifest, training, skip_errors)
        kept = []
        for example in examples:
            try:
                source = self.encoder.tokenize(example["source"])
            except InputError as error:
                path, line = example["_where"].rsplit(":", 1)
                error = ManifestError(path, int(line), str(error))
                if not skip_errors:
                    raise error from None
                errors.append(error)
                continue
            example["length"] = max(len(source), len(self.tokenizer.encode(example["text"])) + 1)
            kept.append(example)
        return kept, errors

    def length(self, example: dict) -> float:
        if "length" not in example:  # examples made by hand rather than by read()
            example["length"] = len(self.encoder.tokenize(example["source"]))
        return float(example["length"])

    def load_input(self, source, training: bool = False) -> torch.Tensor:
        return self.encoder.tokenize(source)

    def collate_inputs(self, inputs):
        lengths = torch.tensor([len(x) for x in inputs])
        tokens = torch.zeros(len(inputs), int(lengths.max()), dtype=torch.long)  # 0 is <pad>
        for row, x in enumerate(inputs):
            tokens[row, : len(x)] = x
        return tokens, lengths

    def score(self, references, hypotheses) -> dict:
        """``bleu`` and ``chrf`` (sacrebleu, first reference) and ``exact`` (percent, any reference)."""
        from ..metrics import text_metrics

        return {**text_metrics([refs[0] for refs in references], hypotheses),
                "exact": exact_match(references, hypotheses)}
