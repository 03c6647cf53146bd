"""Tiny llama-architecture GGUF models, generated from a seed with the ``gguf`` package.

The weights are random, so the text is nonsense, but everything around it is real: llama.cpp
loads the file, tokenises with its SentencePiece-style ("llama") tokenizer, applies the chat
template from the metadata, samples, streams and counts usage. One model is ~0.5 MB:

- 2 blocks, 64-dim embeddings, 4 attention heads (and 4 KV heads), a 128-wide SwiGLU FFN,
  a 32,768-token context, float32 tensors;
- a 260-token vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>`` ..
  ``<0xFF>`` (SentencePiece byte fallback, so any UTF-8 text tokenises) and ``▁``;
- a chat template (``<role>content`` lines, then ``<assistant>``) in ``tokenizer.chat_template``.

So that a person can read what the demo prints, the output layer favours lowercase letters
and the space: every token embedding carries a constant in dimension 0 that survives the
residual stream, and the output row of a favoured token has a positive weight there, of any
other token (``</s>`` included) a negative one. Generation therefore runs to ``max_tokens``
and never prints control bytes. Which letters come out depends on the seed and the prompt:
two seeds give two distinguishable models (greedy decoding of one prompt differs).

Tensor names and metadata keys follow llama.cpp's GGUF spec
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) through the ``gguf`` package's
own constants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import gguf
import numpy as np

__all__ = [
    "CHAT_TEMPLATE",
    "EMBEDDING_MODELS",
    "MODELS",
    "N_CTX",
    "N_EMBD",
    "VOCAB_SIZE",
    "write_model",
    "write_models",
]

N_EMBD: Final = 64
N_HEAD: Final = 4
N_LAYER: Final = 2
N_FF: Final = 128
N_CTX: Final = 32_768
"""The context length in tokens, written into the model and given to the server: a real RAG
application's extraction prompts need ~10K tokens. The tiny model's KV cache at this length is
2 layers x 32,768 x 64 x 2 (K, V) x 2 bytes = 16 MiB."""
VOCAB_SIZE: Final = 260
UNK, BOS, EOS = 0, 1, 2
_FIRST_BYTE: Final = 3
_SPACE_PIECE: Final = "\u2581"  # SentencePiece's word boundary, token 259

#: The chat template in the metadata: llama-cpp-python renders it with Jinja2.
CHAT_TEMPLATE: Final = (
    "{{ bos_token }}{% for message in messages %}<{{ message['role'] }}>"
    "{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

#: Alias -> seed of the two chat models the tests and the demo serve.
MODELS: Final = {"tiny-a": 1, "tiny-b": 2}
#: Alias -> seed of the embedding model (served with mean pooling: one 64-wide vector an input).
EMBEDDING_MODELS: Final = {"tiny-embed": 3}

_FAVOURED: Final = frozenset(range(ord("a"), ord("z") + 1))


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Token texts, scores and types (gguf.TokenType) of the 260-token byte vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [_SPACE_PIECE]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL]
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def _output_rows(rng: np.random.Generator) -> np.ndarray:
    """The output layer, shape (VOCAB_SIZE, N_EMBD): random, plus the dimension-0 bias that
    makes lowercase letters and the space the only likely tokens."""
    rows = rng.normal(0.0, 0.25, (VOCAB_SIZE, N_EMBD)).astype(np.float32)
    rows[:, 0] = -3.0
    for byte in _FAVOURED:
        rows[_FIRST_BYTE + byte, 0] = 3.0
    rows[_FIRST_BYTE + ord(" "), 0] = 3.3  # a word every 5-6 letters or so
    rows[VOCAB_SIZE - 1, 0] = -3.0  # "▁" would print as a space too; keep one spelling
    return rows


def write_model(path: os.PathLike[str] | str, *, seed: int, name: str | None = None) -> Path:
    """Write a tiny llama GGUF model to ``path`` (about 0.5 MB), the same bytes for the same
    ``seed``; ``name`` goes into ``general.name`` (default ``tiny-<seed>``).

    The file is written beside ``path`` and renamed into place, so a reader never sees half a
    model. Returns ``path``.

    Raises:
        OSError: the file cannot be written.
    """
    target = Path(path)
    rng = np.random.default_rng(seed)
    arch = "llama"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_name(name or f"tiny-{seed}")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(False)  # the chat template writes bos_token itself
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    embeddings = normal(VOCAB_SIZE, N_EMBD, std=0.1)
    embeddings[:, 0] = 1.0  # the constant the output layer reads (see the module docstring)
    names = gguf.TENSOR_NAMES
    tensors: list[tuple[str, np.ndarray]] = [
        (names[gguf.MODEL_TENSOR.TOKEN_EMBD], embeddings),
        (names[gguf.MODEL_TENSOR.OUTPUT_NORM], np.ones(N_EMBD, np.float32)),
        (names[gguf.MODEL_TENSOR.OUTPUT], _output_rows(rng)),
    ]
    for block in range(N_LAYER):
        per_block = [
            (gguf.MODEL_TENSOR.ATTN_NORM, np.ones(N_EMBD, np.float32)),
            (gguf.MODEL_TENSOR.ATTN_Q, normal(N_EMBD, N_EMBD, std=0.2)),
            (gguf.MODEL_TENSOR.ATTN_K, normal(N_EMBD, N_EMBD, std=0.2)),
            (gguf.MODEL_TENSOR.ATTN_V, normal(N_EMBD, N_EMBD, std=0.02)),
            (gguf.MODEL_TENSOR.ATTN_OUT, normal(N_EMBD, N_EMBD, std=0.02)),
            (gguf.MODEL_TENSOR.FFN_NORM, np.ones(N_EMBD, np.float32)),
            (gguf.MODEL_TENSOR.FFN_GATE, normal(N_FF, N_EMBD, std=0.02)),
            (gguf.MODEL_TENSOR.FFN_UP, normal(N_FF, N_EMBD, std=0.02)),
            (gguf.MODEL_TENSOR.FFN_DOWN, normal(N_EMBD, N_FF, std=0.02)),
        ]
        tensors += [(names[kind].format(bid=block), data) for kind, data in per_block]
    for tensor_name, data in tensors:
        writer.add_tensor(f"{tensor_name}.weight", data)

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_models(folder: Path, seeds: Mapping[str, int]) -> dict[str, Path]:
    """Write one model per alias of ``seeds`` (alias -> seed) as ``folder/<alias>.gguf``;
    returns alias -> path.

    Raises:
        OSError: a file cannot be written.
    """
    return {
        alias: write_model(folder / f"{alias}.gguf", seed=seed) for alias, seed in seeds.items()
    }
