#!/usr/bin/env python3
"""Cross-checks the deployment files against each other and against the real binaries.

Schema validity is checked by scripts/check-deploy (check-jsonschema, kubernetes-validate); this script checks
what schemas cannot: that names agree across files (ScaledObject stream/group = the consumer's config, Service
names = the hosts in the ConfigMap's and Secret's URLs, probe ports = the listen address the binaries are
given), that every JOBSTREAM_* variable the files set is one the binaries read, that grace periods outlast the
drain, and that the probe paths answer on the real binaries. And what only shows when applied for real:
- every container that talks to Redis (producer, consumer, load test) reads REDIS_URL from the one Secret
  jobstream-redis, and no ConfigMap sets REDIS_URL;
- KEDA's ScaledObject logs in through a TriggerAuthentication that exists, whose Secret keys exist and agree
  with REDIS_URL (user, password, tls=enable exactly when the URL is rediss://, the address = the URL's host);
- images: every image is tagged (not :latest); in the production overlays jobstream's image names a registry,
  is not :local, and is the same in every production overlay and the load test (one `images:` line);
- the runtime image installs ca-certificates (rediss:// and HTTPS OTLP need the system's CAs).
Exits non-zero with one line per problem.
"""
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import unquote, urlparse

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug")
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    n, unit = int(m[1]), m[2]
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def binary_env_vars(name):
    """The environment variables a binary reads, from its --help (every subcommand for the producer)."""
    helps = [subprocess.run([os.path.join(BIN, name), "--help"], capture_output=True, text=True, check=True).stdout]
    if name == "producer":
        for sub in ["enqueue", "serve", "stats", "load"]:
            out = subprocess.run([os.path.join(BIN, name), sub, "--help"], capture_output=True, text=True)
            helps.append(out.stdout)
    # Variables read outside the flags, by the telemetry set-up shared by both binaries.
    with open(os.path.join(ROOT, "shared", "src", "telemetry.rs")) as f:
        telemetry = set(re.findall(r'"(JOBSTREAM_[A-Z_]+)"', f.read()))
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", "\n".join(helps))) | telemetry


def render(path):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, path)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs, kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


SECRET = "jobstream-redis"  # the Secret every Redis client reads REDIS_URL from
PRODUCTION = ["k8s/overlays/prod", "k8s/overlays/prod-managed-redis", "k8s/overlays/prod/loadtest"]
DEVELOPMENT = ["k8s/overlays/dev", "k8s/overlays/dev/loadtest"]


def secret_data(docs, name):
    """The decoded data of Secret `name` in the rendered docs, or None."""
    secret = find(docs, "Secret", name)
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def pod_specs(docs):
    """(workload name, pod spec) of every workload in the rendered docs."""
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod):
    return pod.get("initContainers", []) + pod.get("containers", [])


def image_repository(image):
    """registry.example.com/jobstream:0.1.0 -> registry.example.com/jobstream"""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def is_jobstream(container):
    return image_repository(container["image"]).rsplit("/", 1)[-1] == "jobstream" or \
        (container.get("command") or [""])[0] in ("producer", "consumer")


def check_redis_clients(path, docs):
    """Every container that talks to Redis reads REDIS_URL from the Secret; no ConfigMap carries it."""
    for cm in [d for d in docs if d["kind"] == "ConfigMap"]:
        check("REDIS_URL" not in (cm.get("data") or {}),
              f"{path}: ConfigMap {cm['metadata']['name']} sets REDIS_URL: it belongs in the Secret {SECRET}")
    clients = 0
    for workload, pod in pod_specs(docs):
        for c in containers(pod):
            if not is_jobstream(c):
                continue
            clients += 1
            refs = [e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", []) if e["name"] == "REDIS_URL"]
            check(refs == [{"name": SECRET, "key": "REDIS_URL"}],
                  f"{path}: {workload}/{c['name']} does not read REDIS_URL from Secret {SECRET} key REDIS_URL ({refs})")
    check(clients > 0, f"{path}: no container runs jobstream")
    secret = secret_data(docs, SECRET)
    if any(d["kind"] in ("Deployment", "ScaledObject") for d in docs):  # an overlay, not the load test alone
        check(secret is not None and "REDIS_URL" in secret, f"{path}: no Secret {SECRET} with a key REDIS_URL")
    return secret


def check_keda_auth(path, docs, namespace, secret):
    """ScaledObject -> TriggerAuthentication -> Secret keys, and their agreement with REDIS_URL."""
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    redis_url = urlparse(secret["REDIS_URL"]) if secret and "REDIS_URL" in secret else None
    for scaled in [d for d in docs if d["kind"] == "ScaledObject"]:
        for trigger in scaled["spec"]["triggers"]:
            ref = trigger.get("authenticationRef") or {}
            check(ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication" and ref.get("name") in auths,
                  f"{path}: ScaledObject trigger's authenticationRef {ref} names no TriggerAuthentication here")
            meta = trigger["metadata"]
            for key in ("password", "passwordFromEnv", "username", "usernameFromEnv", "enableTLS"):
                check(key not in meta, f"{path}: ScaledObject metadata sets {key}: it comes from the TriggerAuthentication")
            auth = auths.get(ref.get("name"))
            if auth is None:
                continue
            params = {}
            for target in auth["spec"].get("secretTargetRef", []):
                data = secret_data(docs, target["name"])
                check(data is not None and target["key"] in data,
                      f"{path}: TriggerAuthentication {auth['metadata']['name']} parameter {target['parameter']}: "
                      f"Secret {target['name']} has no key {target['key']!r}")
                if data is not None and target["key"] in data:
                    params[target["parameter"]] = data[target["key"]]
            for parameter in ("username", "password", "tls"):
                check(parameter in params, f"{path}: TriggerAuthentication gives KEDA no {parameter}")
            if redis_url is None:
                continue
            tls = params.get("tls", "disable")
            check(tls in ("enable", "disable"), f"{path}: KEDA tls is {tls!r}, not enable or disable")
            check((tls == "enable") == (redis_url.scheme == "rediss"),
                  f"{path}: KEDA tls={tls} but REDIS_URL is {redis_url.scheme}://")
            check(params.get("password", "") == unquote(redis_url.password or ""),
                  f"{path}: KEDA's password differs from REDIS_URL's")
            check(params.get("username", "") == unquote(redis_url.username or "") or
                  (not params.get("username") and redis_url.username in (None, "", "default")),
                  f"{path}: KEDA's username {params.get('username')!r} differs from REDIS_URL's")
            host, port = meta["address"].rsplit(":", 1)
            check(host in (redis_url.hostname, f"{redis_url.hostname}.{namespace}.svc.cluster.local"),
                  f"{path}: ScaledObject address {host} is not REDIS_URL's host {redis_url.hostname} (namespace {namespace})")
            check(int(port) == (redis_url.port or 6379), f"{path}: ScaledObject port {port} != REDIS_URL's {redis_url.port}")


def check_images(path, docs, production):
    """Every image tagged; in production, jobstream's names a registry and is not :local. Returns jobstream's."""
    mine = set()
    for workload, pod in pod_specs(docs):
        for c in containers(pod):
            image = c["image"]
            repository = image_repository(image)
            tag = image.split("@", 1)[0][len(repository):].lstrip(":")
            check(tag or "@" in image, f"{path}: {workload}/{c['name']} image {image} has no tag")
            check(tag != "latest", f"{path}: {workload}/{c['name']} image {image} is :latest")
            if not is_jobstream(c):
                continue
            mine.add(image)
            if production:
                first = repository.split("/", 1)[0]
                check("/" in repository and ("." in first or ":" in first or first == "localhost"),
                      f"{path}: {workload}/{c['name']} image {image} names no registry: no cluster can pull it")
                check(tag != "local", f"{path}: {workload}/{c['name']} image {image} is a local build")
    return mine


def check_dockerfile():
    """The runtime stages derive from a base that installs the system's CA certificates."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m[2] or m[1]
            stages[current] = {"from": m[1], "run": ""}
        elif current and re.match(r"\s*RUN\s", line, re.I):
            stages[current]["run"] += line

    def installs_ca(stage, seen=()):
        if stage not in stages or stage in seen:
            return False
        return "ca-certificates" in stages[stage]["run"] or installs_ca(stages[stage]["from"], seen + (stage,))

    for stage in ("prebuilt", "runtime"):
        check(installs_ca(stage), f"Dockerfile: stage {stage} has no ca-certificates (rediss:// and HTTPS OTLP need them)")


def container_env(container, configmap):
    env = dict(configmap.get("data", {})) if configmap else {}
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def check_overlay(path, env_of_binary):
    docs = render(path)
    namespace = next((d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"), "default")
    config = find(docs, "ConfigMap", "jobstream-config")
    check(config is not None, f"{path}: no ConfigMap jobstream-config")
    data = config["data"]
    for name in data:
        if name.startswith("JOBSTREAM_") or name == "REDIS_URL":
            check(any(name in read for read in env_of_binary.values()), f"{path}: ConfigMap sets {name}, which no binary reads")
    secret = check_redis_clients(path, docs) or {}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for var, value in [("REDIS_URL", secret.get("REDIS_URL", "")), ("OTEL_EXPORTER_OTLP_ENDPOINT", data["OTEL_EXPORTER_OTLP_ENDPOINT"])]:
        url = urlparse(value)
        if url.hostname and "." in url.hostname and not url.hostname.endswith(".svc.cluster.local"):
            continue  # a host outside the cluster (a managed Redis, a vendor's collector)
        svc = services.get((url.hostname or "").split(".")[0])
        check(svc is not None, f"{path}: {var} names host {url.hostname!r}, which is no Service")
        if svc:
            ports = [p["port"] for p in svc["spec"]["ports"]]
            check(url.port in ports, f"{path}: {var} port {url.port} is not a port of Service {url.hostname} {ports}")
    check(data.get("OTEL_EXPORTER_OTLP_PROTOCOL") != "grpc" or data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317"),
          f"{path}: gRPC export must go to port 4317")

    for deploy_name, binary, default_port in [("jobstream-consumer", "consumer", 9090), ("jobstream-producer", "producer", 8080)]:
        deploy = find(docs, "Deployment", deploy_name)
        check(deploy is not None, f"{path}: no Deployment {deploy_name}")
        pod = deploy["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = container_env(container, config)
        for item in container.get("env", []):
            name = item["name"]
            if name.startswith("JOBSTREAM_") or name == "REDIS_URL":
                check(name in env_of_binary[binary], f"{path}: {deploy_name} sets {name}, which {binary} does not read")
        listen_port = int(env.get("JOBSTREAM_LISTEN", f"0.0.0.0:{default_port}").rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe_name, path_expected in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
            probe = container[probe_name]["httpGet"]
            port = ports.get(probe["port"], probe["port"])
            check(port == listen_port, f"{path}: {deploy_name} {probe_name} port {port} != listen port {listen_port}")
            check(probe["path"] == path_expected, f"{path}: {deploy_name} {probe_name} path {probe['path']}")
        if binary == "consumer":
            grace = duration_s(env.get("JOBSTREAM_SHUTDOWN_GRACE", "30s"))
            check(pod["terminationGracePeriodSeconds"] > grace,
                  f"{path}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= drain {grace}s")
            pdb = find(docs, "PodDisruptionBudget", "jobstream-consumer")
            check(pdb is not None and pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"],
                  f"{path}: the PodDisruptionBudget does not select the consumer pods")

    queue = data.get("JOBSTREAM_QUEUE", "jobs")
    prefix = data.get("JOBSTREAM_PREFIX", "jobstream")
    group = data.get("JOBSTREAM_GROUP", "workers")
    for scaled in [d for d in docs if d["kind"] == "ScaledObject"]:
        check(scaled["apiVersion"] == "keda.sh/v1alpha1", f"{path}: ScaledObject apiVersion {scaled['apiVersion']}")
        check(scaled["spec"]["scaleTargetRef"]["name"] == "jobstream-consumer", f"{path}: ScaledObject targets the wrong Deployment")
        check(0 < scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"], f"{path}: ScaledObject replica bounds")
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            check(trigger["type"] == "redis-streams", f"{path}: ScaledObject trigger type {trigger['type']}")
            check(meta["stream"] == f"{prefix}:{{{queue}}}", f"{path}: ScaledObject stream {meta['stream']!r} != {prefix}:{{{queue}}}")
            check(meta["consumerGroup"] == group, f"{path}: ScaledObject group {meta['consumerGroup']!r} != {group!r}")
            check(int(meta["lagCount"]) > 0, f"{path}: ScaledObject lagCount must be positive")
    check_keda_auth(path, docs, namespace, secret)
    for hpa in [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]:
        check(hpa["spec"]["scaleTargetRef"]["name"] == "jobstream-consumer", f"{path}: HPA targets the wrong Deployment")
    return docs


def check_loadtest(path):
    docs = render(path)
    check_redis_clients(path, docs)
    job = find(docs, "Job", "jobstream-loadtest")
    container = job["spec"]["template"]["spec"]["containers"][0]
    check(container["command"] == ["producer"] and container["args"][0] == "load", "loadtest: must run `producer load`")
    check(job["spec"].get("activeDeadlineSeconds", 0) > 0, "loadtest: the Job must be bounded in time")
    check(any(a == "--jobs" for a in container["args"]), "loadtest: the Job must be bounded in count (--jobs)")
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    check(refs == ["jobstream-config"], f"loadtest: reads ConfigMap {refs}, not jobstream-config")
    return docs


def check_compose(env_of_binary):
    with open(os.path.join(ROOT, "compose", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    for name, binary in [("producer", "producer"), ("consumer", "consumer"), ("loadtest", "producer")]:
        svc = services[name]
        check(svc["entrypoint"] == [binary], f"compose: {name} runs {svc['entrypoint']}")
        check("REDIS_URL" in svc["environment"], f"compose: {name} has no REDIS_URL")
        for var, value in svc["environment"].items():
            if var.startswith("JOBSTREAM_") or var == "REDIS_URL":
                check(var in env_of_binary[binary], f"compose: {name} sets {var}, which {binary} does not read")
            for url_var in ["REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"]:
                if var == url_var:
                    check(urlparse(value).hostname in services, f"compose: {name} {var} host is no service")
    grace = duration_s(services["consumer"]["environment"].get("JOBSTREAM_SHUTDOWN_GRACE", "30s"))
    check(duration_s(services["consumer"]["stop_grace_period"]) > grace, "compose: consumer stop_grace_period <= drain")
    check("healthcheck" in services["redis"], "compose: redis needs a healthcheck")
    check("--appendonly" in services["redis"]["command"], "compose: redis must persist (appendonly)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def check_probe_paths_on_binaries(docs):
    """Runs the real binaries and asks them the probe paths the manifests use."""
    paths = {}
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("jobstream-"):
            c = d["spec"]["template"]["spec"]["containers"][0]
            paths[d["metadata"]["name"]] = [c[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", tmp,
                                  "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        procs = []
        try:
            env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}", JOBSTREAM_LOG_FORMAT="json")
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            for name, argv in [("jobstream-consumer", [os.path.join(BIN, "consumer")]),
                               ("jobstream-producer", [os.path.join(BIN, "producer"), "serve"])]:
                port = free_port()
                procs.append(subprocess.Popen(argv, env=dict(env, JOBSTREAM_LISTEN=f"127.0.0.1:{port}"),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                deadline = time.time() + 20
                statuses = {}
                while time.time() < deadline:
                    try:
                        statuses = {p: get(f"http://127.0.0.1:{port}{p}") for p in paths[name] + ["/metrics"]}
                        if all(s == 200 for s in statuses.values()):
                            break
                    except OSError:
                        pass
                    time.sleep(0.1)
                check(statuses and all(s == 200 for s in statuses.values()),
                      f"{name}: the real binary answers {statuses} on the manifests' probe paths")
        finally:
            for p in procs + [redis]:
                p.terminate()
                p.wait(timeout=40)


def main():
    env_of_binary = {b: binary_env_vars(b) for b in ["consumer", "producer"]}
    docs = None
    rendered = {}
    for overlay in ["k8s/overlays/dev", "k8s/overlays/prod", "k8s/overlays/prod-managed-redis"]:
        docs = rendered[overlay] = check_overlay(overlay, env_of_binary)
    for loadtest in ["k8s/overlays/prod/loadtest", "k8s/overlays/dev/loadtest"]:
        rendered[loadtest] = check_loadtest(loadtest)
    for group, production in [(PRODUCTION, True), (DEVELOPMENT, False)]:
        images = {path: check_images(path, rendered[path], production) for path in group}
        distinct = set().union(*images.values())
        check(len(distinct) == 1, f"jobstream's image differs between {', '.join(group)}: {images}")
    check_dockerfile()
    check_compose(env_of_binary)
    if not os.environ.get("CHECK_DEPLOY_SKIP_PROBES"):  # tests/check-deploy-mutations: the files only
        check_probe_paths_on_binaries(docs)
    for p in problems:
        print(f"check_deploy: {p}", file=sys.stderr)
    print(json.dumps({"check_deploy": "failed" if problems else "ok", "problems": len(problems)}))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
