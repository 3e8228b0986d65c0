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
- the runtime image installs ca-certificates (rediss:// and HTTPS OTLP need the system's CAs);
- the producer's API token: `producer serve` refuses a non-loopback address without one, so wherever the producer
  listens beyond loopback (Compose, every overlay) it must get a non-empty token from a source that holds no
  known value: in Compose a required variable (`${JOBSTREAM_API_TOKEN:?...}`), published on 127.0.0.1 only; in
  Kubernetes the Secret jobstream-secrets, generated from the git-ignored k8s/base/api-token.env. The manifests
  are rendered from a copy of k8s/ in which that file holds a throwaway random token (a fresh clone has none,
  and this machine's own is never read): the producer's rendered token must be exactly it;
- Compose: every image it pulls is tagged (not :latest); the profile `polyglot`'s Node and Python workers start
  only with that profile, are built from the repository with their examples' Dockerfiles (tagged base images,
  jobstream's Lua scripts copied in), name a service for Redis and for OTLP, set OTEL_SERVICE_NAME and publish
  no port.
Exits non-zero with one line per problem.
"""
import atexit
import base64
import ipaddress
import json
import os
import re
import secrets
import shutil
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
    telemetry = set()
    folder = os.path.join(ROOT, "shared", "src", "telemetry")
    for source in sorted(os.listdir(folder)):
        with open(os.path.join(folder, source)) as f:
            telemetry |= set(re.findall(r'"(JOBSTREAM_[A-Z_]+)"', f.read()))
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", "\n".join(helps))) | telemetry


# The producer's API token: the secretGenerator jobstream-secrets reads it from this git-ignored file.
TOKEN_FILE = "api-token.env"  # in k8s/base
TOKEN_VAR = "JOBSTREAM_API_TOKEN"
THROWAWAY_TOKEN = secrets.token_hex(16)  # what the check writes into its copy of TOKEN_FILE
_k8s_copy = []


def k8s_copy():
    """A copy of k8s/ whose base/api-token.env holds THROWAWAY_TOKEN, made once (this machine's is not copied)."""
    if not _k8s_copy:
        tmp = tempfile.mkdtemp(prefix="jobstream-check-deploy.")
        atexit.register(shutil.rmtree, tmp, True)
        shutil.copytree(os.path.join(ROOT, "k8s"), os.path.join(tmp, "k8s"),
                        ignore=lambda d, names: [TOKEN_FILE] if os.path.basename(d) == "base" else [])
        with open(os.path.join(tmp, "k8s", "base", TOKEN_FILE), "w") as f:
            f.write(f"{TOKEN_VAR}={THROWAWAY_TOKEN}\n")
        _k8s_copy.append(tmp)
    return _k8s_copy[0]


def render(path):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(k8s_copy(), path)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"check_deploy: kubectl kustomize {path} failed: {out.stderr.strip()}")
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


def effective_env(container, docs):
    """{name: (value, source)} as the container sees its environment: envFrom in order, then env, which wins.
    source is 'Secret NAME', 'ConfigMap NAME' or 'a plain value'; value None when the object or key is missing."""
    def data(kind, name):
        return (secret_data(docs, name) if kind == "Secret" else (find(docs, "ConfigMap", name) or {}).get("data")) or {}

    out = {}
    for ref in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in ref:
                for k, v in data(kind, ref[key]["name"]).items():
                    out[ref.get("prefix", "") + k] = (v, f"{kind} {ref[key]['name']}")
    for e in container.get("env", []):
        source = e.get("valueFrom")
        if source is None:
            out[e["name"]] = (str(e.get("value", "")), "a plain value")
            continue
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in source:
                ref = source[key]
                out[e["name"]] = (data(kind, ref["name"]).get(ref["key"]), f"{kind} {ref['name']}")
                break
        else:
            out[e["name"]] = (None, "valueFrom")
    return out


def flag_value(args, flag):
    """The value of `--flag VALUE` or `--flag=VALUE` in an argument list (the last one wins), or None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = str(args[i + 1])
        elif str(a).startswith(flag + "="):
            value = str(a)[len(flag) + 1:]
    return value


def truthy(value):
    """clap's reading of a boolean flag's environment variable."""
    return value is not None and str(value).strip().lower() not in ("", "0", "n", "no", "f", "false", "off")


def is_loopback(listen):
    host = listen.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def producer_listen(args, env):
    """`producer serve`'s listen address: --listen, else JOBSTREAM_LISTEN, else its default (loopback)."""
    return flag_value(args, "--listen") or env.get("JOBSTREAM_LISTEN") or "127.0.0.1:8080"


def check_producer_token_k8s(path, deploy, container, docs):
    """The producer listens beyond loopback (the Service and the probes need it) with a non-empty token from the
    Secret generated from k8s/base/api-token.env: the throwaway token the check wrote there, no other."""
    env = effective_env(container, docs)
    args = [str(a) for a in (container.get("command") or [])[1:] + (container.get("args") or [])]
    listen = producer_listen(args, {k: v for k, (v, _) in env.items()})
    name = f"{path}: {deploy}"
    check(not is_loopback(listen),
          f"{name} listens on loopback {listen}: neither the Service nor the kubelet's probes can reach it")
    token, source = env.get(TOKEN_VAR, (None, None))
    if flag_value(args, "--api-token") is not None:
        token, source = flag_value(args, "--api-token"), "its arguments"
    if not token:
        if is_loopback(listen):
            return
        allow = env.get("JOBSTREAM_ALLOW_UNAUTHENTICATED", (None,))[0]
        open_api = truthy(allow) or "--allow-unauthenticated" in args
        check(False, f"{name} listens on {listen} without a token ({TOKEN_VAR} " +
              (f"empty or missing in {source}" if source else "unset") + "): " +
              ("its API and dashboard are open to whoever reaches the port (--allow-unauthenticated)" if open_api
               else "it refuses to start"))
        return
    check(source is not None and source.startswith("Secret "),
          f"{name} gets {TOKEN_VAR} from {source}, not from a Secret: the token is written in the manifests")
    check(token == THROWAWAY_TOKEN,
          f"{name}'s {TOKEN_VAR} (from {source}) is not the one of k8s/base/{TOKEN_FILE} (the check writes a "
          "throwaway one there): a token written in the manifests is known to everyone who reads them")


def check_token_file():
    """The base's Secret jobstream-secrets comes from k8s/base/api-token.env, which git must not track."""
    base = os.path.join(ROOT, "k8s", "base")
    with open(os.path.join(base, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    generator = next((g for g in kustomization.get("secretGenerator", []) if g["name"] == "jobstream-secrets"), {})
    check(TOKEN_FILE in generator.get("envs", []),
          f"k8s/base/kustomization.yaml: the secretGenerator jobstream-secrets does not read envs: [{TOKEN_FILE}]")
    check(not any(str(lit).startswith(TOKEN_VAR + "=") for lit in generator.get("literals", [])),
          f"k8s/base/kustomization.yaml: the secretGenerator jobstream-secrets sets {TOKEN_VAR} as a literal")
    try:
        with open(os.path.join(base, ".gitignore")) as f:
            ignored = {line.strip() for line in f}
    except FileNotFoundError:
        ignored = set()
    check(ignored & {TOKEN_FILE, "/" + TOKEN_FILE},
          f"k8s/base/.gitignore does not ignore {TOKEN_FILE}: a real token could be committed")
    if os.path.isdir(os.path.join(ROOT, ".git")):  # not in tests/check-deploy-mutations' copies
        tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "--", f"k8s/base/{TOKEN_FILE}"],
                                 capture_output=True, text=True).stdout.strip()
        check(not tracked, f"k8s/base/{TOKEN_FILE} is tracked by git: its token is known to whoever clones it")


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
        default_listen = "127.0.0.1:8080" if binary == "producer" else f"0.0.0.0:{default_port}"
        listen_port = int(env.get("JOBSTREAM_LISTEN", default_listen).rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe_name, path_expected in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
            probe = container[probe_name]["httpGet"]
            port = ports.get(probe["port"], probe["port"])
            check(port == listen_port, f"{path}: {deploy_name} {probe_name} port {port} != listen port {listen_port}")
            check(probe["path"] == path_expected, f"{path}: {deploy_name} {probe_name} path {probe['path']}")
        if binary == "producer":
            check_producer_token_k8s(path, deploy_name, container, docs)
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
    check_compose_producer(services["producer"])
    check_compose_images(services)
    check_compose_polyglot(services)


def image_tag_problem(image):
    """Why an image reference is not pinned (no tag, or :latest), or None."""
    if "@" in image:
        return None
    repository = image_repository(image)
    tag = image[len(repository):].lstrip(":")
    if not tag:
        return "has no tag"
    if tag == "latest":
        return "is :latest"
    return None


# The profile `polyglot`: the example workers and the Dockerfile each is built from (relative to the root).
POLYGLOT = {"node-worker": "examples/node-worker/Dockerfile", "python-worker": "examples/python-worker/Dockerfile"}


def dockerfile_bases(text):
    """The images a Dockerfile's FROM lines derive from (earlier stages excluded)."""
    stages, bases = set(), []
    for m in re.finditer(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", text, re.I | re.M):
        if m[1] not in stages:
            bases.append(m[1])
        if m[2]:
            stages.add(m[2])
    return bases


def check_compose_images(services):
    """Every image Compose pulls (a service without `build`) is tagged and not :latest."""
    for name, svc in services.items():
        if "build" in svc or "image" not in svc:
            continue
        why = image_tag_problem(str(svc["image"]))
        check(why is None, f"compose: {name} image {svc['image']} {why}")


def check_compose_polyglot(services):
    """The profile `polyglot`: the Node and Python example workers, each only in that profile, built from the
    repository root with its example's Dockerfile (tagged bases, the Lua scripts copied in), talking to services
    that always run for Redis and OTLP, with a service name of its own and no published port."""
    for name, dockerfile in POLYGLOT.items():
        svc = services.get(name)
        check(svc is not None, f"compose: no service {name} (profile polyglot)")
        if svc is None:
            continue
        check(svc.get("profiles") == ["polyglot"],
              f"compose: {name} is not in the profile polyglot only (plain `docker compose up` would start it)")
        build = svc.get("build") or {}
        build = {"context": build} if isinstance(build, str) else build
        check(build.get("context") == ".." and build.get("dockerfile") == dockerfile,
              f"compose: {name} is not built from the repository root with {dockerfile} ({build})")
        environment = svc.get("environment") or {}
        check(bool(environment.get("OTEL_SERVICE_NAME")), f"compose: {name} sets no OTEL_SERVICE_NAME")
        for var in ("REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            host = urlparse(str(environment.get(var, ""))).hostname
            check(host in services and not services[host].get("profiles"),
                  f"compose: {name} {var} host {host!r} is no service that always runs")
        check(not svc.get("ports"), f"compose: {name} publishes {svc.get('ports')}: a worker needs no port")
        try:
            with open(os.path.join(ROOT, dockerfile)) as f:
                text = re.sub(r"\\\n", " ", f.read())
        except FileNotFoundError:
            check(False, f"{dockerfile}: missing (compose builds {name} with it)")
            continue
        bases = dockerfile_bases(text)
        check(bases, f"{dockerfile}: no FROM line")
        for base in bases:
            why = image_tag_problem(base)
            check(why is None and "$" not in base, f"{dockerfile}: base image {base} {why or 'is not a literal'}")
        check(re.search(r"^\s*COPY\s+.*shared/src/lua", text, re.M | re.I),
              f"{dockerfile}: does not copy shared/src/lua (the Lua scripts the worker runs)")


def check_compose_producer(svc):
    """The producer beyond loopback needs a token that is required, non-empty and written nowhere in the file:
    `${JOBSTREAM_API_TOKEN:?message}` (Compose refuses to start when it is unset or empty). Its port is
    published on 127.0.0.1 only."""
    environment = svc.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(str(e).split("=", 1) if "=" in str(e) else (str(e), None) for e in environment)
    command = svc.get("command") or []
    command = command.split() if isinstance(command, str) else [str(a) for a in command]
    listen = producer_listen(command, environment)
    token = flag_value(command, "--api-token")
    token = environment.get(TOKEN_VAR) if token is None else token
    required = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", str(token or ""))
    if not is_loopback(listen):
        open_api = truthy(environment.get("JOBSTREAM_ALLOW_UNAUTHENTICATED")) or "--allow-unauthenticated" in command
        if not token:
            check(False, f"compose: producer listens on {listen} without a token ({TOKEN_VAR}): " +
                  ("its API and dashboard are open (--allow-unauthenticated)" if open_api
                   else "it refuses to start"))
        elif "$" not in str(token):
            check(False, f"compose: producer's {TOKEN_VAR} is written in compose.yaml: it is known to everyone who "
                         "reads it; use ${" + TOKEN_VAR + ":?message}")
        else:
            check(required, f"compose: producer's {TOKEN_VAR} is {token}, which may be empty (Compose starts it "
                            "without a token); use ${" + TOKEN_VAR + ":?message}")
    for port in svc.get("ports") or []:
        host_ip = port.get("host_ip") if isinstance(port, dict) else \
            (str(port).rsplit(":", 2)[0] if str(port).count(":") >= 2 else None)
        check(host_ip == "127.0.0.1", f"compose: producer publishes {port} beyond the loopback interface")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def check_probe_paths_on_binaries(docs):
    """Runs the real binaries and asks them the probe paths the manifests use; the producer with a token, as the
    manifests run it: the probes and /metrics (Prometheus) send none, and its API must refuse requests without it."""
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
            env.pop(TOKEN_VAR, None)
            for name, argv, extra in [("jobstream-consumer", [os.path.join(BIN, "consumer")], {}),
                                      ("jobstream-producer", [os.path.join(BIN, "producer"), "serve"],
                                       {TOKEN_VAR: THROWAWAY_TOKEN})]:
                port = free_port()
                procs.append(subprocess.Popen(argv, env=dict(env, JOBSTREAM_LISTEN=f"127.0.0.1:{port}", **extra),
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
                if extra:
                    api = f"http://127.0.0.1:{port}/v1/queues"
                    answers = (get(api), get(api, {"Authorization": f"Bearer {THROWAWAY_TOKEN}"}))
                    check(answers == (401, 200),
                          f"{name}: with a token, GET /v1/queues answers {answers[0]} without it and {answers[1]} "
                          "with it, not 401 and 200")
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
    check_token_file()
    check_compose(env_of_binary)
    if not os.environ.get("CHECK_DEPLOY_SKIP_PROBES"):  # tests/check-deploy-mutations: the files only
        check_probe_paths_on_binaries(docs)
    for p in problems:
        print(f"check_deploy: {p}", file=sys.stderr)
    print(json.dumps({"check_deploy": "failed" if problems else "ok", "problems": len(problems)}))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
