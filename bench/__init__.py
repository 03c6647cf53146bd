"""The benchmark harness: rolegate against a direct call and LiteLLM's proxy, side by side.

One run (``python -m bench.run``, ``make bench``) starts, on loopback only, a fast
OpenAI-protocol upstream (:mod:`bench.upstream`), the three targets (direct, the real
``rolegate-gateway`` CLI, LiteLLM's proxy CLI from its own virtualenv,
:mod:`devstack.peers.litellm`) and one load generator process (:mod:`bench.loadgen`), measures
them in turns (:mod:`bench.compare`), measures rolegate alone (:mod:`bench.rolegate_only`),
and writes ``bench/results/<date>.json``, ``.md`` and ``.png`` (:mod:`bench.report`).
"""
