"""``vllm``: the command of rolegate's vLLM-compatible test backend image, served by llama.cpp.

The operator runs a role's backend as ``vllm serve <model> --served-model-name NAME --host H
--port P [--tensor-parallel-size N] [...]`` (vLLM's OpenAI-compatible server). In the test
image (:mod:`devstack.image.backend`) this module is that command: it accepts the same command
line, serves the tiny GGUF model baked into the image (or ``<model>`` itself when it is a
``.gguf`` file) as ``NAME`` with llama-cpp-python's OpenAI-compatible app on ``H:P``, and adds
vLLM's ``GET /health`` (200 once the model is loaded: the app is created, and the model loaded,
before the port is bound). Flags it does not know are logged and ignored.

It runs on the image's python (llama_cpp, uvicorn and fastapi installed there) and imports them
only to serve, so :func:`parse` is usable anywhere (tests/unit/test_vllm_shim.py).

Reference: vLLM's ``vllm serve`` (docs.vllm.ai, "OpenAI-Compatible Server": --host, --port,
--served-model-name, --tensor-parallel-size, --max-model-len, GET /health).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MODEL_ENV", "ServeArgs", "main", "parse"]

DEFAULT_MODEL_ENV: Final = "ROLEGATE_TEST_GGUF"
"""The environment variable naming the baked-in GGUF file (set in the image's config)."""
_FALLBACK_MODEL: Final = "/models/tiny.gguf"
VERSION: Final = "0.0.0+rolegate.test"


@dataclass(frozen=True)
class ServeArgs:
    """What ``vllm serve`` was asked for."""

    model: str
    """The model named on the command line (a Hugging Face id, or a ``.gguf`` path)."""
    served_model_name: str
    """The name clients send as ``model`` (default: ``model``)."""
    host: str
    port: int
    tensor_parallel_size: int
    max_model_len: int
    """The context length in tokens (llama.cpp's ``n_ctx``)."""
    ignored: tuple[str, ...]
    """The arguments this shim does not implement, as given."""

    def gguf(self, environ: dict[str, str] | None = None) -> str:
        """The GGUF file to serve: ``model`` when it names a ``.gguf`` file that exists, else
        ``$ROLEGATE_TEST_GGUF`` (the image's tiny model), else ``/models/tiny.gguf``."""
        env = os.environ if environ is None else environ
        if self.model.endswith(".gguf") and os.path.isfile(self.model):
            return self.model
        return env.get(DEFAULT_MODEL_ENV) or _FALLBACK_MODEL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm", description="vLLM's command line, served by llama.cpp (rolegate test image)"
    )
    parser.add_argument("--version", action="version", version=VERSION)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model (OpenAI-compatible)")
    serve.add_argument("model_tag", nargs="?", help="the model (HF id or a .gguf path)")
    serve.add_argument("--model", dest="model_flag", help="the model, as a flag")
    serve.add_argument("--served-model-name", nargs="+", help="the name(s) clients use")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--max-model-len", type=int, default=4096)
    return parser


def parse(argv: Sequence[str]) -> ServeArgs:
    """Parse ``vllm`` arguments (without the program name).

    Raises:
        SystemExit: ``--help``/``--version`` (status 0), or no command, no model, a bad
            number (status 2; argparse prints why).
    """
    parser = _parser()
    known, unknown = parser.parse_known_args(list(argv))
    model = known.model_tag or known.model_flag
    if not model:
        parser.error("vllm serve needs a model (positional or --model)")
    if known.tensor_parallel_size < 1:
        parser.error(f"--tensor-parallel-size must be >= 1, not {known.tensor_parallel_size}")
    names = known.served_model_name or [model]
    return ServeArgs(
        model=model,
        served_model_name=names[0],
        host=known.host,
        port=known.port,
        tensor_parallel_size=known.tensor_parallel_size,
        max_model_len=known.max_model_len,
        ignored=tuple(unknown),
    )


def _serve(args: ServeArgs) -> None:  # pragma: no cover - runs in the image
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(
        model=args.gguf(),
        model_alias=args.served_model_name,
        n_ctx=args.max_model_len,
        n_threads=1,
        n_threads_batch=1,
        verbose=False,
    )
    app = create_app(
        server_settings=ServerSettings(host=args.host, port=args.port),
        model_settings=[model],
    )

    async def health() -> dict[str, str]:
        return {}

    app.add_api_route("/health", health, methods=["GET"])
    print(f"vllm (llama.cpp): {model.model} loaded as {args.served_model_name}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def main(argv: Sequence[str] | None = None) -> int:
    """``vllm serve ...``: parse, log what is ignored, serve until SIGTERM. Returns 0."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.ignored:
        print(f"vllm (llama.cpp): ignoring {' '.join(args.ignored)}", flush=True)
    if args.tensor_parallel_size > 1:
        print(
            f"vllm (llama.cpp): tensor parallel size {args.tensor_parallel_size}: "
            "one llama.cpp process serves it all",
            flush=True,
        )
    _serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
