"""A real Kubernetes control plane on loopback.

``build.sh`` compiles pinned etcd, Kubernetes, kwok and helm from Go modules into
``~/.cache/rolegate/k8s-<version>/bin`` (:mod:`devstack.k8s.build` is its Python side);
:mod:`devstack.k8s.controlplane` starts them on loopback with a throwaway PKI
(:mod:`devstack.k8s.pki`), the components' command lines (:mod:`devstack.k8s.components`)
and simulated CPU and GPU nodes (:mod:`devstack.k8s.nodes`).
"""
