"""The one text decoder every task shares: a pre-norm Transformer with cross-attention over any
encoder's ``(memory, mask)``, tied input and output embeddings, and an explicit KV cache.

The cache is owned by the decoding loop (see :mod:`mmseq.decoding.search`), not hidden in module state:
``init_cache`` computes the cross-attention keys and values once per input, ``step`` appends the
new tokens' self-attention keys and values, and ``DecoderCache.reorder`` follows the beam with one
index operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class DecoderConfig:
    vocab_size: int = 0  # set from the tokenizer
    dim: int = 256  # width of the token vectors
    layers: int = 6
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    max_length: int = 512  # longest token sequence, prompt included (learned positions)
    memory_dim: int | None = None  # encoder width when it differs from ``dim`` (projected)
    scale_embedding: bool = True  # token vectors times sqrt(dim) (Vaswani et al.); Whisper's are not scaled
    alignment_heads: list | None = None  # [layer, head] pairs whose cross-attention follows the audio (Whisper's)


@dataclass
class DecoderCache:
    """Keys and values for incremental decoding of ``rows`` sequences.

    ``self_kv``: ``(layers, 2, rows, heads, max_length, head_dim)``, filled up to ``length``.
    ``cross_kv``: per layer ``(2, rows / group, heads, frames, head_dim)``, computed once from the
    memory; each ``group`` of consecutive rows (a beam) shares one (see :meth:`share`).
    """

    self_kv: torch.Tensor
    cross_kv: list[torch.Tensor]
    memory_mask: torch.Tensor  # (rows / group, frames), True on real frames
    length: int = 0
    group: int = 1  # consecutive rows that attend to one memory row
    spare: torch.Tensor | None = field(default=None, repr=False)  # reorder's target, swapped with self_kv
    memory_bias: torch.Tensor | None = field(default=None, repr=False)  # (rows / group, 1, 1, frames): 0 or -inf
    # Rows whose prefixes differ in length (a per-example context) are left-padded to one length:
    # ``offsets (rows,)`` counts each row's padding; those cache slots are never attended to, and
    # positions count from each row's first real token, as in training. None: no padding.
    offsets: torch.Tensor | None = None
    # Soft prompt vectors fed so far (the same in every row: one search shares one prompt); they
    # take no positions (see TextDecoder._embed).
    soft_tokens: int = 0

    def __post_init__(self):
        # The cross-attention mask as an additive bias, made once: given a boolean mask, SDPA
        # converts it to this on every call of every layer (a tenth of a decoding step on CPU).
        if self.memory_bias is None:
            dtype = self.cross_kv[0].dtype if self.cross_kv else torch.float32
            bias = torch.zeros(self.memory_mask.shape, dtype=dtype, device=self.memory_mask.device)
            self.memory_bias = bias.masked_fill(~self.memory_mask, float("-inf"))[:, None, None, :]

    def reorder(self, index: torch.Tensor) -> None:
        """Make row ``i`` continue the hypothesis of row ``index[i]`` (same input): one index op,
        written into a spare buffer that then becomes the cache (half the memory traffic of a
        gather and a copy back)."""
        filled = slice(0, self.length)
        if self.self_kv.requires_grad and torch.is_grad_enabled():  # autograd: gather, then copy back
            part = self.self_kv[:, :, :, :, filled]
            part.copy_(part.index_select(2, index))
            return
        if self.spare is None or self.spare.shape != self.self_kv.shape:
            self.spare = torch.empty_like(self.self_kv)
        torch.index_select(self.self_kv[:, :, :, :, filled], 2, index, out=self.spare[:, :, :, :, filled])
        self.self_kv, self.spare = self.spare, self.self_kv
        if self.offsets is not None:
            self.offsets = self.offsets[index]

    def select(self, index: torch.Tensor) -> "DecoderCache":
        """Keep only some rows (and their inputs' cross-attention), e.g. when inputs finish. With
        ``group > 1``, ``index`` lists whole groups, each in order."""
        memory_index = index[:: self.group] // self.group
        return DecoderCache(self.self_kv.index_select(2, index),
                            [kv.index_select(1, memory_index) for kv in self.cross_kv],
                            self.memory_mask.index_select(0, memory_index), self.length, self.group,
                            offsets=None if self.offsets is None else self.offsets[index], soft_tokens=self.soft_tokens)

    def repeat(self, times: int) -> "DecoderCache":
        """Each row ``times`` times in a row (for a beam over each input)."""
        if self.group > 1:  # rows already share their memory: keep sharing it
            return self.share(times)
        return DecoderCache(self.self_kv.repeat_interleave(times, 2),
                            [kv.repeat_interleave(times, 1) for kv in self.cross_kv],
                            self.memory_mask.repeat_interleave(times, 0), self.length, self.group,
                            offsets=self._repeated_offsets(times), soft_tokens=self.soft_tokens)

    def share(self, times: int) -> "DecoderCache":
        """Like :meth:`repeat`, but the ``times`` rows of each input share its cross-attention keys
        and values instead of copies: a beam reads them once per step, not once per hypothesis."""
        return DecoderCache(self.self_kv.repeat_interleave(times, 2), self.cross_kv, self.memory_mask, self.length,
                            self.group * times, memory_bias=self.memory_bias, offsets=self._repeated_offsets(times),
                            soft_tokens=self.soft_tokens)

    def _repeated_offsets(self, times: int) -> torch.Tensor | None:
        return None if self.offsets is None else self.offsets.repeat_interleave(times)

    def self_bias(self, new: int) -> torch.Tensor | None:
        """The self-attention mask of ``new`` queries that follow the cached ones, ``(rows, 1, new,
        keys)``: causal, and blind to each row's left padding (a padding slot sees only itself, so
        no row of the attention is empty). None when no row is padded and ``new`` is 1."""
        keys = self.length + new
        if self.offsets is None:
            if new == 1:
                return None
            return torch.ones(new, keys, dtype=torch.bool, device=self.self_kv.device).tril(self.length)
        key = torch.arange(keys, device=self.offsets.device)
        query = torch.arange(self.length, keys, device=self.offsets.device)
        allowed = (key[None] <= query[:, None]) & (key[None, None] >= self.offsets[:, None, None])
        allowed |= key[None] == query[:, None]
        return allowed[:, None]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        dim, self.heads = config.dim, config.heads
        self.self_norm, self.cross_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.ffn_dim, dim))
        self.dropout = nn.Dropout(config.dropout)

    def memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """``(2, batch, heads, frames, head_dim)`` cross-attention keys and values."""
        kv = self.cross_kv(memory).view(memory.shape[0], memory.shape[1], 2, self.heads, -1)
        return kv.permute(2, 0, 3, 1, 4)

    def forward(self, x, cross_kv, memory_mask, self_kv=None, start=0, return_attention=False, group=1,
                memory_bias=None, self_mask=None):
        batch, length, dim = x.shape
        drop = self.dropout.p if self.training else 0.0
        q, k, v = self.self_qkv(self.self_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self_kv is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:  # incremental: write the new keys and values into the cache, attend to all so far
            self_kv[0, :, :, start:start + length] = k
            self_kv[1, :, :, start:start + length] = v
            k, v = self_kv[0, :, :, : start + length], self_kv[1, :, :, : start + length]
            # ``self_mask``: causal over the cache, blind to left padding (DecoderCache.self_bias)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask, dropout_p=drop)
        x = x + self.dropout(self.self_out(attended.transpose(1, 2).reshape(batch, length, dim)))

        q = _split_heads(self.cross_q(self.cross_norm(x)), self.heads)
        if group > 1:  # the rows of a group share one memory: their queries attend to it together
            q = q.view(batch // group, group, self.heads, length, -1).transpose(1, 2).flatten(2, 3)
        mask = memory_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, cross_kv[0], cross_kv[1], dropout_p=drop,
                                                  attn_mask=mask if memory_bias is None else memory_bias)
        weights = None
        if return_attention:  # only for plots and timestamps: SDPA does not return its weights
            scores = (q @ cross_kv[0].transpose(-1, -2)) / q.shape[-1] ** 0.5
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            if return_attention is True:  # the mean over heads (batch, length, frames)
                weights = weights.mean(1).view(batch // group, group, length, -1).flatten(0, 1)
            else:  # the heads named (batch, heads, length, frames)
                weights = weights[:, list(return_attention)].unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        if group > 1:
            attended = attended.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        x = x + self.dropout(self.cross_out(attended.transpose(1, 2).reshape(batch, length, dim)))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, weights


class TextDecoder(nn.Module):
    """Pre-norm Transformer decoder over token ids ``(batch, length)`` and a memory ``(batch, frames, dim)``."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.positions = nn.Embedding(config.max_length, config.dim)
        memory_dim = config.memory_dim or config.dim
        self.memory_proj = nn.Linear(memory_dim, config.dim) if memory_dim != config.dim else nn.Identity()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.embed.weight, std=config.dim ** -0.5)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.register_parameter("soft_prompt", None)  # (count, dim) when prompt-tuned: see add_soft_prompt
        self.register_parameter("deep_prompt", None)  # (layers - 1, count, dim): deep prompt tuning's per-layer vectors

    def _embed(self, tokens: torch.Tensor, start: int, offsets: torch.Tensor | None = None,
               soft_before: int = 0) -> torch.Tensor:
        """Token plus position vectors; ``offsets (rows,)``: each row's left padding (its positions
        count from its first real token). Ids past the vocabulary are soft prompt vectors
        (``soft_prompt``), learned by prompt tuning and never generated; they take no position, so
        that the tokens after them keep the positions a frozen model was trained on (20 vectors
        would otherwise move its text 20 learned positions on, where it never saw text and does
        not know when to stop). ``soft_before``: soft vectors fed before ``tokens``."""
        if start + tokens.shape[1] > self.config.max_length:
            raise ValueError(f"token sequence longer than the decoder's max_length {self.config.max_length}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        if offsets is not None:
            positions = (positions[None] - offsets[:, None]).clamp(min=0)
        vocab = self.embed.num_embeddings
        scale = self.config.dim ** 0.5 if self.config.scale_embedding else 1.0
        if self.soft_prompt is None:
            return self.dropout(self.embed(tokens) * scale + self.positions(positions))
        soft = tokens >= vocab
        vectors = torch.where(soft[..., None], self.soft_prompt[(tokens - vocab).clamp(0, len(self.soft_prompt) - 1)],
                              self.embed(tokens.masked_fill(soft, 0)))
        positions = (positions - soft_before - soft.cumsum(1)).clamp(min=0)
        placed = self.positions(positions).masked_fill(soft[..., None], 0.0)
        return self.dropout(vectors * scale + placed)

    def add_soft_prompt(self, count: int, deep: bool = False) -> list[int]:
        """``count`` new trainable vectors (a soft prompt, placed in a prompt by their ids, which
        follow the vocabulary and any soft prompt before); returns their ids. ``deep``: each also
        gets its own vector at the input of every layer after the first (deep prompt tuning, as
        P-tuning v2: a small frozen model steered by the first layer alone learns little)."""
        vocab, dim = self.embed.num_embeddings, self.config.dim
        old = self.soft_prompt.data if self.soft_prompt is not None else self.embed.weight.new_zeros(0, dim)
        if (self.deep_prompt is not None) != deep and len(old):
            raise ValueError("a decoder's soft prompts are all deep or none")
        # Initialised from the vocabulary's own vectors (Lester et al. 2021): in the range the layers know.
        picked = self.embed.weight.data[torch.randint(0, vocab, (count,), generator=torch.Generator().manual_seed(count))]
        self.soft_prompt = nn.Parameter(torch.cat([old, picked.clone()]))
        if deep:  # a layer's input is of the embedding's scale (times sqrt(dim), see _embed)
            layers = picked[None].repeat(max(len(self.layers) - 1, 0), 1, 1) * (dim ** 0.5 if self.config.scale_embedding else 1.0)
            before = self.deep_prompt.data if self.deep_prompt is not None else layers[:, :0]
            self.deep_prompt = nn.Parameter(torch.cat([before, layers], 1))
        return list(range(vocab + len(old), vocab + len(old) + count))

    def _deep(self, x: torch.Tensor, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``x`` with the soft prompt's rows replaced by their vectors for layer ``layer`` (> 0)."""
        if self.deep_prompt is None:
            return x
        vocab = self.embed.num_embeddings
        soft = tokens >= vocab
        rows = self.deep_prompt[layer - 1][(tokens - vocab).clamp(0, self.deep_prompt.shape[1] - 1)]
        return torch.where(soft[..., None], rows.to(x.dtype), x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.embed.weight)  # tied with the input embedding

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                return_attention: bool | list = False):
        """Logits ``(batch, length, vocab)`` for every position at once (teacher forcing).

        With ``return_attention=True`` also the last layer's cross-attention ``(batch, length,
        frames)``, averaged over heads; given ``[layer, head]`` pairs (such as the config's
        ``alignment_heads``), the cross-attention of those heads ``(batch, pairs, length, frames)``.
        """
        memory = self.memory_proj(memory)
        x = self._embed(tokens, 0)
        pairs = None if isinstance(return_attention, bool) else [tuple(pair) for pair in return_attention]
        weights, named = None, {}
        for i, layer in enumerate(self.layers):
            x = self._deep(x, tokens, i) if i else x
            heads = return_attention if pairs is None else [head for at, head in pairs if at == i]
            x, weights = layer(x, layer.memory_kv(memory), memory_mask, return_attention=heads)
            if pairs is not None:
                named.update({(i, head): weights[:, k] for k, head in enumerate(heads)})
        logits = self._logits(x)
        if pairs is not None:
            return logits, torch.stack([named[pair] for pair in pairs], 1)
        return (logits, weights) if return_attention else logits

    def init_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor, max_length: int | None = None,
                   offsets: torch.Tensor | None = None) -> DecoderCache:
        """A cache for ``memory``'s rows; cross-attention keys and values are computed here, once.
        ``offsets (rows,)``: the left padding of each row's prefix (see :class:`DecoderCache`)."""
        memory = self.memory_proj(memory)
        max_length = min(max_length or self.config.max_length, self.config.max_length)
        head_dim = self.config.dim // self.config.heads
        self_kv = memory.new_zeros(len(self.layers), 2, memory.shape[0], self.config.heads, max_length, head_dim)
        # Contiguous keys and values: every step reads them whole (a tenth faster attention on CPU).
        return DecoderCache(self_kv, [layer.memory_kv(memory).contiguous() for layer in self.layers], memory_mask, 0,
                            offsets=offsets)

    def step(self, tokens: torch.Tensor, cache: DecoderCache, return_attention: bool = False):
        """Logits ``(rows, new, vocab)`` for new tokens ``(rows, new)`` that follow the cached ones."""
        x = self._embed(tokens, cache.length, cache.offsets, cache.soft_tokens)
        if self.soft_prompt is not None:
            cache.soft_tokens += int((tokens[0] >= self.embed.num_embeddings).sum())
        weights = None
        self_mask = cache.self_bias(tokens.shape[1])
        for i, layer in enumerate(self.layers):
            x = self._deep(x, tokens, i) if i else x
            x, weights = layer(x, cache.cross_kv[i], cache.memory_mask, cache.self_kv[i], cache.length,
                               return_attention, cache.group, cache.memory_bias, self_mask)
        cache.length += tokens.shape[1]
        logits = self._logits(x)
        return (logits, weights) if return_attention else logits
