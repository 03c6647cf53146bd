"""Config source for running without Kubernetes: LLMRole and Secret manifests on disk.

Owns reading a file or directory of (multi-document) YAML — exactly what one would
``kubectl apply`` — into a :class:`GatewayConfig`, and :class:`ManifestsSource`, which
polls the files and feeds ``Runtime.apply`` on change. Every error names the file, the
document's kind and namespace/name, and the field.

A Secret labelled ``rolegate.dev/api-key: "true"`` is a client API key (see
:mod:`rolegate_gateway.apikeys`): only its hash goes into the config, and its ``apiKey`` is
no role's credential. One whose key is missing, not base64 UTF-8 or too short is left out
with a WARNING naming the file and document (never the key), so one bad key does not stop
a config from loading.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
import yaml.reader
from pydantic import ValidationError

from rolegate_gateway import apikeys, errors, roles
from rolegate_gateway.api import API_VERSION, KIND, LLMRole
from rolegate_gateway.config import API_KEY_DATA_KEY, ApiKey, Credentials, GatewayConfig

__all__ = ["ConfigSink", "ManifestsSource", "client_key_var", "env_var_name", "load_manifests"]

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml", ".json")
#: libyaml's safe loader when PyYAML was built with it (its wheels are): the pure-Python
#: one takes ~0.55 s for 1,000 LLMRoles, this one ~0.08 s.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: A quoted word in a PyYAML problem phrase: a character (``'\t'``), a token
#: (``'<scalar>'``), or text of the file (an alias, anchor, tag or tag handle).
_QUOTED = re.compile(r""" ?('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_TOKEN = re.compile(r"'<[a-z ]+>'")


@dataclass(frozen=True, slots=True)
class _Doc:
    path: Path
    index: int
    body: dict[str, Any]

    def where(self) -> str:
        meta = self.body.get("metadata") or {}
        ns = meta.get("namespace", "default") if isinstance(meta, dict) else "?"
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        return f"{self.path} (document {self.index + 1}, {self.body.get('kind')} {ns}/{name})"


def env_var_name(secret: str, key: str) -> str:
    """The environment variable ``--env-secrets`` reads for one Secret key.

    ``openai-creds`` / ``apiKey`` -> ``OPENAI_CREDS_API_KEY``.
    """
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key)
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{secret}_{snake}").upper()


def client_key_var(secret: str) -> str:
    """The environment variable ``--env-secrets`` reads for a client API key Secret's key:
    ``ci-pipeline`` -> ``CI_PIPELINE_CLIENT_API_KEY`` (never a role credential's variable,
    ``CI_PIPELINE_API_KEY``)."""
    return env_var_name(secret, "clientApiKey")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
    if path.is_file():
        return [path]
    raise errors.ConfigError(f"{path}: no such file or directory")


def _documents(files: Iterable[Path]) -> list[_Doc]:
    docs = []
    for path in files:
        for index, body in enumerate(_load(path)):
            if body is None:
                continue
            if not isinstance(body, dict):
                raise errors.ConfigError(f"{path} (document {index + 1}): not a mapping")
            docs.append(_Doc(path, index, body))
    return docs


def _load(path: Path) -> list[Any]:
    """Every YAML document of one file, in order (``None`` for an empty one).

    PyYAML's own error text quotes the offending line, which may hold a key (a
    mis-indented ``apiKey: sk-…``), and some of its phrases quote an alias, anchor or tag.
    So the message is rebuilt from the error's parts: file, line and column (1-based),
    and the problem phrase with any quoted file text left out. The PyYAML error is not
    chained (``from None``): a traceback would print it.

    Raises:
        errors.ConfigError: the file cannot be read, is not UTF-8, or is not valid YAML.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise errors.ConfigError(f"{path}: not UTF-8 text: invalid byte at line {line}") from None
    loaded: list[Any] = []
    where = str(path)
    try:
        for body in yaml.load_all(text, Loader=_YAML_LOADER):
            loaded.append(body)
    except yaml.MarkedYAMLError as exc:
        problem = _marked(exc)
    except yaml.reader.ReaderError as exc:
        problem = _reader(exc, text)
    except yaml.YAMLError as exc:
        problem = type(exc).__name__
    except RecursionError:
        where = f"{path} (document {len(loaded) + 1})"
        problem = "nested too deeply"
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        # SafeConstructor converting a scalar (int(), float(), datetime(), a dict
        # lookup): these messages quote the value, and carry no mark.
        where = f"{path} (document {len(loaded) + 1})"
        problem = (
            f"a value cannot be converted to its type ({type(exc).__name__}): a date "
            "such as 2024-13-01, or an !!int, !!float, !!bool or !!timestamp tag on "
            "another value"
        )
    else:
        return loaded
    raise errors.ConfigError(f"{where}: invalid YAML: {problem}") from None


def _phrase(text: str) -> str:
    """A PyYAML problem or context phrase without file text: a quoted single character
    (``'\\t'``) or token name (``'<block end>'``) stays, any other quoted word goes."""

    def keep(match: re.Match[str]) -> str:
        quoted = match.group(1)
        if _TOKEN.fullmatch(quoted):
            return match.group(0)
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            return ""
        return match.group(0) if isinstance(value, str) and len(value) <= 1 else ""

    return _QUOTED.sub(keep, text)


def _marked(exc: yaml.MarkedYAMLError) -> str:
    """``while scanning a quoted scalar at line 2, column 9: found unexpected end of
    stream at line 4, column 1``: PyYAML's order, its marks 1-based, no snippet."""
    problem_at = exc.problem_mark and (exc.problem_mark.line, exc.problem_mark.column)
    parts = []
    for phrase, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        words = [_phrase(phrase)] if phrase else []
        if mark is not None and (
            mark is exc.problem_mark or problem_at != (mark.line, mark.column)
        ):
            words.append(f"at line {mark.line + 1}, column {mark.column + 1}")
        if words:
            parts.append(" ".join(words))
    return ": ".join(parts) or type(exc).__name__


def _reader(exc: yaml.reader.ReaderError, text: str) -> str:
    """An unacceptable character, by code point and place. The place is found in
    ``text``: PyYAML counts characters, libyaml bytes."""
    if not isinstance(exc.character, int):
        return f"unacceptable character: {exc.reason}"
    offset = text.find(chr(exc.character))
    where = ""
    if offset >= 0:
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        where = f" at line {line}, column {column}"
    return f"unacceptable character #x{exc.character:04x}{where}: {exc.reason}"


def _secret_data(doc: _Doc, *, skip: str | None = None) -> dict[str, str]:
    """A Secret's keys, ``data`` base64-decoded and ``stringData`` winning, as the API does;
    without the key ``skip`` (the ``apiKey`` of a client API-key Secret: read apart)."""
    out: dict[str, str] = {}
    data = doc.body.get("data") or {}
    string_data = doc.body.get("stringData") or {}
    if not isinstance(data, dict) or not isinstance(string_data, dict):
        raise errors.ConfigError(f"{doc.where()}: data and stringData must be mappings")
    data = {k: v for k, v in data.items() if k != skip}
    string_data = {k: v for k, v in string_data.items() if k != skip}
    for key, value in data.items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise errors.ConfigError(
                f"{doc.where()}: data.{key} is not base64-encoded UTF-8"
            ) from exc
    out.update({str(k): str(v) for k, v in string_data.items()})
    return out


def load_manifests(
    path: Path, *, env_secrets: bool = False, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read every LLMRole and Secret under ``path`` into one gateway config.

    Documents of other kinds are ignored. With ``env_secrets``, a Secret key comes from
    the environment variable :func:`env_var_name` when that is set (and wins over the
    manifest), so local runs need no key on disk.

    A Secret labelled ``rolegate.dev/api-key: "true"`` becomes a client API key of
    :attr:`GatewayConfig.api_keys` (its hash, roles from ``rolegate.dev/roles``; with
    ``env_secrets`` its variable :func:`client_key_var` wins: not a role's variable, so a
    client's key never becomes a role's upstream key). One whose key
    is missing, undecodable, empty or shorter than ``MIN_API_KEY_CHARS`` is left out and
    logged (WARNING: file, document, reason; never the key).

    Raises:
        errors.ConfigError: an unreadable or non-UTF-8 file, invalid YAML (file, line and
            column, never the line's text), an invalid LLMRole, a missing Secret or key,
            a duplicate role (both documents); the message names file, kind,
            namespace/name and field.
    """
    env = os.environ if environ is None else environ
    docs = _documents(_files(path))
    secrets: dict[tuple[str, str], tuple[_Doc, dict[str, str]]] = {}
    api_keys: dict[tuple[str, str], ApiKey | None] = {}
    llmroles: list[tuple[_Doc, LLMRole]] = []
    for doc in docs:
        kind, api_version = doc.body.get("kind"), doc.body.get("apiVersion")
        if kind == "Secret" and api_version == "v1":
            meta = doc.body.get("metadata") or {}
            key = (str(meta.get("namespace", "default")), str(meta.get("name", "")))
            client_key = apikeys.is_api_key(meta.get("labels") if isinstance(meta, dict) else None)
            secrets[key] = (doc, _secret_data(doc, skip=API_KEY_DATA_KEY if client_key else None))
            if client_key:
                api_keys[key] = _api_key(doc, key, env if env_secrets else None)
            else:
                api_keys.pop(key, None)  # a later document of the same Secret wins
        elif kind == KIND:
            if api_version != API_VERSION:
                raise errors.ConfigError(
                    f"{doc.where()}: apiVersion {api_version!r} is not {API_VERSION!r}"
                )
            try:
                llmroles.append((doc, LLMRole.model_validate(doc.body)))
            except ValidationError as exc:
                raise errors.ConfigError(errors.describe_validation(exc, doc.where())) from exc
    _check_unique(llmroles)

    configs = []
    for doc, role in llmroles:
        try:
            creds = _credentials(role, secrets, env if env_secrets else None)
            configs.append(roles.role_config(role, creds))
        except ValueError as exc:
            raise errors.ConfigError(f"{doc.where()}: {exc}") from exc
    keys = tuple(v for _, v in sorted(api_keys.items()) if v is not None)
    try:
        return GatewayConfig(roles=tuple(configs), api_keys=keys)
    except ValidationError as exc:
        raise errors.ConfigError(errors.describe_validation(exc, str(path))) from exc


def _api_key(doc: _Doc, key: tuple[str, str], env: Mapping[str, str] | None) -> ApiKey | None:
    """The client API key of a labelled Secret document ``key`` (namespace, name), or None
    (logged) when it is none. With ``env``, its variable :func:`client_key_var` wins."""
    meta = doc.body.get("metadata")
    string_data = doc.body.get("stringData")
    if env is not None:
        value = env.get(client_key_var(key[1]))
        if value:
            given = string_data if isinstance(string_data, dict) else {}
            string_data = {**given, API_KEY_DATA_KEY: value}
    found = apikeys.api_key_from(
        *key,
        annotations=meta.get("annotations") if isinstance(meta, dict) else None,
        data=doc.body.get("data"),
        string_data=string_data,
    )
    if isinstance(found, str):
        log.warning("%s: API key left out of the config: %s", doc.where(), found)
        return None
    return found


def _check_unique(llmroles: Iterable[tuple[_Doc, LLMRole]]) -> None:
    """Refuse a role name defined twice, naming both documents. A client sends only the
    name, so it must be unique across namespaces (``GatewayConfig`` checks it too, but
    knows no files).

    Raises:
        errors.ConfigError: ``duplicate role 'x': a.yaml (document 1, LLMRole default/x)
            and b.yaml (document 2, LLMRole ml/x); …``, plus the names of any further
            duplicates.
    """
    first: dict[str, _Doc] = {}
    clashes: dict[str, _Doc] = {}
    for doc, role in llmroles:
        name = role.metadata.name
        if name not in first:
            first[name] = doc
        elif name not in clashes:
            clashes[name] = doc
    if not clashes:
        return
    name, again = next(iter(clashes.items()))
    message = (
        f"duplicate role {name!r}: {first[name].where()} and {again.where()}; "
        "role names are unique across namespaces"
    )
    if len(clashes) > 1:
        message += "; also duplicated: " + ", ".join(repr(n) for n in list(clashes)[1:])
    raise errors.ConfigError(message)


def _credentials(
    role: LLMRole,
    secrets: Mapping[tuple[str, str], tuple[_Doc, dict[str, str]]],
    env: Mapping[str, str] | None,
) -> Credentials:
    ref = role.spec.credentials.secret_ref
    if ref is None:
        return Credentials()
    found = secrets.get((role.metadata.namespace, ref.name))
    data = dict(found[1]) if found else {}
    if env is not None:
        required, optional = roles.required_keys(role.spec.binding)
        for key in required + optional:
            value = env.get(env_var_name(ref.name, key))
            if value:
                data[key] = value
    if found is None and not data:
        hint = ""
        if env is not None:
            hint = f" and no environment variable {env_var_name(ref.name, 'apiKey')}"
        raise ValueError(
            f"spec.credentials.secretRef: Secret {role.metadata.namespace}/{ref.name} "
            f"not found in the manifests{hint}"
        )
    try:
        return roles.credentials_from(
            role.spec.binding, data, secret=f"{role.metadata.namespace}/{ref.name}"
        )
    except roles.MissingKey as exc:
        meta = found[0].body.get("metadata") if found else None
        if isinstance(meta, dict) and apikeys.is_api_key(meta.get("labels")):
            raise roles.MissingKey(
                exc.key,
                f"{exc}; this Secret is labelled rolegate.dev/api-key=true: its apiKey is a "
                "client's key, which is never sent upstream (put the role's key in a Secret "
                "of its own)",
            ) from None
        raise


class ConfigSink(Protocol):
    """What a config source feeds: the runtime's ``apply`` and ``refuse``, and what it
    says about its own health (``source_failed``, ``source_restarted``: /readyz, /status)."""

    def apply(self, config: GatewayConfig) -> object: ...

    def refuse(self, reason: str, *, source: str) -> None: ...

    def source_failed(self, reason: str) -> None: ...

    def source_restarted(self) -> None: ...


class ManifestsSource:
    """Polls manifest files and feeds the sink whenever their content changes.

    A change is seen through (path, mtime_ns, size) of every file, so editors that
    replace files by rename are seen too. Reading is done off the event loop.
    """

    def __init__(
        self,
        path: Path,
        sink: ConfigSink,
        *,
        interval_s: float = 1.0,
        env_secrets: bool = False,
    ) -> None:
        self.path = path
        self.sink = sink
        self.interval_s = interval_s
        self.env_secrets = env_secrets
        self._seen: object = None

    def _snapshot(self) -> object:
        try:
            files = _files(self.path)
        except errors.ConfigError:
            return None
        out = []
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _read(self) -> GatewayConfig | errors.ConfigError:
        self._seen = self._snapshot()
        try:
            return load_manifests(self.path, env_secrets=self.env_secrets)
        except errors.ConfigError as exc:
            return exc

    def _hand_over(self, result: GatewayConfig | errors.ConfigError) -> bool:
        if isinstance(result, errors.ConfigError):
            self.sink.refuse(str(result), source=str(self.path))
            return False
        try:
            self.sink.apply(result)
        except BaseException:
            self._seen = None  # not handed over: read again on the next poll
            raise
        return True

    async def load_once(self) -> bool:
        """Load the files now (off the loop) and feed the sink; True when a config was
        handed over."""
        return self._hand_over(await asyncio.to_thread(self._read))

    async def run(self) -> None:
        """Poll forever (until cancelled), reloading on change. Reads run off the loop."""
        while True:
            await asyncio.sleep(self.interval_s)
            snapshot = await asyncio.to_thread(self._snapshot)
            if snapshot != self._seen:
                log.info("manifests changed, reloading", extra={"source": str(self.path)})
                self._hand_over(await asyncio.to_thread(self._read))

    async def close(self) -> None:
        """Nothing to release: files are opened only while read."""
