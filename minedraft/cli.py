"""The `minedraft` command: up, serve {target,draft,gateway}, generate, bench, health, train-tiny."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_serve(argv: list[str]) -> int:
    if not argv or argv[0] not in ("target", "draft", "gateway"):
        print("usage: minedraft serve {target,draft,gateway} [--help]", file=sys.stderr)
        return 2
    role, rest = argv[0], argv[1:]
    if role == "target":
        from target_service.server import main
    elif role == "draft":
        from draft_service.server import main
    else:
        from gateway.server import main
    return main(rest)


def _cmd_generate(args) -> int:
    import grpc

    from minedraft.client import MineDraftClient

    try:
        with MineDraftClient(args.address, api_key=args.api_key, tls_ca=args.tls_ca) as client:
            last = None
            for chunk in client.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                         top_p=args.top_p, top_k=args.top_k, seed=args.seed):
                print(chunk.text, end="", flush=True)
                last = chunk
            print()
            if last is not None and args.verbose:
                print(f"[{last.finish_reason}: {last.num_generated_tokens} tokens, "
                      f"{last.num_accepted}/{last.num_drafted} drafts accepted]", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"minedraft generate: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"minedraft generate: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_health(args) -> int:
    from minedraft.rpc.health import check_health  # grpc only: health checks must start fast

    ok = check_health(args.address, timeout=args.timeout)
    print("SERVING" if ok else "NOT_SERVING")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    from minedraft.runner.memory_flags import add_memory_arguments

    parser = argparse.ArgumentParser(prog="minedraft", description="Batch-parallel speculative decoding (PSD).")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start target, draft and gateway locally and wait for Ctrl-C")
    up.add_argument("--target", default=None, help="target checkpoint folder (default: bundled)")
    up.add_argument("--draft", default=None, help="draft checkpoint folder (default: bundled)")
    up.add_argument("--device", default="cpu", help="target device (cpu, cuda:0)")
    up.add_argument("--draft-device", default=None, help="draft device (default: --device)")
    up.add_argument("--mode", choices=["psd", "sd", "ar"], default="psd")
    up.add_argument("-k", type=int, default=4)
    up.add_argument("--transport", default="auto", choices=["auto", "cuda_ipc", "shm", "inline"])
    add_memory_arguments(up)  # KV cache budget and sizes, passed to target and draft alike
    up.add_argument("--port", type=int, default=50051, help="gateway port")
    up.add_argument("--target-port", type=int, default=50052)
    up.add_argument("--draft-port", type=int, default=50053)
    up.add_argument("--bind", default="127.0.0.1", help="gateway bind address")
    up.add_argument("--bind-workers", default="127.0.0.1")
    up.add_argument("--no-pin", dest="pin", action="store_false",
                    help="on CPU, do not pin target and draft to cores 0 and 1 with one thread each")
    up.add_argument("--log-dir", default=None, help="write each service's log there instead of the terminal")
    up.add_argument("--startup-timeout", type=float, default=600.0)
    up.add_argument("--http-port", type=int, default=int(os.environ.get("MINEDRAFT_HTTP_PORT", "8000")),
                    help="gateway's OpenAI-compatible HTTP API, on --bind (default 8000; 0: off)")
    up.add_argument("--served-model-name", default=None, help="HTTP API model name (default: target folder's)")
    up.add_argument("--api-key", action="append", default=None,
                    help="require this key on the gateway's HTTP and gRPC (repeatable; default: $MINEDRAFT_API_KEY)")
    up.add_argument("--max-waiting", type=int, default=None, help="gateway's queue limit (see serve gateway --help)")
    up.add_argument("--target-metrics-port", type=int, default=0, help="target's Prometheus /metrics port (0: off)")
    up.add_argument("--draft-metrics-port", type=int, default=0, help="draft's Prometheus /metrics port (0: off)")

    sub.add_parser("serve", help="run one service: minedraft serve {target,draft,gateway} --help",
                   add_help=False)

    gen = sub.add_parser("generate", help="stream a completion from a running gateway")
    gen.add_argument("prompt")
    gen.add_argument("--address", default="127.0.0.1:50051")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("-v", "--verbose", action="store_true", help="print finish reason and counts")
    gen.add_argument("--api-key", default=None, help="the gateway's API key (default: $MINEDRAFT_API_KEY)")
    gen.add_argument("--tls-ca", default=None,
                     help="CA certificate to reach a gateway started with --tls-cert (default: $MINEDRAFT_TLS_CA)")

    health = sub.add_parser("health", help="exit 0 when a service reports SERVING (grpc.health.v1)")
    health.add_argument("address")
    health.add_argument("--timeout", type=float, default=3.0)

    sub.add_parser("bench", help="AR vs SD vs PSD benchmark: minedraft bench --help", add_help=False)
    sub.add_parser("train-tiny", help="train the bundled tiny draft/target pair", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] == "serve":
        return _cmd_serve(argv[1:])
    if argv and argv[0] == "bench":
        from minedraft.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "train-tiny":
        from minedraft.train_tiny import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "up":
        if args.device.startswith("cuda"):
            args.pin = False
        if args.pin and (os.cpu_count() or 1) < 2:
            args.pin = False
        from minedraft.launcher import up

        return up(args)
    if args.command == "generate":
        return _cmd_generate(args)
    if args.command == "health":
        return _cmd_health(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
