"""Encoders: one file per modality, all behind :class:`Encoder` and one registry."""

from .base import ENCODERS, Encoder, create_encoder, lengths_to_mask, list_encoders, register_encoder
from . import speech  # noqa: F401  (registers the speech encoders)
from . import image  # noqa: F401  (registers the image encoders)
from . import text  # noqa: F401  (registers the text encoder)
from . import null  # noqa: F401  (registers the null encoder of language models)
from . import hf_audio  # noqa: F401  (registers hf_audio; transformers is imported only when one is built)
from . import whisper  # noqa: F401  (registers the whisper encoder)

__all__ = ["ENCODERS", "Encoder", "create_encoder", "lengths_to_mask", "list_encoders", "register_encoder"]
