"""Prompts as data: what a route's examples carry before the text the decoder learns.

A manifest line may carry ``"prompt"`` (control tokens and/or a free text prefix, in the syntax of
``--prompt``: ``"<|short|> a photo of"``) and ``"context"`` (text that conditions the output and is
never scored: the sentence before, names or words to expect; a string or a list of them). A route's
``prompting`` settings add:

- ``controls``: control tokens derived from each example when it is read, without rewriting
  manifests. From the target text (training only; decoding is told by ``--prompt``)::

      {attribute: words, bins: {"<|short|>": 9, "<|long|>": null}}   # up to 9 words: short
      {attribute: punctuated, values: {true: "<|punct|>", false: "<|nopunct|>"}}

  or from a field of the manifest line (also at decoding time, where the line has it)::

      {field: noise, values: {clean: "<|clean|>", noisy: "<|noisy|>"}}

- ``prompt_dropout`` / ``context_dropout``: the share of training examples whose prompt (controls
  and ``"prompt"`` field) or context is left out, so that one model works with and without them.
- ``context_length``: the most context tokens kept (the last ones, as Whisper keeps the end of its
  previous text).
- ``context_join``: what joins a context given as a list of words or names (default ``", "``).

A row is laid out ``<|context|> context... <s> <|task|> controls prompt text </s>``: the context
in its own segment before ``<s>``, as Whisper's ``<|startofprev|>``; only text and ``</s>`` are
scored.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from .errors import ConfigError

CONTEXT_TOKEN = "<|context|>"
ATTRIBUTES = {
    "words": lambda text: len(text.split()),
    "characters": len,
    "punctuated": lambda text: any(char in string.punctuation for char in text),
}
PROMPTING_KEYS = ("controls", "prompt_dropout", "context_dropout", "context_length", "context_join")


def _key(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Control:
    """One derived control: an ``attribute`` of the target text or a ``field`` of the line, mapped
    to a token by ``bins`` (token: inclusive upper bound, ``None`` for no bound, in order) or by
    ``values`` (value: token)."""

    attribute: str | None = None
    field: str | None = None
    bins: dict | None = None
    values: dict | None = None

    def check(self, where: str) -> "Control":
        if (self.attribute is None) == (self.field is None):
            raise ConfigError(f"{where}: a control reads one 'attribute' ({', '.join(ATTRIBUTES)}) or one 'field'")
        if self.attribute is not None and self.attribute not in ATTRIBUTES:
            raise ConfigError(f"{where}: unknown attribute {self.attribute!r}; known: {', '.join(ATTRIBUTES)}")
        if (self.bins is None) == (self.values is None):
            raise ConfigError(f"{where}: a control maps by 'bins' (token: upper bound) or by 'values' (value: token)")
        if self.bins is not None:
            bounds = [b for b in self.bins.values() if b is not None]
            if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds) or bounds != sorted(bounds):
                raise ConfigError(f"{where}.bins: upper bounds must be numbers in increasing order (null: none)")
        if self.values is not None:
            self.values = {_key(k): v for k, v in self.values.items()}
        for token in self.tokens():
            if not (isinstance(token, str) and token.startswith("<|") and token.endswith("|>")):
                raise ConfigError(f"{where}: control tokens are written <|name|>, got {token!r}")
        return self

    def tokens(self) -> list[str]:
        return list(self.bins) if self.bins is not None else list(self.values.values())

    def token(self, example: dict, text: str | None) -> str | None:
        """The example's token, or None (the attribute's text is not known, the field is absent,
        or its value has no token)."""
        if self.field is not None:
            value = example.get(self.field)
        elif text is None:
            return None
        else:
            value = ATTRIBUTES[self.attribute](text)
        if value is None:
            return None
        if self.values is not None:
            return self.values.get(_key(value))
        for token, bound in self.bins.items():
            if bound is None or value <= bound:
                return token
        return None


@dataclass
class Prompting:
    """A route's prompt settings (see the module's text)."""

    controls: list[Control] = field(default_factory=list)
    prompt_dropout: float = 0.0
    context_dropout: float = 0.0
    context_length: int = 64
    context_join: str = ", "

    @classmethod
    def from_settings(cls, settings: dict | None, where: str) -> "Prompting":
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(PROMPTING_KEYS))
        if unknown:
            raise ConfigError(f"{where}.prompting: unknown setting {unknown[0]!r}; known: {', '.join(PROMPTING_KEYS)}")
        controls = []
        for i, control in enumerate(settings.pop("controls", None) or []):
            if not isinstance(control, dict) or set(control) - {"attribute", "field", "bins", "values"}:
                raise ConfigError(f"{where}.prompting.controls[{i}]: expected attribute or field, and bins or values")
            controls.append(Control(**control).check(f"{where}.prompting.controls[{i}]"))
        made = cls(controls, **settings)
        for name in ("prompt_dropout", "context_dropout"):
            value = getattr(made, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{where}.prompting.{name}: a share between 0 and 1, got {value!r}")
        if isinstance(made.context_length, bool) or not isinstance(made.context_length, int) or made.context_length < 0:
            raise ConfigError(f"{where}.prompting.context_length: a number of tokens (0 or more), got {made.context_length!r}")
        if not isinstance(made.context_join, str) or len(made.context_join) > 8:
            raise ConfigError(f"{where}.prompting.context_join: a short text that joins listed words, got {made.context_join!r}")
        return made

    def control_tokens(self, example: dict, text: str | None = None) -> list[str]:
        """The example's derived control tokens, in the order the controls are given."""
        return [t for t in (control.token(example, text) for control in self.controls) if t is not None]

    def tokens(self) -> list[str]:
        """Every control token these settings can give (the tokenizer must know them)."""
        return [token for control in self.controls for token in control.tokens()]


def prompt_tokens_of(lines: list[dict], routes: dict) -> list[str]:
    """The prompt tokens a tokenizer needs for training manifest ``lines`` and the route table's
    entries ``routes``: their prompts' tokens, their derived controls' tokens, the tokens written in
    the lines' ``"prompt"`` fields, and ``<|context|>`` when a line has a context."""
    found = []
    for name, entry in routes.items():
        found += [word for word in str(entry.get("prompt") or "").split() if word.startswith("<|") and word.endswith("|>")]
        found += Prompting.from_settings(entry.get("prompting"), f"model.tasks.{name}").tokens()
    for line in lines:
        prompt = line.get("prompt")
        if isinstance(prompt, str):
            for word in prompt.split(" "):
                if not (word.startswith("<|") and word.endswith("|>")):
                    break  # the free text prefix begins
                found.append(word)
        if line.get("context") not in (None, "", []):
            found.append(CONTEXT_TOKEN)
    return list(dict.fromkeys(found))
