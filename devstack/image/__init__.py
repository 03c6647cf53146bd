"""rolegate's one OCI image (operator and gateway), built on this machine with no base image
pulled from a registry: :mod:`~devstack.image.base` (Debian bookworm by mmdebstrap),
:mod:`~devstack.image.build` (the wheel and the lock into a site directory, umoci, the cached
archive), :mod:`~devstack.image.lock` (image/requirements.txt), :mod:`~devstack.image.oci`
(reading an archive) and :mod:`~devstack.image.recipe` (the pure parts). See image/README.md.

    python -m devstack.image          # build (or find) the archive; prints its path and size
"""
