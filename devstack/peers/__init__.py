"""The benchmark's peers: other gateways run beside rolegate on the same upstream, each
pinned and built once into the cache from its registry package: LiteLLM's proxy
(:mod:`devstack.peers.litellm`, PyPI), TensorZero's gateway (:mod:`devstack.peers.tensorzero`,
PyPI), Portkey's gateway (:mod:`devstack.peers.portkey`, npm) and nginx, the floor
(:mod:`devstack.peers.nginx`, Debian)."""
