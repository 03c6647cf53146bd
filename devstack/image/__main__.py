"""``python -m devstack.image`` (``make image``): build the image's OCI archive when it is
missing or stale, then print its path, size and manifest digest.

Exit status: 0 built or cached, 1 the build failed (the message says why), 130 interrupted.
"""

from __future__ import annotations

import sys

from devstack.cache import BuildFailed
from devstack.image import build
from devstack.process import sigterm_raises_interrupt


def main() -> int:
    """Build, then print ``<archive path> (<MB>, <digest>)`` on stdout; progress on stderr."""
    with sigterm_raises_interrupt():
        try:
            archive = build.ensure(sys.stderr)
        except BuildFailed as failed:
            print(f"image: build failed: {failed}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    record = build.info()
    layers = sum(layer["size"] for layer in record["layers"])
    unpacked = sum(layer["tar_bytes"] for layer in record["layers"])
    print(
        f"{archive}\n  {record['archive_bytes'] / 1e6:.1f} MB archive, {layers / 1e6:.1f} MB "
        f"compressed layers, {unpacked / 1e6:.1f} MB unpacked; {record['manifest_digest']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
