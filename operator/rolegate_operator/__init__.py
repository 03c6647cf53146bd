"""rolegate's control plane: the kopf operator that reconciles LLMRoles (to come).

It imports the role API and the gateway config format from ``rolegate_gateway``; the
gateway never imports it.
"""

__all__: list[str] = []
