"""The `minedraft` command: up, serve {target,draft,gateway}, generate, bench, health, train-tiny,
train-eagle."""

from __future__ import annotations

import argparse
import os
import sys

from minedraft import __version__
from minedraft.config import ROLES, UpConfig
from minedraft.config.flags import add_arguments, from_flat, service_parser


def _cmd_serve(role: str, argv: list[str]) -> int:
    # The flags were checked by the CLI's parser (no torch needed for that); the service parses them again.
    if role == "target":
        from target_service.server import main
    elif role == "draft":
        from draft_service.server import main
    else:
        from gateway.server import main
    return main(argv)


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
    from minedraft.rpc.health import UNREACHABLE, health_status  # grpc only: health checks must start fast

    status = health_status(args.address, timeout=args.timeout)
    print(f"{status}: nothing answers at {args.address}" if status == UNREACHABLE else status)
    return 0 if status == "SERVING" else 2 if status == UNREACHABLE else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minedraft", description="Batch-parallel speculative decoding (PSD): "
                                     "a draft and a target model on their own devices, served over gRPC and HTTP.")
    parser.add_argument("--version", action="version", version=f"minedraft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start target, draft and gateway locally and wait for Ctrl-C",
                        description=UpConfig.__doc__)
    add_arguments(up, UpConfig())

    serve = sub.add_parser("serve", help="run one service: minedraft serve {target,draft,gateway} --help",
                           description="Run one of the three services.")
    roles = serve.add_subparsers(dest="role", required=True, metavar="{target,draft,gateway}")
    parser.commands = {"up": up}  # to report a bad value as the command's own error
    for role, cls in ROLES.items():
        parser.commands[role] = roles.add_parser(role, help=cls.__doc__.split(":")[0], description=cls.__doc__)
        service_parser(role, parser.commands[role])

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

    health = sub.add_parser("health", help="exit 0 when a service reports SERVING (grpc.health.v1), "
                                                  "1 when it answers otherwise, 2 when unreachable")
    health.add_argument("address")
    health.add_argument("--timeout", type=float, default=3.0)

    sub.add_parser("bench", help="AR vs SD vs PSD benchmark: minedraft bench --help", add_help=False)
    sub.add_parser("train-tiny", help="train the bundled tiny draft/target pair", add_help=False)
    sub.add_parser("train-eagle", help="train an EAGLE-1 draft head for a target", add_help=False)
    return parser


def _validated(parser: argparse.ArgumentParser, cls, args):
    try:
        return from_flat(cls, vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] == "bench":
        from minedraft.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "train-tiny":
        from minedraft.train_tiny import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "train-eagle":
        from minedraft.train_eagle import main as train_eagle_main

        return train_eagle_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":  # a bad value is refused here, before the service imports torch
        _validated(parser.commands[args.role], ROLES[args.role], args)
        return _cmd_serve(args.role, argv[2:])
    if args.command == "up":
        if args.device.startswith("cuda"):
            args.pin = False
        if args.pin and (os.cpu_count() or 1) < 2:
            args.pin = False
        from minedraft.launcher import up

        return up(_validated(parser.commands["up"], UpConfig, args))
    if args.command == "generate":
        return _cmd_generate(args)
    if args.command == "health":
        return _cmd_health(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
