"""mmseq: multimodal sequence-to-sequence learning.

>>> import mmseq
>>> model = mmseq.load("exp/synth_speech/best")
>>> model.transcribe(["hello.wav"])
"""

__version__ = "0.1.0"

from .model import ModelConfig, Seq2Seq, build_model, load  # noqa: E402
from .encoders import Encoder, create_encoder, list_encoders, register_encoder  # noqa: E402

__all__ = ["Encoder", "ModelConfig", "Seq2Seq", "build_model", "create_encoder", "list_encoders", "load",
           "register_encoder", "__version__"]
