"""rolegate's data plane: an OpenAI-compatible gateway that serves LLM roles.

The public surface is re-exported here; modules are private by convention (import from
the package).
"""

from rolegate_gateway.api import API_VERSION, Binding, LLMRole, LLMRoleSpec
from rolegate_gateway.app import create_app, start
from rolegate_gateway.config import GatewayConfig, Limits, RoleConfig, Upstream
from rolegate_gateway.errors import ConfigError, GatewayError
from rolegate_gateway.manifests import ManifestsSource, load_manifests
from rolegate_gateway.runtime import ReloadReport, Runtime

__all__ = [
    "API_VERSION",
    "Binding",
    "ConfigError",
    "GatewayConfig",
    "GatewayError",
    "LLMRole",
    "LLMRoleSpec",
    "Limits",
    "ManifestsSource",
    "ReloadReport",
    "RoleConfig",
    "Runtime",
    "Upstream",
    "create_app",
    "load_manifests",
    "start",
]
