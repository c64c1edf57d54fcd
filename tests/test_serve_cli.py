"""`resnext-compile serve` as a user runs it: a subprocess, provider logged, clean SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_serve_helpers import write_tiny_onnx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_with_sigterm(process: subprocess.Popen) -> str:
    """Stop a `serve` process as a service manager would; its output, once it exited cleanly."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it
    assert process.returncode in (0, -signal.SIGTERM), output
    return output


def test_serve_command_logs_provider_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx", spec_name="tiny")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"label{index}\n" for index in range(10)))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "resnext_compiler.cli", "serve", str(model), "--port", str(port),
         "--labels", str(labels), "--max-batch", "4", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        config = httpx.get(f"http://127.0.0.1:{port}/v2/models/tiny/config").json()
        assert config["max_batch_size"] == 4
        output = stop_with_sigterm(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Application shutdown complete" in output
    # the start-up log names the classes served, from --labels (issue 22: was "classes none")
    assert "classes    10: label0, label1, label2" in output and f"(from {labels})" in output
    assert "on CPUExecutionProvider" in output and f"127.0.0.1:{port}" in output


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys, resnext_compiler.cli, resnext_compiler.runtimes.serve.server, "
            "resnext_compiler.runtimes.serve.app, resnext_compiler.runtimes.serve.grpc_service; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_serve_refuses_a_model_whose_input_is_not_an_image_batch(tmp_path: Path,
                                                                  run_cli) -> None:
    """The one input-layout rule (artifact_format.input_layout) answers for serve too: a 2-D
    input is refused with exit 2 before anything is bound."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])])
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    started = time.perf_counter()
    result = run_cli("serve", path, "--port", "0")
    assert result.code == 2, result.err
    assert result.err.strip() == (f"error: {path}: the model input must be 4-D with static "
                                  "sizes after the batch, got [None, 10]"), result.err
    assert time.perf_counter() - started < 30
