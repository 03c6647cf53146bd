"""image/requirements.txt: exact pins that cover pyproject.toml's runtime dependencies.
(That the image installs exactly these is checked on the built image, in
tests/integration/test_image.py.)"""

from __future__ import annotations

from packaging.requirements import Requirement
from packaging.version import Version

from devstack.image import lock
from devstack.image.recipe import normalize, parse_pins


def test_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = {normalize(pin.name): pin.version for pin in parse_pins(lock.LOCK.read_text())}
    for dependency in lock.runtime_dependencies():
        requirement = Requirement(dependency)
        name = normalize(requirement.name)
        assert name in pins, f"{requirement.name} is not in {lock.LOCK}"
        assert Version(pins[name]) in requirement.specifier, (
            f"{lock.LOCK} pins {name}=={pins[name]}, outside pyproject's {dependency!r}; "
            "regenerate it: python -m devstack.image.lock"
        )


def test_lock_is_exact_sorted_and_without_rolegate_or_dev_tools() -> None:
    pins = parse_pins(lock.LOCK.read_text())  # raises on anything but name==version
    names = [normalize(pin.name) for pin in pins]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert not {"rolegate", "pytest", "mypy", "ruff", "openai", "boto3"} & set(names)
