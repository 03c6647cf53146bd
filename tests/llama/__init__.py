"""A real OpenAI-compatible model server for tests and the demo: llama.cpp's server (PyPI
``llama-cpp-python[server]``, built once into the cache) serving tiny GGUF models that
:mod:`tests.llama.model` generates from a seed."""
