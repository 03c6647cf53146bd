"""The benchmark harness: rolegate against a direct call and its peers, side by side.

One run (``python -m bench.run``, ``make bench``) starts, on loopback only, a fast
OpenAI-protocol upstream (:mod:`bench.upstream`), the targets (direct, the real
``rolegate-gateway`` CLI, and the peers of :mod:`bench.peers`: LiteLLM's proxy, TensorZero's
gateway, Portkey's gateway and nginx as the floor, each installed into the cache on first
use by :mod:`devstack.peers`) and one load generator process (:mod:`bench.loadgen`), measures
them in turns (:mod:`bench.compare`), measures rolegate alone (:mod:`bench.rolegate_only`),
and writes ``bench/results/<date>.json``, ``.md`` and ``.png`` (:mod:`bench.report`).
"""
