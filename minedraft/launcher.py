"""`minedraft up`: target, draft and gateway as local processes; wait until all three are healthy;
then supervise them: a child that exits is restarted with backoff (the gateway's recovery resumes the
streams; `--no-restart`: stop all three instead). Ctrl-C / SIGTERM stops the gateway first (it drains
its streams) and the workers after it, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from minedraft.config import UpConfig
from minedraft.config.flags import from_flat, to_argv
from minedraft.rpc.grpc_common import check_health, port_in_use

# Restart backoff: the first restart at once (the streams wait for it), doubling up to the cap; a
# child that stayed up this long starts again from the first step.
FIRST_RESTART_S, MAX_RESTART_S, STABLE_S = 0.5, 30.0, 60.0


def service_commands(config: UpConfig) -> dict[str, list[str]]:
    """The three command lines: each service's config derived from `up`'s, as flags (defaults left out)."""
    if not isinstance(config, UpConfig):  # a namespace with some of up's flags (the bench's)
        config = from_flat(UpConfig, vars(config))
    py = [sys.executable, "-m"]
    return {"target": py + ["target_service", *to_argv(config.target_config())],
            "draft": py + ["draft_service", *to_argv(config.draft_config())],
            "gateway": py + ["gateway", *to_argv(config.gateway_config())]}


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `minedraft up` itself is killed, so nothing is orphaned. Its
    own process group: Ctrl-C reaches `up` alone, which stops the gateway before the workers."""
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_pid(address: str) -> int | None:
    """The pid a target or draft service reports in Info (None: no answer)."""
    import grpc

    from minedraft.rpc.grpc_common import insecure_channel
    from minedraft.v1 import worker_pb2, worker_pb2_grpc

    with insecure_channel(address) as channel:
        for stub in (worker_pb2_grpc.TargetWorkerStub(channel), worker_pb2_grpc.DraftWorkerStub(channel)):
            try:
                return stub.Info(worker_pb2.InfoRequest(), timeout=2.0).pid
            except grpc.RpcError:
                continue
    return None


class LocalCluster:
    def __init__(self, commands: dict[str, list[str]], log_dir: str | None = None):
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir

    def start(self) -> None:
        for name in self.commands:
            self.start_one(name)

    def start_one(self, name: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        out = None
        if self.log_dir:  # appended: a restarted child's log follows the one it replaces
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{name}.log"), "a")
        self.procs[name] = subprocess.Popen(self.commands[name], env=env, stdout=out,
                                            stderr=subprocess.STDOUT if out else None,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def wait_healthy(self, addresses: dict[str, str], timeout: float = 600.0, progress=print,
                     should_stop=lambda: False, own_workers: bool = False) -> None:
        """own_workers: a target or draft counts only once the pid it reports is our child's (not
        another process answering on that port)."""
        deadline = time.monotonic() + timeout
        pending = dict(addresses)
        while pending:
            if should_stop():
                raise RuntimeError("interrupted during start-up")
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up")
            for name, addr in list(pending.items()):
                if check_health(addr, timeout=1.0) and self._is_ours(name, addr, own_workers):
                    progress(f"  {name:8s} healthy at {addr}")
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {', '.join(pending)}")
            time.sleep(0.3)

    def _is_ours(self, name: str, addr: str, own_workers: bool) -> bool:
        if not own_workers or name not in ("target", "draft"):
            return True
        pid = worker_pid(addr)
        if pid is not None and pid != self.procs[name].pid:
            raise RuntimeError(f"{name}: another process (pid {pid}) answers at {addr}")
        return pid is not None

    def first_exited(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self, grace: float = 10.0, first: tuple[str, ...] = ()) -> None:
        """SIGTERM the children named in `first` and wait for them (up to `grace` each), then the rest."""
        waves = [[n for n in first if n in self.procs], [n for n in self.procs if n not in first]]
        for wave in waves:
            procs = [self.procs[n] for n in wave]
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + grace
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Supervisor:
    """Restarts the children that exit, with backoff, logging each restart."""

    def __init__(self, cluster: LocalCluster, log=print):
        self.cluster, self.log = cluster, log
        self.restarts = {name: 0 for name in cluster.procs}
        self.started = {name: time.monotonic() for name in cluster.procs}
        self.due: dict[str, float] = {}  # name -> when it starts again

    def poll(self) -> None:
        now = time.monotonic()
        for name, proc in self.cluster.procs.items():
            if name in self.due or proc.poll() is None:
                continue
            if now - self.started[name] > STABLE_S:
                self.restarts[name] = 0
            delay = min(FIRST_RESTART_S * 2 ** self.restarts[name], MAX_RESTART_S)
            self.log(f"minedraft up: {name} exited (code {proc.returncode}); restarting it in {delay:.1f} s "
                     f"(restart {self.restarts[name] + 1})")
            self.due[name] = now + delay
        for name, at in list(self.due.items()):
            if now >= at:
                del self.due[name]
                self.restarts[name] += 1
                self.started[name] = now
                self.cluster.start_one(name)
                self.log(f"minedraft up: {name} restarted (pid {self.cluster.procs[name].pid})")


def up(config: UpConfig) -> int:
    commands = service_commands(config)
    spec, keys, http_port = config.speculation, config.front_door.api_key, config.front_door.http_port
    if keys:  # through the environment, not argv: `ps` shows argv to every user
        from minedraft.rpc.auth import ENV_VAR, parse_keys

        os.environ[ENV_VAR] = ",".join(parse_keys(keys))
    addresses = {"target": f"{config.bind_workers}:{config.target_port}",
                 "draft": f"{config.bind_workers}:{config.draft_port}", "gateway": f"{config.bind}:{config.port}"}
    taken = [a for a in [*addresses.values(), *([f"{config.bind}:{http_port}"] if http_port else [])]
             if port_in_use(a)]
    if taken:  # another stack (or anything) listens there: refuse at once rather than share its ports
        print(f"minedraft up: port in use: {', '.join(taken)} (another `minedraft up`?); choose other ports",
              file=sys.stderr, flush=True)
        return 1
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
        local = {name: a.replace("0.0.0.0", "127.0.0.1", 1) for name, a in addresses.items()}
        cluster.wait_healthy(local, timeout=config.startup_timeout, progress=lambda m: print(m, flush=True),
                             should_stop=lambda: stopping["flag"], own_workers=True)
        print(f"MineDraft is up: gateway at {config.bind}:{config.port} (gRPC, minedraft.v1.Gateway)\n"
              + (f"  OpenAI-compatible HTTP API at http://{config.bind}:{http_port}/v1 (/health, /metrics)\n"
                 if http_port else "") +
              f'  try: minedraft generate "def fibonacci(n):" --address 127.0.0.1:{config.port}\n'
              "  Ctrl-C stops all three.", flush=True)
        supervisor = Supervisor(cluster, log=lambda m: print(m, file=sys.stderr, flush=True))
        while not stopping["flag"]:
            if config.restart:
                supervisor.poll()
            else:
                dead = cluster.first_exited()
                if dead:
                    print(f"minedraft up: {dead} exited (code {cluster.procs[dead].returncode}); stopping the "
                          "others (--no-restart)", file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.3)
        print("minedraft up: stopping (the gateway drains first, then the workers)", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"minedraft up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop(grace=config.drain_s + 5.0, first=("gateway",))
        print("minedraft up: all three stopped", flush=True)
