"""rolegate's control plane: the kopf operator that reconciles LLMRoles into the gateway's
config Secret, with status conditions and Events.

Modules: ``main`` (kopf handlers) -> ``reconcile`` (the one pass) -> ``render`` (pure) ->
``apply`` (API writes); ``crd`` (the CRD from the role API), ``cli``, ``settings``. It
imports the role API and the gateway config format from ``rolegate_gateway``; the gateway
never imports it.
"""

__all__: list[str] = []
