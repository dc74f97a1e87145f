"""Readers of other toolkits' checkpoints (CTranslate2, openai-whisper, transformers): pure data,
never code, with every size checked before anything is allocated."""
