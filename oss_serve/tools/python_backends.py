"""Where model-written Python runs: a Docker container, a bubblewrap sandbox, or (dangerously) the host.

Each backend only knows how to start a CELL_DRIVER interpreter and how to kill it; the cell
protocol, timeouts and output caps live in python_interpreter.py.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from oss_serve import env
from oss_serve.tools.python_interpreter import CELL_DRIVER, kill_process_group

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_IMAGE = "python:3.11"
NOBODY_UID = 65534


@dataclass
class InterpreterLaunch:
    """How to start one interpreter, and what to clean up after it."""
    command: list[str]
    spawn_options: dict[str, Any] = field(default_factory=dict)
    container_name: str | None = None
    scratch_dir: str | None = None


@dataclass
class ResourceLimits:
    memory_bytes: int = 1 << 30
    processes: int = 64
    file_size_bytes: int = 64 << 20
    tmp_size_bytes: int = 256 << 20
    cpu_seconds: int = 130  # CPU time a single interpreter may burn over its whole life


class PythonBackend(ABC):
    name: str
    has_network: bool = False
    files_note: str = "Files can be saved under /tmp."

    def __init__(self, limits: ResourceLimits | None = None) -> None:
        self.limits = limits or ResourceLimits()

    @abstractmethod
    def launch(self) -> InterpreterLaunch:
        """argv of a python running CELL_DRIVER (the end marker is appended) and spawn options."""

    async def kill(self, process: asyncio.subprocess.Process, launch: InterpreterLaunch) -> None:
        await kill_process_group(process)

    def release(self, launch: InterpreterLaunch) -> None:
        """Frees what launch() set up for one interpreter (e.g. a scratch folder); nothing by default."""
        return None


class DockerBackend(PythonBackend):
    """A fresh container per interpreter: no network, memory, CPU and pids limits, read-only root."""

    name = "docker"

    def __init__(self, image: str | None = None, limits: ResourceLimits | None = None) -> None:
        super().__init__(limits)
        self.image = image or env.python_docker_image() or DEFAULT_DOCKER_IMAGE
        self.docker = shutil.which("docker") or "docker"

    def launch(self) -> InterpreterLaunch:
        container = "oss-serve-python-" + secrets.token_hex(8)
        limits = self.limits
        command = [
            self.docker, "run", "--rm", "-i", "--pull", "never", "--name", container,
            "--network", "none", "--memory", str(limits.memory_bytes), "--memory-swap", str(limits.memory_bytes),
            "--cpus", "1", "--pids-limit", str(limits.processes), "--read-only",
            "--tmpfs", f"/tmp:rw,size={limits.tmp_size_bytes},mode=1777", "--workdir", "/tmp",
            "--user", f"{NOBODY_UID}:{NOBODY_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--ulimit", f"fsize={limits.file_size_bytes}", "--ulimit", "core=0",
            "--env", "HOME=/tmp", "--label", "oss-serve=python-tool",
            self.image, "python3", "-u", "-I", "-c", CELL_DRIVER,
        ]
        return InterpreterLaunch(command, container_name=container)

    async def kill(self, process: asyncio.subprocess.Process, launch: InterpreterLaunch) -> None:
        # Killing the `docker run` client does not stop the container; removing it does.
        if launch.container_name is not None:
            remover = await asyncio.create_subprocess_exec(
                self.docker, "rm", "-f", launch.container_name,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await remover.wait()
        await kill_process_group(process)

    @staticmethod
    def unavailable_reason(image: str | None = None) -> str | None:
        docker = shutil.which("docker")
        if docker is None:
            return "the docker command is not installed"
        try:
            info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"no Docker daemon answers ({error})"
        if info.returncode != 0:
            return "no Docker daemon answers: " + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        if image is not None:
            found = subprocess.run([docker, "image", "inspect", image], capture_output=True, timeout=10)
            if found.returncode != 0:
                return f"the Docker image {image!r} is not present locally (pull or import it first)"
        return None


def _host_python_for_sandbox() -> str | None:
    """A system python under /usr: the only tree the sandbox exposes."""
    return next((path for path in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(path)), None)


def _as_nobody_if_root() -> dict[str, Any]:
    """Spawn options that run the sandbox as `nobody` when the server runs as root (see SandboxBackend)."""
    return {"user": NOBODY_UID, "group": NOBODY_UID, "extra_groups": []} if os.getuid() == 0 else {}


def _processes_owned_by(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


class SandboxBackend(PythonBackend):
    """bubblewrap on the host: read-only /usr, private tmpfs /tmp, no network, no home or server files.

    When the server runs as root the sandbox runs as `nobody`, because the kernel does not apply
    the process-count limit to root (fork bombs would be uncontained).
    """

    name = "sandbox"

    def __init__(self, limits: ResourceLimits | None = None) -> None:
        super().__init__(limits)
        self.bwrap = shutil.which("bwrap") or "bwrap"
        self.prlimit = shutil.which("prlimit") or "prlimit"
        self.python = _host_python_for_sandbox() or "/usr/bin/python3"

    def _filesystem_args(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = "/" + top
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        # Only the /etc files the dynamic loader and python's startup read; no passwd, no secrets.
        etc_files = ["/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", *glob.glob("/etc/python3*")]
        for path in etc_files:
            args += ["--ro-bind-try", path, path]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(self.limits.tmp_size_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp",
                 "--remount-ro", "/"]
        return args

    def launch(self) -> InterpreterLaunch:
        limits = self.limits
        spawn = {**_as_nobody_if_root(), "cwd": "/"}
        sandbox_uid = spawn.get("user", os.getuid())
        # The process limit counts every process of the uid, so leave room for the ones already running.
        process_limit = _processes_owned_by(sandbox_uid) + limits.processes
        command = [
            self.prlimit, f"--as={limits.memory_bytes}", f"--nproc={process_limit}",
            f"--fsize={limits.file_size_bytes}", f"--cpu={limits.cpu_seconds}", "--core=0",
            self.bwrap, *self._filesystem_args(),
            "--unshare-all", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            self.python, "-u", "-I", "-c", CELL_DRIVER,
        ]
        return InterpreterLaunch(command, spawn)

    @staticmethod
    def unavailable_reason() -> str | None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return "bubblewrap (bwrap) is not installed"
        if shutil.which("prlimit") is None:
            return "prlimit (util-linux) is not installed"
        if _host_python_for_sandbox() is None:
            return "no system python3 under /usr for the sandbox to run"
        try:
            sandbox = SandboxBackend()
            probe = subprocess.run([bwrap, *sandbox._filesystem_args(), "--unshare-all", "--die-with-parent",
                                    sandbox.python, "-c", "pass"], capture_output=True, text=True, timeout=10, cwd="/",
                                   **_as_nobody_if_root())
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bubblewrap cannot start ({error})"
        if probe.returncode != 0:
            return "bubblewrap cannot create namespaces here: " + probe.stderr.strip()
        return None


class UvBackend(PythonBackend):
    """Runs on the host with `uv run --no-project python`: no isolation beyond a scratch folder."""

    name = "uv"
    has_network = True
    files_note = "The working directory is a scratch folder that is deleted when the conversation ends."

    def __init__(self, limits: ResourceLimits | None = None) -> None:
        super().__init__(limits)
        self.uv = shutil.which("uv") or "uv"

    def launch(self) -> InterpreterLaunch:
        scratch = tempfile.mkdtemp(prefix="oss-serve-python-")
        # The model's code should not read the server's API keys from its environment.
        command = [self.uv, "run", "--no-project", "--quiet", "python", "-u", "-c", CELL_DRIVER]
        return InterpreterLaunch(command, {"cwd": scratch, "env": env.environment_without_secrets()},
                                 scratch_dir=scratch)

    def release(self, launch: InterpreterLaunch) -> None:
        if launch.scratch_dir:
            shutil.rmtree(launch.scratch_dir, ignore_errors=True)

    @staticmethod
    def unavailable_reason() -> str | None:
        return None if shutil.which("uv") else "uv is not installed"


def choose_python_backend(requested: str | None, limits: ResourceLimits | None = None,
                          docker_image: str | None = None) -> PythonBackend | None:
    """The backend to use, or None (python tool off) with a warning naming the fixes.

    Explicit choice: `requested`, else PYTHON_EXECUTION_BACKEND. Unset: docker when a daemon
    answers, else the bubblewrap sandbox; never the bare host unless asked for.
    """
    choice = (requested or env.python_backend() or "").strip().lower()
    choice = "uv" if choice == "dangerously_use_uv" else choice
    image = docker_image or env.python_docker_image() or DEFAULT_DOCKER_IMAGE
    if choice:
        unavailable = {"docker": lambda: DockerBackend.unavailable_reason(image),
                       "sandbox": SandboxBackend.unavailable_reason, "uv": UvBackend.unavailable_reason}
        if choice not in unavailable:
            raise ValueError(f"unknown python backend {choice!r}: use docker, sandbox or uv")
        reason = unavailable[choice]()
        if reason:
            raise ValueError(f"python backend {choice!r} was requested but {reason}")
        if choice == "docker":
            return DockerBackend(docker_image, limits)
        if choice == "sandbox":
            return SandboxBackend(limits)
        logger.warning("!!! The python tool runs model-written code DIRECTLY ON THIS HOST with uv, with the "
                       "server's user rights and network access. Use --python-backend sandbox or docker unless "
                       "you trust every prompt. !!!")
        return UvBackend(limits)
    docker_reason = DockerBackend.unavailable_reason(image)
    if docker_reason is None:
        return DockerBackend(docker_image, limits)
    sandbox_reason = SandboxBackend.unavailable_reason()
    if sandbox_reason is None:
        logger.info("python tool: using the bubblewrap sandbox (%s)", docker_reason)
        return SandboxBackend(limits)
    logger.warning("python tool disabled: Docker is not usable (%s) and the sandbox is not usable (%s). "
                   "Start a Docker daemon, or install bubblewrap (apt-get install bubblewrap), or choose "
                   "--python-backend uv to run code on the host.", docker_reason, sandbox_reason)
    return None
