"""`minedraft up`: target, draft and gateway as local processes; wait until all three are healthy;
stop all three on Ctrl-C / SIGTERM (or when one of them dies), leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from minedraft.config import UpConfig
from minedraft.config.flags import from_flat, to_argv
from minedraft.rpc.grpc_common import check_health


def service_commands(config: UpConfig) -> dict[str, list[str]]:
    """The three command lines: each service's config derived from `up`'s, as flags (defaults left out)."""
    if not isinstance(config, UpConfig):  # a namespace with some of up's flags (the bench's)
        config = from_flat(UpConfig, vars(config))
    py = [sys.executable, "-m"]
    return {"target": py + ["target_service", *to_argv(config.target_config())],
            "draft": py + ["draft_service", *to_argv(config.draft_config())],
            "gateway": py + ["gateway", *to_argv(config.gateway_config())]}


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `minedraft up` itself is killed, so nothing is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalCluster:
    def __init__(self, commands: dict[str, list[str]], log_dir: str | None = None):
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name, cmd in self.commands.items():
            out = None
            if self.log_dir:
                out = open(os.path.join(self.log_dir, f"{name}.log"), "w")
            self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                              preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def wait_healthy(self, addresses: dict[str, str], timeout: float = 600.0, progress=print,
                     should_stop=lambda: False) -> None:
        deadline = time.monotonic() + timeout
        pending = dict(addresses)
        while pending:
            if should_stop():
                raise RuntimeError("interrupted during start-up")
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up")
            for name, addr in list(pending.items()):
                if check_health(addr, timeout=1.0):
                    progress(f"  {name:8s} healthy at {addr}")
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {', '.join(pending)}")
            time.sleep(0.3)

    def first_exited(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self, grace: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def up(config: UpConfig) -> int:
    commands = service_commands(config)
    spec, keys, http_port = config.speculation, config.front_door.api_key, config.front_door.http_port
    if keys:  # through the environment, not argv: `ps` shows argv to every user
        from minedraft.rpc.auth import ENV_VAR, parse_keys

        os.environ[ENV_VAR] = ",".join(parse_keys(keys))
    cluster = LocalCluster(commands, log_dir=config.log_dir)
    stopping = {"flag": False}

    def on_signal(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"minedraft up: starting target, draft and gateway ({config.device}, mode {spec.mode}, k {spec.k})",
          flush=True)
    cluster.start()
    try:
        cluster.wait_healthy({"target": f"127.0.0.1:{config.target_port}", "draft": f"127.0.0.1:{config.draft_port}",
                              "gateway": f"127.0.0.1:{config.port}"}, timeout=config.startup_timeout,
                             progress=lambda m: print(m, flush=True), should_stop=lambda: stopping["flag"])
        print(f"MineDraft is up: gateway at {config.bind}:{config.port} (gRPC, minedraft.v1.Gateway)\n"
              + (f"  OpenAI-compatible HTTP API at http://{config.bind}:{http_port}/v1 (/health, /metrics)\n"
                 if http_port else "") +
              f'  try: minedraft generate "def fibonacci(n):" --address 127.0.0.1:{config.port}\n'
              "  Ctrl-C stops all three.", flush=True)
        while not stopping["flag"]:
            dead = cluster.first_exited()
            if dead:
                print(f"minedraft up: {dead} exited (code {cluster.procs[dead].returncode}); stopping the others",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(0.3)
        print("minedraft up: stopping", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"minedraft up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop()
        print("minedraft up: all three stopped", flush=True)
