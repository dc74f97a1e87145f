"""The errors mmseq raises on bad input. Every message names the file (and line) at fault."""


class MmseqError(Exception):
    """Base class of every error mmseq raises on purpose."""


class ManifestError(MmseqError, ValueError):
    """A manifest line that cannot be used: ``path:line: reason``."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class InputError(MmseqError, ValueError):
    """An audio file, image or text that cannot be read or used."""


class CheckpointError(MmseqError):
    """A checkpoint folder that is missing, corrupt or unsafe."""


class ConfigError(MmseqError, ValueError):
    """A configuration that names an unknown component or has a bad value."""


class TokenizerError(MmseqError, ValueError):
    """Text the tokenizer cannot encode, or ids it cannot decode."""


class TrainingError(MmseqError, RuntimeError):
    """Training cannot go on (too many bad examples, non-finite losses, a locked folder)."""
