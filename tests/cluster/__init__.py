"""The real Kubernetes control plane the integration tests run on.

``build.sh`` compiles pinned etcd, Kubernetes, kwok and helm from Go modules into
``~/.cache/rolegate/k8s-<version>/bin``; :mod:`tests.cluster.harness` starts them on loopback;
:mod:`tests.cluster.fixtures` is the pytest plugin that hands clusters and namespaces to tests.
"""
