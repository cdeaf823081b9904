"""`minedraft up`: target, draft and gateway as local processes; wait until all three are healthy;
stop all three on Ctrl-C / SIGTERM (or when one of them dies), leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from minedraft.rpc.grpc_common import check_health
from minedraft.runner.memory_flags import memory_argv


def service_commands(args) -> dict[str, list[str]]:
    py = [sys.executable, "-m"]
    target = py + ["target_service", "--port", str(args.target_port), "--device", args.device,
                   "--bind", args.bind_workers]
    draft = py + ["draft_service", "--port", str(args.draft_port), "--device", args.draft_device or args.device,
                  "--bind", args.bind_workers]
    target += memory_argv(args)
    draft += memory_argv(args)
    if args.target:
        target += ["--model", args.target]
    if args.draft:
        draft += ["--model", args.draft]
    if args.pin:  # the paper's two devices map onto two cores on a CPU machine
        target += ["--cpu-cores", "0", "--threads", "1"]
        draft += ["--cpu-cores", "1", "--threads", "1"]
    host = "127.0.0.1"
    gateway = py + ["gateway", "--port", str(args.port), "--bind", args.bind,
                    "--target", f"{host}:{args.target_port}", "--draft", f"{host}:{args.draft_port}",
                    "--mode", args.mode, "-k", str(args.k), "--transport", args.transport,
                    "--max-num-seqs", str(getattr(args, "max_num_seqs", 64)),
                    "--http-port", str(getattr(args, "http_port", 0))]
    if getattr(args, "served_model_name", None):
        gateway += ["--served-model-name", args.served_model_name]
    if getattr(args, "max_waiting", None) is not None:
        gateway += ["--max-waiting", str(args.max_waiting)]
    if getattr(args, "target_metrics_port", 0):
        target += ["--metrics-port", str(args.target_metrics_port)]
    if getattr(args, "draft_metrics_port", 0):
        draft += ["--metrics-port", str(args.draft_metrics_port)]
    return {"target": target, "draft": draft, "gateway": gateway}


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


def up(args) -> int:
    commands = service_commands(args)
    if args.api_key:  # through the environment, not argv: `ps` shows argv to every user
        from minedraft.rpc.auth import ENV_VAR, parse_keys

        os.environ[ENV_VAR] = ",".join(parse_keys(args.api_key))
    cluster = LocalCluster(commands, log_dir=args.log_dir)
    stopping = {"flag": False}

    def on_signal(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"minedraft up: starting target, draft and gateway ({args.device}, mode {args.mode}, k {args.k})",
          flush=True)
    cluster.start()
    try:
        cluster.wait_healthy({"target": f"127.0.0.1:{args.target_port}", "draft": f"127.0.0.1:{args.draft_port}",
                              "gateway": f"127.0.0.1:{args.port}"}, timeout=args.startup_timeout,
                             progress=lambda m: print(m, flush=True), should_stop=lambda: stopping["flag"])
        print(f"MineDraft is up: gateway at {args.bind}:{args.port} (gRPC, minedraft.v1.Gateway)\n"
              + (f"  OpenAI-compatible HTTP API at http://{args.bind}:{args.http_port}/v1 (/health, /metrics)\n"
                 if args.http_port else "") +
              f'  try: minedraft generate "def fibonacci(n):" --address 127.0.0.1:{args.port}\n'
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
