"""The tiny GGUF models: deterministic from a seed, small, and shaped as llama.cpp expects."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader

from devstack.llama.model import CHAT_TEMPLATE, VOCAB_SIZE, write_model


def field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_a_seed_gives_the_same_bytes_and_another_seed_other_weights(tmp_path: Path) -> None:
    one = write_model(tmp_path / "one.gguf", seed=1).read_bytes()
    again = write_model(tmp_path / "again.gguf", seed=1).read_bytes()
    two = write_model(tmp_path / "two.gguf", seed=2).read_bytes()
    assert one == again
    assert one != two
    assert len(one) < 1 << 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.gguf", "one.gguf", "two.gguf"]


def test_the_model_is_a_small_llama_with_a_byte_vocabulary(tmp_path: Path) -> None:
    reader = GGUFReader(write_model(tmp_path / "m.gguf", seed=7))
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny-7"
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.embedding_length") == 64
    assert field(reader, "llama.attention.head_count") == 4
    assert field(reader, "tokenizer.ggml.model") == "llama"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    assert len(tokens) == VOCAB_SIZE == 260
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    assert len(names) == 3 + 2 * 9
