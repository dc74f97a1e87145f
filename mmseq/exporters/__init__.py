"""Writers of other toolkits' checkpoint forms from mmseq checkpoints (the reverse of
:mod:`mmseq.importers`): pure data, written atomically (see :func:`mmseq.checkpoint.write_folder`)."""

from .whisper import export_whisper_transformers

__all__ = ["export_whisper_transformers"]
