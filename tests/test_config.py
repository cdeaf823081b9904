"""The configuration tree (minedraft.config): checks that name the field, flags derived from it, the
command lines `minedraft up` derives from it, and compose's defaults agreeing with it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from minedraft import config as C
from minedraft.config.flags import flat, from_flat, leaves, service_parser, to_argv


@pytest.mark.parametrize("cls, kwargs, field", [
    (C.CacheConfig, dict(max_num_seqs=0), "max_num_seqs"),
    (C.CacheConfig, dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (C.CacheConfig, dict(kv_cache_memory=0), "kv_cache_memory"),
    (C.CacheConfig, dict(block_size=True), "block_size"),
    (C.CacheConfig, dict(num_kv_blocks=1), "num_kv_blocks"),
    (C.CacheConfig, dict(max_model_len=1), "max_model_len"),
    (C.SpeculationConfig, dict(mode="fast"), "mode"),
    (C.SpeculationConfig, dict(k=17), "num_speculative_tokens"),
    (C.SpeculationConfig, dict(transport="carrier-pigeon"), "transport"),
    (C.DraftOptions, dict(max_k=0), "max_k"),
    (C.DraftOptions, dict(q_dtype="int8"), "q_dtype"),
    (C.ServiceConfig, dict(port=70000), "port"),
    (C.PlacementConfig, dict(cpu_cores="0-3"), "cpu_cores"),
    (C.PlacementConfig, dict(nice=20), "nice"),
    (C.TimeoutConfig, dict(worker_timeout_s=0), "worker_timeout_s"),
    (C.GatewayConfig, dict(max_waiting=-1), "max_waiting"),
    (C.UpConfig, dict(device="gpu"), "device"),
    (C.EngineConfig, dict(draft=None, mode="sd"), "mode"),
])
def test_bad_values_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        cls(**kwargs)


def test_a_gateway_without_draft_runs_target_only_whatever_the_mode():
    C.GatewayConfig(draft="", speculation=C.SpeculationConfig(mode="psd"))


@pytest.mark.parametrize("role", list(C.ROLES))
def test_argv_round_trip(role):
    """A config written as flags and parsed again is the same config; defaults are left out."""
    cls = C.ROLES[role]
    # read from the environment: always passed
    log = ["--log-level", C.ServiceConfig().log_level]
    http = ["--http-port", str(C.FrontDoorConfig().http_port)]
    assert to_argv(cls()) == log + (http if role == "gateway" else [])
    changed = {"target": dict(model=C.ModelConfig(model="/m", device="cuda:1", cache=C.CacheConfig(
                   max_num_seqs=8, cuda_graphs=False, kv_cache_memory=0.5)),
                   placement=C.PlacementConfig(threads=1, cpu_cores="0")),
               "draft": dict(drafting=C.DraftOptions(max_k=12, one_hot_q=True, q_dtype="bfloat16")),
               "gateway": dict(draft="", tokenizer="/t", speculation=C.SpeculationConfig(mode="sd", k=7),
                               timeouts=C.TimeoutConfig(prefill_timeout_s=5.0))}[role]
    cfg = cls(**changed)
    ns = service_parser(role).parse_args(to_argv(cfg))
    assert from_flat(cls, vars(ns)) == cfg


def test_flags_are_unique_and_every_help_shows_its_default():
    from minedraft.cli import build_parser

    parser = build_parser()
    for name, sub in parser.commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert "(default: " in action.help, f"{name} {action.option_strings}"
    for cls in (*C.ROLES.values(), C.UpConfig):
        names = [f.name for f, _ in leaves(cls())]
        assert len(names) == len(set(names)), cls


def test_up_derives_the_three_command_lines():
    from minedraft.launcher import service_commands

    up = C.UpConfig(speculation=C.SpeculationConfig(k=12, transport="inline"), port=1, target_port=2, draft_port=3,
                    cache=C.CacheConfig(max_num_seqs=8, num_kv_blocks=99),
                    front_door=C.FrontDoorConfig(http_port=0, api_key=["secret"]))
    cmds = {name: cmd[2:] for name, cmd in service_commands(up).items()}
    assert cmds["target"][0] == "target_service" and cmds["draft"][0] == "draft_service"
    parsed = {role: from_flat(C.ROLES[role], vars(service_parser(role).parse_args(cmd[1:])))
              for role, cmd in cmds.items()}
    assert parsed["target"] == up.target_config() and parsed["draft"] == up.draft_config()
    assert parsed["gateway"] == dataclasses.replace(up.gateway_config(), front_door=C.FrontDoorConfig(http_port=0))
    assert parsed["draft"].drafting.max_k == 12  # the draft's channel holds the gateway's k
    assert parsed["gateway"].target == "127.0.0.1:2" and parsed["gateway"].draft == "127.0.0.1:3"
    assert parsed["draft"].model.cache.num_kv_blocks == 99 and parsed["gateway"].max_num_seqs == 8
    assert not any("secret" in a for cmd in cmds.values() for a in cmd)  # keys travel by environment
    assert C.UpConfig().draft_config().drafting.max_k == C.DEFAULT_MAX_K


def test_engine_keywords_are_the_config_fields():
    from minedraft.engine import Engine

    params = inspect.signature(Engine.__init__).parameters
    engine = {n: p.default for n, p in params.items() if n != "self"}
    fields = {f.name: f.default for f in dataclasses.fields(C.EngineConfig) if f.name != "cache"}
    fields.update(flat(C.CacheConfig()))
    assert engine == fields


def test_transport_names_have_one_source():
    from minedraft.rpc.channels import PREFERENCE

    assert PREFERENCE is C.TRANSPORTS


def test_compose_defaults_agree_with_the_config():
    from test_deploy_files import COMPOSE, interpolate, read_dotenv, role

    yaml = pytest.importorskip("yaml")
    raw = yaml.safe_load(COMPOSE.read_text())
    compose = interpolate(raw, read_dotenv())
    configs = {}
    for name, svc in compose["services"].items():
        if role(name) in C.ROLES:
            cmd = svc["command"]
            ns = service_parser(role(name)).parse_args(cmd[2:])  # compose's flags are the config's
            configs[name] = from_flat(C.ROLES[role(name)], vars(ns))
    for stack in ("", "-cpu"):
        gateway, draft = configs["gateway" + stack], configs["draft" + stack]
        assert gateway.speculation == C.SpeculationConfig()  # MINEDRAFT_MODE, MINEDRAFT_K, auto
        assert draft.drafting.max_k == C.DEFAULT_MAX_K == gateway.speculation.capacity_k  # k auto: max_k bounds it
        assert draft.drafting.transport == C.SpeculationConfig().transport
        for r in ("gateway", "target", "draft"):
            assert configs[r + stack].service.port == C.PORTS[r]
    assert "${MINEDRAFT_MAX_K:-8}" in COMPOSE.read_text()
