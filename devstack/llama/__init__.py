"""A real OpenAI-compatible model server: llama.cpp's server (PyPI
``llama-cpp-python[server]``, built once into the cache by :mod:`devstack.llama.build`)
serving tiny GGUF models that :mod:`devstack.llama.model` generates from a seed, run by
:mod:`devstack.llama.server`."""
