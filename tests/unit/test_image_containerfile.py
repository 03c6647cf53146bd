"""image/Containerfile (the conventional build, for machines that can pull python:3.11-slim;
it cannot be built here) installs what devstack/image installs: exactly the lock and the
rolegate wheel into the same site directory, with the same wrappers, user, environment and
label names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from devstack.image import build, recipe

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "image" / "Containerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _pip_installs() -> list[list[str]]:
    commands = []
    for word, rest in _final_stage():
        if word == "RUN":
            for command in rest.split("&&"):
                argv = shlex.split(command)
                if argv[:2] == ["pip", "install"]:
                    commands.append(argv[2:])
    return commands


def test_one_pip_install_of_exactly_the_lock_and_the_wheel() -> None:
    installs = _pip_installs()
    assert len(installs) == 1, installs
    args = installs[0]
    assert "--no-compile" in args
    assert args[args.index("--target") + 1] == recipe.SITE_DIR
    requirements = [args[i + 1] for i, arg in enumerate(args) if arg == "-r"]
    assert requirements == ["/tmp/requirements.txt"]
    copies = [rest.split() for word, rest in _final_stage() if word == "COPY"]
    assert ["image/requirements.txt", "/tmp/requirements.txt"] in copies
    options_with_values = {"--target", "-r"}
    positional = [
        arg
        for i, arg in enumerate(args)
        if not arg.startswith("-") and args[i - 1] not in options_with_values
    ]
    assert positional == ["/tmp/wheels/rolegate-*.whl"], "only the wheel besides the lock"
    assert not {"-c", "--upgrade", "-U", "--pre"} & set(args)


def test_the_wheel_is_built_from_the_same_sources() -> None:
    first = _instructions()[: _instructions().index(_final_stage()[0])]
    copied = {source for word, rest in first if word == "COPY" for source in rest.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "gateway", "operator"}
    assert set(build.WHEEL_SOURCES) == copied
    assert any("pip wheel" in rest and "--no-deps" in rest for word, rest in first if word == "RUN")


def test_same_env_user_workdir_wrappers_and_label_names() -> None:
    stage = _final_stage()
    env_text = " ".join(rest for word, rest in stage if word == "ENV")
    env = dict(pair.split("=", 1) for pair in shlex.split(env_text))
    assert env == dict(recipe.ENV)
    assert ("USER", f"{recipe.UID}:{recipe.UID}") in stage
    assert ("WORKDIR", "/opt/rolegate") in stage
    assert ("COPY", "image/bin/ /usr/local/bin/") in stage
    assert not [word for word, _ in stage if word in {"ENTRYPOINT", "CMD"}]
    label_text = " ".join(rest for word, rest in stage if word == "LABEL")
    names = {pair.split("=", 1)[0] for pair in shlex.split(label_text)}
    wanted = recipe.labels(
        version="v", revision="r", created_s=0, description="d", licenses="l", source="s"
    )
    assert names == set(wanted)
    run = " ".join(rest for word, rest in stage if word == "RUN")
    assert f"rolegate:x:{recipe.UID}:{recipe.UID}:" in run
    # Bytecode as devstack/image writes it: hash-based, never rewritten at run time.
    assert "compileall -q --invalidation-mode unchecked-hash /opt/rolegate/site" in run
