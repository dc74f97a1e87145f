"""Decoding: the settings of a search (``options``), the rules applied to each step's
log-probabilities (``filters``), greedy/beam/sampling search (``search``), the batch-level entry
point bound to the model as ``model.generate`` (``generate``), the scorers fused with the decoder
(``scorers/``), and token n-gram counting and language-model loading (``ngram``, ``lm``)."""
