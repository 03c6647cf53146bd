"""rolegate's local stack, shared by the tests, ``make demo`` and ``make bench``; outside the
product wheel.

What it owns, module by module:

- :mod:`devstack.cache`: the build cache (``~/.cache/rolegate/``): lock, stamp, and the
  progress runner every cached build uses, with its output kept in a build log.
- :mod:`devstack.process`: the one process supervisor (:class:`~devstack.process.Process`),
  temporary working directories and the harness's signal handling.
- :mod:`devstack.poll` and :mod:`devstack.http`: waiting for a condition, and plain GETs of
  health and status endpoints.
- :mod:`devstack.k8s`: Kubernetes binaries built from Go modules, and a control plane on
  loopback (:class:`~devstack.k8s.controlplane.ControlPlane`) with KWOK CPU and GPU nodes
  and fault controls (API server and etcd restarts, etcd compaction, an audit log).
- :mod:`devstack.relay`: a TCP relay on loopback whose connections a fault test cuts.
- :mod:`devstack.llama`: llama.cpp's OpenAI-compatible server built from PyPI's sdist, tiny
  GGUF chat and embedding models generated from a seed, and the server as a process.
- :mod:`devstack.peers`: the benchmark's peers, each built into the cache (LiteLLM).
- :mod:`devstack.stack`: rolegate's operator and gateway as processes, and the CRD install.

By hand: ``python -m devstack build|up|status`` (:mod:`devstack.cli`).

The package itself imports nothing (``import devstack.http`` must not pull in the control
plane's cryptography); each module lists its public surface in ``__all__``.
"""

__all__: list[str] = []
