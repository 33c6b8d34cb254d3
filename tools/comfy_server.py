"""A real ComfyUI server in a subprocess: loopback, a free port, a base directory of its own.

Used by tests/server and scripts/run_workflow.py. The pack (and, for stand-in runs, the test-only
tiny-CLIP node) is linked into the base directory's custom_nodes.
"""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui: Path, base: Path, standins: bool, log: Path, models: Path | None = None):
        self.comfyui, self.base, self.port = Path(comfyui), Path(base), free_port()
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        for name, target in (("freefuse", PACK), ("zz_freefuse_standins", PACK / "tools" / "standin_nodes")):
            if name == "freefuse" or standins:
                link = nodes / name
                if not link.exists():
                    link.symlink_to(target, target_is_directory=True)
        if models is not None:  # the user's own model files
            (self.base / "models").symlink_to(models, target_is_directory=True)
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-api-nodes", "--disable-auto-launch"],
            cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url(path), data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}; see {self.log.name}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s; see {self.log.name}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queues an API prompt and returns its history entry once it has finished."""
        return self.wait(self.post("/prompt", {"prompt": prompt})["prompt_id"], timeout)

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The history entry of a queued prompt, once it has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
