"""The Helm chart (deploy/helm/minedraft): rendered by Helm's own Go SDK (helm-python-sdk wraps it in a
wheel: no helm binary, no cluster), every object validated strictly against the Kubernetes schemas
(kubernetes-validate) of the oldest version the chart supports and of the newest, then the properties a
deployment relies on asserted: selectors, probes, GPUs, the headless draft Service the gateway resolves,
the NetworkPolicy, no worker port exposed outside the cluster, a values.schema.json that refuses bad
values, and service arguments that the real CLI parsers accept."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK as a wheel) is not installed: "
                           "pip install -e '.[test]'")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[test]'")

from minedraft.config import ROLES  # noqa: E402
from minedraft.config.flags import parse, service_parser  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "minedraft"
VALUES_FILES = sorted(p.name for p in CHART.glob("values-*.yaml"))
K8S_VERSIONS = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor (native gRPC probes) and the newest schemas
# Not in Kubernetes' own schemas: checked by hand below.
CRD_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1", "ScaledObject": "keda.sh/v1alpha1"}
WORKERS = ("target", "draft")
GRPC_PORTS = {"gateway": 50051, "target": 50052, "draft": 50053}


def values_of(name: str | None) -> dict | None:
    return yaml.safe_load((CHART / name).read_text()) if name else None


def render(values: dict | None = None) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="md", namespace="serving")
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def component(doc) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pods(docs):
    """(deployment, pod labels, pod spec) of every Deployment."""
    return [(d, d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
            for d in of_kind(docs, "Deployment")]


@pytest.fixture(scope="module", params=[None, *VALUES_FILES], ids=["values.yaml", *VALUES_FILES])
def rendered(request):
    return request.param, render(values_of(request.param))


def test_all_values_files_exist():
    assert VALUES_FILES == ["values-cpu-demo.yaml", "values-drafts-other-nodes.yaml", "values-one-node-2gpu.yaml"]


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES])
def test_helm_lint_strict(values_file):
    report = helm.lint(str(CHART), values_of(values_file), strict=True, kube_version=f"v{K8S_VERSIONS[0]}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_object_validates_strictly(rendered):
    _, docs = rendered
    assert {component(d) for d in of_kind(docs, "Deployment")} == {"gateway", "target", "draft"}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[doc["kind"]]
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): "
                            f"{exc.message} at {list(exc.path)}")


def test_selectors_match_pod_labels(rendered):
    _, docs = rendered
    deployments = pods(docs)
    for dep, labels, _ in deployments:
        assert matches(dep["spec"]["selector"]["matchLabels"], labels), dep["metadata"]["name"]
    for kind, sel in [("Service", lambda d: d["spec"]["selector"]),
                      ("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"]),
                      ("NetworkPolicy", lambda d: d["spec"]["podSelector"]["matchLabels"])]:
        for doc in of_kind(docs, kind):
            hits = [dep["metadata"]["name"] for dep, labels, _ in deployments if matches(sel(doc), labels)]
            assert hits, f"{kind} {doc['metadata']['name']} selects no pod"
            if kind != "NetworkPolicy":  # a policy covers every draft kind; the rest pick one Deployment
                assert hits == [doc["metadata"]["name"]], (kind, doc["metadata"]["name"], hits)
    # Each Service's target ports are named ports of the pods it selects.
    for svc in of_kind(docs, "Service"):
        (_, _, spec), = [p for p in deployments if matches(svc["spec"]["selector"], p[1])]
        names = {p["name"] for c in spec["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names


def test_grpc_probes_with_a_long_startup(rendered):
    _, docs = rendered
    for dep, _, spec in pods(docs):
        (container,) = spec["containers"]
        port = GRPC_PORTS[component(dep)]
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        assert container["readinessProbe"]["grpc"] == {"port": port}  # SERVING: in the Service
        # Workers are restarted when their health fails; the gateway (NOT_SERVING while it waits for its
        # workers, then recovering by itself) only when its port stops accepting.
        alive = {"tcpSocket": {"port": port}} if component(dep) == "gateway" else {"grpc": {"port": port}}
        for probe in ("startupProbe", "livenessProbe"):
            assert {k: container[probe][k] for k in alive} == alive, (dep["metadata"]["name"], probe)
            assert not {"grpc", "tcpSocket", "httpGet", "exec"} - set(alive) & set(container[probe])
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loading


def test_gpus_and_dev_shm(rendered):
    name, docs = rendered
    gpu = name != "values-cpu-demo.yaml"
    for dep, _, spec in pods(docs):
        (container,) = spec["containers"]
        res = container["resources"]
        if component(dep) == "gateway":
            assert "nvidia.com/gpu" not in res.get("limits", {})
            continue
        assert res.get("limits", {}).get("nvidia.com/gpu") == (1 if gpu else None), dep["metadata"]["name"]
        args = container["args"]
        assert ("--device=cuda:0" if gpu else "--device=cpu") in args
        shm = [v for v in spec.get("volumes", []) if v["name"] == "dshm"]
        mounts = container.get("volumeMounts", [])
        if name == "values-one-node-2gpu.yaml":  # sameNodeIPC: the node's /dev/shm, shared by target and draft
            assert not shm and all(m["mountPath"] != "/dev/shm" for m in mounts)
        else:
            assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts
    if name == "values-cpu-demo.yaml":  # the bundled pair: no model volume, --model empty
        for _, _, spec in pods(docs):
            assert all(v["name"] != "models" for v in spec.get("volumes", []))


def test_headless_draft_service_is_what_the_gateway_resolves(rendered):
    name, docs = rendered
    (gateway,) = [c for d, _, s in pods(docs) if component(d) == "gateway" for c in s["containers"]]
    arg = dict(a.split("=", 1) for a in gateway["args"] if a.startswith("--") and "=" in a)
    drafts = [s for s in of_kind(docs, "Service") if component(s) == "draft"]
    assert drafts
    for svc in drafts:
        assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per ready draft pod
        assert "type" not in svc["spec"]
    assert sorted(arg["--draft"].split(",")) == sorted(f"{s['metadata']['name']}:50053" for s in drafts)
    assert arg["--target"] == "md-minedraft-target:50052"
    assert float(arg["--draft-refresh-s"]) > 0
    expected = {"values-one-node-2gpu.yaml": "shm"}.get(name, "inline")
    assert arg["--transport"] == expected
    (target_svc,) = [s for s in of_kind(docs, "Service") if component(s) == "target"]
    assert target_svc["spec"].get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in target_svc["spec"]


def test_host_ids_follow_the_transport(rendered):
    """inline: every pod is its own host (its pod name); sameNodeIPC: one id per node, and the IPC host
    namespaces the same-host transports need."""
    name, docs = rendered
    same_node = name == "values-one-node-2gpu.yaml"
    for dep, _, spec in pods(docs):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["MINEDRAFT_HOST_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "spec.nodeName" if same_node else "metadata.name")
        if component(dep) in WORKERS:  # shm needs the IPC namespace only; hostPID is for cuda_ipc
            assert spec.get("hostIPC", False) is same_node and "hostPID" not in spec
    if same_node:
        (draft,) = [s for d, _, s in pods(docs) if component(d) == "draft"]
        term = draft["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "target"


def test_cuda_ipc_adds_host_pid():
    values = values_of("values-one-node-2gpu.yaml")
    values["transport"] = "cuda_ipc"
    for dep, _, spec in pods(render(values)):
        assert spec.get("hostPID", False) is (component(dep) in WORKERS)


def test_only_the_gateway_reaches_the_workers(rendered):
    name, docs = rendered
    policies = {component(p): p for p in of_kind(docs, "NetworkPolicy")}
    assert set(policies) == set(WORKERS)
    for worker, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        grpc_rule, *metrics_rules = policy["spec"]["ingress"]
        assert grpc_rule["ports"] == [{"protocol": "TCP", "port": GRPC_PORTS[worker]}]
        (peer,) = grpc_rule["from"]
        assert set(peer) == {"podSelector"}
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
        for rule in metrics_rules:  # metrics ports only, to the peers the values name
            assert [p["port"] for p in rule["ports"]] == [{"target": 9101, "draft": 9102}[worker]]
        assert len(metrics_rules) == (1 if name == "values-drafts-other-nodes.yaml" else 0)


def test_service_args_parse_with_the_real_cli(rendered):
    _, docs = rendered
    for dep, _, spec in pods(docs):
        args = spec["containers"][0]["args"]
        assert args[:2] == ["serve", component(dep)]
        try:
            config, _ = parse(service_parser(args[1]), ROLES[args[1]], args[2:])
        except SystemExit:
            pytest.fail(f"minedraft {shlex.join(args)} is refused by its own parser")
        assert config is not None


def test_no_worker_port_outside_the_cluster():
    values = values_of("values-drafts-other-nodes.yaml")
    values["gateway"]["service"] = {"type": "LoadBalancer"}
    docs = render(values)
    exposed = [s for s in of_kind(docs, "Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert [component(s) for s in exposed] == ["gateway"]
    assert {p["port"] for p in exposed[0]["spec"]["ports"]} == {50051, 8000}
    worker_ports = {50052, 50053, 9101, 9102}
    for svc in of_kind(docs, "Service"):
        if component(svc) in WORKERS:
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not worker_ports & {p["port"] for s in exposed for p in s["spec"]["ports"]}
    (ingress,) = of_kind(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "md-minedraft-gateway", "port": {"name": "http"}}


def test_api_key_comes_from_a_secret():
    values = values_of("values-cpu-demo.yaml")
    assert not of_kind(render(values), "Secret")
    values["gateway"] = {"apiKey": {"value": "s3cret"}}
    docs = render(values)
    (secret,) = of_kind(docs, "Secret")
    (gateway,) = [s for d, _, s in pods(docs) if component(d) == "gateway"]
    env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    ref = env["MINEDRAFT_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "api-key"}
    assert secret["stringData"] == {"api-key": "s3cret"}
    assert "s3cret" not in yaml.safe_dump(gateway)  # the key is never in the pod spec itself
    existing = render(values_of("values-drafts-other-nodes.yaml"))
    assert not of_kind(existing, "Secret")


def test_several_draft_kinds_and_autoscaling():
    values = values_of("values-cpu-demo.yaml")
    values["drafts"] = [{"name": "model", "replicas": 3},
                        {"name": "small", "replicas": 1, "pdb": {"enabled": False},
                         "autoscaling": {"enabled": True, "kind": "hpa", "maxReplicas": 4}},
                        {"name": "off", "enabled": False}]
    docs = render(values)
    drafts = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment") if component(d) == "draft"}
    assert set(drafts) == {"md-minedraft-draft-model", "md-minedraft-draft-small"}
    assert drafts["md-minedraft-draft-model"]["spec"]["replicas"] == 3
    assert "replicas" not in drafts["md-minedraft-draft-small"]["spec"]  # the HPA owns it
    pdbs = [p["metadata"]["name"] for p in of_kind(docs, "PodDisruptionBudget") if component(p) == "draft"]
    assert pdbs == ["md-minedraft-draft-model"]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "md-minedraft-draft-small"
    assert hpa["spec"]["maxReplicas"] == 4
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "minedraft_num_requests_waiting"
    (scaled,) = of_kind(render(values_of("values-drafts-other-nodes.yaml")), "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "md-minedraft-draft-model"
    assert "minedraft:num_requests_waiting" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    for doc in docs:
        kv.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_service_monitor_only_when_asked_or_served():
    assert not of_kind(render(), "ServiceMonitor")  # auto: no cluster here, so no monitoring.coreos.com/v1
    values = values_of("values-cpu-demo.yaml")
    values["serviceMonitor"] = {"enabled": True}
    monitors = of_kind(render(values), "ServiceMonitor")
    assert sorted((component(m), m["spec"]["endpoints"][0]["port"]) for m in monitors) == [
        ("draft", "metrics"), ("gateway", "http"), ("target", "metrics")]


@pytest.mark.parametrize("patch, field", [
    ({"transport": "tcp"}, "/transport"),
    ({"transport": "shm"}, "/sameNodeIPC/enabled"),  # IPC transports need one host id per node
    ({"gateway": {"replicas": 2}}, "/gateway/replicas"),
    ({"gateway": {"k": "fast"}}, "/gateway/k"),
    ({"drafts": [{"name": "Bad_Name"}]}, "/drafts/0/name"),
    ({"drafts": [{"name": "model", "method": "telepathy"}]}, "/drafts/0/method"),
    ({"target": {"gpus": -1}}, "/target/gpus"),
    ({"models": {"source": "s3"}}, "/models/source"),
    ({"ports": {"gateway": 70000}}, "/ports/gateway"),
    ({"gatway": {}}, "gatway"),  # a misspelt key is refused, not ignored
])
def test_values_schema_rejects_bad_values(patch, field):
    with pytest.raises(helm.HelmValuesError) as err:
        render(patch)
    assert field in str(err.value), str(err.value)
