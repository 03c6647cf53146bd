"""The test backend image's ``vllm`` command line (devstack/image/vllm_shim.py), parsed without
serving, and the pure parts of the image and the fake GPU plugin (cache keys, argv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devstack.image import backend, vllm_shim
from devstack.k8s import build, nodegpu

ROOT = Path(__file__).resolve().parents[2]


def test_the_operator_s_command_line_is_understood() -> None:
    # What the operator renders for serve: {image, gpus: 2, args: [--max-model-len, 2048]}.
    args = vllm_shim.parse(
        [
            *("serve", "Qwen/Qwen2.5-0.5B-Instruct"),
            *("--served-model-name", "Qwen/Qwen2.5-0.5B-Instruct"),
            *("--host", "0.0.0.0", "--port", "8000"),
            *("--tensor-parallel-size", "2", "--max-model-len", "2048"),
        ]
    )
    assert args == vllm_shim.ServeArgs(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        served_model_name="Qwen/Qwen2.5-0.5B-Instruct",
        host="0.0.0.0",
        port=8000,
        tensor_parallel_size=2,
        max_model_len=2048,
        ignored=(),
    )


def test_defaults_and_unknown_flags_are_kept_to_be_logged() -> None:
    args = vllm_shim.parse(
        ["serve", "m", "--gpu-memory-utilization", "0.9", "--enforce-eager", "--dtype=half"]
    )
    assert (args.served_model_name, args.host, args.port) == ("m", "0.0.0.0", 8000)
    assert args.tensor_parallel_size == 1
    assert args.max_model_len == 4096
    assert args.ignored == ("--gpu-memory-utilization", "0.9", "--enforce-eager", "--dtype=half")


def test_the_model_may_be_a_flag_and_the_first_served_name_wins() -> None:
    args = vllm_shim.parse(["serve", "--model", "m", "--served-model-name", "a", "b", "-tp", "4"])
    assert (args.model, args.served_model_name, args.tensor_parallel_size) == ("m", "a", 4)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["serve"],  # no model
        ["serve", "m", "--port", "eighty"],
        ["serve", "m", "--tensor-parallel-size", "0"],
        ["run", "m"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        vllm_shim.parse(argv)
    assert exited.value.code == 2
    assert "usage: vllm" in capsys.readouterr().err


def test_help_exits_0_without_serving(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        vllm_shim.main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--served-model-name" in out
    assert "--tensor-parallel-size" in out


def test_the_gguf_served_is_the_baked_model_unless_a_gguf_file_is_named(tmp_path: Path) -> None:
    args = vllm_shim.parse(["serve", "org/model"])
    assert args.gguf({}) == backend.MODEL_PATH
    assert args.gguf({vllm_shim.DEFAULT_MODEL_ENV: "/m/x.gguf"}) == "/m/x.gguf"
    model = tmp_path / "own.gguf"
    model.write_bytes(b"GGUF")
    assert vllm_shim.parse(["serve", str(model)]).gguf({}) == str(model)
    assert vllm_shim.parse(["serve", str(tmp_path / "absent.gguf")]).gguf({}) == backend.MODEL_PATH


def test_the_image_tag_is_its_inputs_digest() -> None:
    digest = backend.inputs_digest()
    assert len(digest) == 16
    assert int(digest, 16) >= 0
    assert backend.ref() == f"localhost/rolegate-test-vllm:{digest}"
    assert backend.inputs_digest() == digest  # stable


def test_plugin_argv() -> None:
    argv = nodegpu.plugin_argv(Path("/c/rolegate-fake-gpu-plugin"), count=4)
    assert argv == [
        "/c/rolegate-fake-gpu-plugin",
        "-count=4",
        "-resource=nvidia.com/gpu",
        "-socket=rolegate-fake-gpu.sock",
    ]
    with pytest.raises(ValueError, match="at least one device"):
        nodegpu.plugin_argv(Path("/p"), count=0)


def test_the_plugin_cache_key_is_build_sh_s() -> None:
    script = f'source <(sed -n "/^gpu_dest=/,/^}}/p" {build.BUILD_SCRIPT}); '
    script += f"here={build.BUILD_SCRIPT.parent}; gpu_expected_stamp"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == nodegpu.expected_stamp()
    printed = subprocess.run(
        ["bash", str(build.BUILD_SCRIPT), "--print-gpu-plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == str(nodegpu.binary())
