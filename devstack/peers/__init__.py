"""The benchmark's peers: other gateways run beside rolegate on the same upstream, each built
once into the cache from its registry package (:mod:`devstack.peers.litellm`)."""
