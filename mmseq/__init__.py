"""mmseq: multimodal sequence-to-sequence learning.

>>> import mmseq
>>> model = mmseq.load("exp/synth_speech/best")
>>> model.transcribe(["hello.wav"])
"""

__version__ = "0.1.0"

# Imported on first use, so that `import mmseq.errors` (scripts, data tools) does not load torch.
_LAZY = {
    "load": "checkpoint", "save": "checkpoint", "build_model": "checkpoint", "ModelConfig": "config", "Seq2Seq": "model",
    "load_lm": "decoding.lm",
    "Encoder": "encoders", "create_encoder": "encoders", "list_encoders": "encoders", "register_encoder": "encoders",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mmseq' has no attribute {name!r}")
