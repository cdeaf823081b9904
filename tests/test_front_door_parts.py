"""The front door's pieces on their own (fast, no processes): API keys, stop strings, OpenAI request
parsing, and the monitoring files under deploy/ against the metrics the code really exports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from gateway.openai_protocol import ApiError, parse_request
from gateway.stop_strings import StopStringMatcher
from minedraft.rpc import auth

ROOT = Path(__file__).resolve().parent.parent


# -- API keys -------------------------------------------------------------------------------------------
def test_keys_from_flag_or_environment(monkeypatch):
    monkeypatch.setenv(auth.ENV_VAR, "env-a, env-b,,")
    assert auth.load_keys(None) == ("env-a", "env-b")
    assert auth.load_keys(["flag-a,flag-b", "flag-c"]) == ("flag-a", "flag-b", "flag-c")  # the flag wins
    assert auth.client_key(None) == "env-a" and auth.client_key("mine") == "mine"
    monkeypatch.delenv(auth.ENV_VAR)
    assert auth.load_keys(None) == () and auth.client_key(None) is None


@pytest.mark.parametrize("header, ok", [
    ("Bearer k1", True), ("bearer k2", True), ("Bearer  k2 ", True), ("Bearer k3", False), ("k1", False),
    ("Basic k1", False), ("Bearer ", False), ("", False), (None, False), ("Bearer k1x", False), ("Bearer k", False),
])
def test_bearer_check(header, ok):
    assert auth.authorized(header, ("k1", "k2")) is ok
    assert auth.authorized(header, ())  # no keys configured: open


# -- stop strings -----------------------------------------------------------------------------------------
def test_stop_string_split_across_pieces_is_never_sent():
    m = StopStringMatcher(["###", "\nclass"])
    assert m.push("abc#") == ("abc", False)  # '#' could start '###': held back
    assert m.push("#") == ("", False)
    assert m.push("x\n") == ("##x", False)  # it did not
    assert m.push("cla") == ("", False)
    assert m.push("ss Foo") == ("", True)  # cut before the stop string


def test_stop_string_final_flushes_and_no_stops_is_identity():
    m = StopStringMatcher(["END"])
    assert m.push("the EN") == ("the ", False)
    assert m.push("", final=True) == ("EN", False)
    assert StopStringMatcher([]).push("EN") == ("EN", False)


# -- OpenAI request parsing ---------------------------------------------------------------------------------
def test_defaults_follow_openai():
    r = parse_request({"model": "m", "prompt": "x"}, chat=False, context_len=512)
    assert (r.params.max_tokens, r.params.temperature, r.params.top_p, r.stream) == (16, 1.0, 1.0, False)
    c = parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, chat=True, context_len=512)
    assert c.params.max_tokens == 512  # chat: to the end of the context (the engine caps it)
    c = parse_request({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                      {"type": "text", "text": "b"}]}], "max_completion_tokens": 7}, chat=True, context_len=512)
    assert c.messages == [{"role": "system", "content": "ab"}] and c.params.max_tokens == 7


def test_extensions_and_stops():
    r = parse_request({"model": "m", "prompt": [[5, 6, 7]], "stop": ["\n\n", 2], "stop_token_ids": [9], "top_k": -1,
                       "ignore_eos": True, "seed": 3, "n": 1, "presence_penalty": 0.0, "logprobs": None},
                      chat=False, context_len=512)
    assert r.prompt == [5, 6, 7] and r.stop_strings == ["\n\n"]
    assert r.params.stop_token_ids == (9, 2) and r.params.top_k == 0 and r.params.ignore_eos and r.params.seed == 3


@pytest.mark.parametrize("field, value", [
    ("temperature", math.nan), ("temperature", math.inf), ("top_p", 1.5), ("seed", 1.5), ("max_tokens", True),
    ("ignore_eos", "yes"), ("stop_token_ids", ["a"]), ("n", 3), ("best_of", 2), ("echo", True),
    ("logit_bias", {"1": 5}), ("suffix", "x"), ("frequency_penalty", 0.5),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ApiError) as exc:
        parse_request({"model": "m", "prompt": "x", field: value}, chat=False, context_len=512)
    assert exc.value.status == 400 and exc.value.param == field and exc.value.message.startswith(field)


def test_default_model_name():
    from gateway.http_api import default_model_name

    assert default_model_name("/x/minedraft/assets/tiny-target/") == "tiny-target"
    assert default_model_name("/models/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/abc123") == \
        "Qwen/Qwen2.5-7B-Instruct"


# -- deploy/: monitoring files ----------------------------------------------------------------------------
def exported_names() -> set[str]:
    """Every sample name the gateway and the services can export (with _total/_bucket/... suffixes)."""
    from gateway.prometheus_metrics import GatewayMetrics
    from minedraft.rpc.service_metrics import ServiceMetrics

    class FakeServicer:
        role = "target"

    names = set()
    for registry in (GatewayMetrics().registry, ServiceMetrics(FakeServicer()).registry):
        for collector in list(registry._collector_to_names):  # noqa: SLF001 - names, without collecting
            names |= set(registry._collector_to_names[collector])
    return names


def test_dashboard_uses_only_exported_metrics():
    dash = json.loads((ROOT / "deploy/grafana/dashboards/minedraft.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"minedraft:[a-z0-9_]+", e)}
    missing = used - exported_names()
    assert not missing, missing
    titles = " ".join(p["title"] for p in panels)
    for needed in ("Acceptance per draft position", "step", "Time to first token", "Inter-token", "End-to-end"):
        assert needed in titles
    assert any("accepted_tokens_per_pos" in e for e in exprs) and any("step_seconds" in e for e in exprs)


def test_prometheus_config_scrapes_all_three_roles():
    cfg = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"minedraft-gateway", "minedraft-target", "minedraft-draft"}
    ports = {name: j["dns_sd_configs"][0]["port"] for name, j in jobs.items()}
    assert ports == {"minedraft-gateway": 8000, "minedraft-target": 9101, "minedraft-draft": 9102}
    for name in ("datasources/prometheus.yml", "dashboards/minedraft.yml"):
        assert yaml.safe_load((ROOT / "deploy/grafana/provisioning" / name).read_text())["apiVersion"] == 1
