"""The deployment files, parsed and cross-checked against the service, the nginx template and each other.

Docker and Kubernetes are not run here: each file is read as its tool reads it, and every name,
port, path and variable in it is checked against what the service really reads and serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from jssdk_service.cli import _parser
from jssdk_service.config import Settings, load_settings
from jssdk_service.sandbox import closed_port_url

from .helpers import RunningService

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "nginx" / "templates" / "jssdk.conf.template"
# WeChat's callback IPs: the file the template includes from nginx's configuration directory, and its fallback.
(CALLBACK_IPS_INCLUDE,) = re.findall(r"^\s*include\s+([^;]+);", TEMPLATE.read_text(), re.MULTILINE)
CALLBACK_IPS_PATH = f"/etc/nginx/{CALLBACK_IPS_INCLUDE}"
SHIPPED_CALLBACK_IPS = DEPLOY / "nginx" / "wechat-callback-ips.conf"
# Every variable the service reads is spelled out in config.py.
SERVICE_ENV = frozenset(re.findall(r'"(JSSDK_[A-Z0-9_]+)"', (ROOT / "jssdk_service" / "config.py").read_text()))
# The sidecar's environment fills exactly the template's placeholders.
SIDECAR_ENV = frozenset(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))


# -- reading the files as their tools do ------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    """The variables the image sets with ENV."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for name, _, value in (pair.partition("=") for pair in shlex.split(args)):
                env[name] = value
    return env


def instruction(name: str) -> str:
    """The arguments of the last `name` instruction: the final stage's."""
    found = [args for word, args in dockerfile() if word == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return document


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as docker compose and systemd's EnvironmentFile= read them."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error}, resolved against `env`."""

    def resolve(match: re.Match[str]) -> str:
        name, operator, fallback = match.group(1), match.group(2), match.group(3)
        assert name in env or operator == ":-", f"${{{name}}} is not in deploy/.env.example"
        return env.get(name) or (fallback if operator == ":-" else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", resolve, value)


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return document


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of the kustomization's resources."""
    objects: list[dict[str, Any]] = []
    for resource in kustomization()["resources"]:
        objects.extend(doc for doc in yaml.safe_load_all((DEPLOY / resource).read_text()) if doc)
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def container(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}"
    return found[0]


def port_of(spec: Mapping[str, Any], name: str) -> int:
    """The containerPort called `name`."""
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    port: int = ports[name]
    return port


def plain_env(spec: Mapping[str, Any]) -> dict[str, str]:
    """A container's env entries that have a literal value."""
    return {e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}


def systemd_unit(name: str = "jssdk-service.service") -> dict[str, list[tuple[str, str]]]:
    """Each section of the unit `name` as its (key, value) lines, in order; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def unit_values(key: str, name: str = "jssdk-service.service", section: str = "Service") -> list[str]:
    return [value for key_, value in systemd_unit(name)[section] if key_ == key]


def service_settings(env: Mapping[str, str], tmp_path: Path, secret_file: str) -> Settings:
    """What the service would start with: `env`, with the AppSecret file it names written under `tmp_path`."""
    assert env["JSSDK_APP_SECRET_FILE"] == secret_file
    local_secret = tmp_path / "app-secret"
    local_secret.write_text("an-app-secret\n")
    return load_settings({**env, "JSSDK_APP_SECRET_FILE": str(local_secret)})


def assert_service_env(names: Iterable[str]) -> None:
    unknown = {name for name in names if name.startswith("JSSDK_")} - SERVICE_ENV
    assert not unknown, f"the service reads no {sorted(unknown)}"


def compose_env() -> dict[str, str]:
    """The service container's environment in the Compose file, interpolated from deploy/.env.example."""
    dotenv = env_file(DEPLOY / ".env.example")
    jssdk = compose()["services"]["jssdk"]
    return {name: interpolate(str(value), dotenv) for name, value in jssdk["environment"].items()}


def compose_settings(tmp_path: Path) -> Settings:
    (secret_name,) = compose()["services"]["jssdk"]["secrets"]
    return service_settings({**dockerfile_env(), **compose_env()}, tmp_path, f"/run/secrets/{secret_name}")


def k8s_env() -> dict[str, str]:
    """The service container's literal environment in the pod: the image's, the ConfigMap's, its own."""
    jssdk = container(pod_spec(), "jssdk")
    (config_ref,) = jssdk["envFrom"]
    config = k8s_object("ConfigMap", config_ref["configMapRef"]["name"])["data"]
    return {**dockerfile_env(), **config, **plain_env(jssdk)}


def k8s_settings(tmp_path: Path) -> Settings:
    spec = pod_spec()
    secret_volume = next(v for v in spec["volumes"] if v["name"] == "secrets")["secret"]
    mount = next(m for m in container(spec, "jssdk")["volumeMounts"] if m["name"] == "secrets")
    (item,) = secret_volume["items"]
    return service_settings(k8s_env(), tmp_path, f"{mount['mountPath']}/{item['path']}")


def systemd_env() -> dict[str, str]:
    """The unit's Environment= lines, then the example EnvironmentFile=, which wins."""
    env = dict(pair.split("=", 1) for line in unit_values("Environment") for pair in shlex.split(line))
    return {**env, **env_file(DEPLOY / "systemd" / "jssdk.env.example")}


def systemd_settings(tmp_path: Path) -> Settings:
    (credential,) = unit_values("LoadCredential")
    return service_settings(systemd_env(), tmp_path, f"%d/{credential.partition(':')[0]}")


def seconds(duration: str | int) -> float:
    """A duration as Compose (`1m30s`), systemd (`30`, `30s`) or Kubernetes (an integer) writes it."""
    found = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s?)?", str(duration).strip())
    assert found is not None and any(found.groups()), f"not a duration: {duration!r}"
    minutes, secs = found.groups()
    return 60 * int(minutes or 0) + int(secs or 0)


def longest_stop(settings: Settings) -> float:
    """The longest a stop may take: the drain, then what the supervisor allows a worker for the rest.

    `serve --workers` kills a worker still running `drain + request_wait + 10` s after its SIGTERM
    (server.Workers.stop_timeout); one process finishes its requests within `request_wait + 5` s of the drain.
    """
    return settings.drain_seconds + settings.request_wait + 10


def template_directive(name: str, block: str = "server") -> str:
    """The value of `name` in the template's first `block {}` (`upstream`, `server`)."""
    body = re.search(rf"^{block}\b[^{{]*\{{(.*?)^\}}", TEMPLATE.read_text(), re.MULTILINE | re.DOTALL)
    assert body is not None, f"the template has no {block} block"
    found = re.findall(rf"^\s*{name}\s+([^;]+);", body.group(1), re.MULTILINE)
    assert len(found) == 1, f"expected one {name} in the {block} block, found {found}"
    return str(found[0]).strip()


# -- the image ---------------------------------------------------------------------------------


def test_the_image_is_small_and_runs_the_service_as_an_unprivileged_user() -> None:
    """python:3.11-slim, a numeric non-root USER, EXPOSE = JSSDK_PORT, and `jssdk-service serve` as the command."""
    assert {args for word, args in dockerfile() if word == "FROM"} == {"python:3.11-slim AS build", "python:3.11-slim"}
    uid, _, gid = instruction("USER").partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid == uid
    assert f"--uid {uid}" in instruction("RUN")
    env = dockerfile_env()
    assert_service_env(env)
    assert instruction("EXPOSE") == env["JSSDK_PORT"]
    assert env["JSSDK_HOST"] == "0.0.0.0"
    assert json.loads(instruction("ENTRYPOINT")) + json.loads(instruction("CMD")) == ["jssdk-service", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "jssdk-service" in scripts
    for word, args in dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            assert all((ROOT / source).exists() for source in args.split()[:-1]), args


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command, run with this interpreter."""
    options, _, command = instruction("HEALTHCHECK").partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv: list[str] = json.loads(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


async def run_healthcheck(port: int | str) -> int:
    process = await asyncio.create_subprocess_exec(*healthcheck_command(), env={**os.environ, "JSSDK_PORT": str(port)},
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
    return await process.wait()


async def test_the_healthcheck_passes_on_a_live_service_and_fails_without_one(service: RunningService) -> None:
    """The image's HEALTHCHECK command exits 0 against a running service and non-zero when nothing answers."""
    assert "/healthz" in instruction("HEALTHCHECK")
    assert await run_healthcheck(urlsplit(service.url).port or 0) == 0
    assert await run_healthcheck(urlsplit(closed_port_url()).port or 0) != 0


# -- docker compose ----------------------------------------------------------------------------


def test_compose_puts_the_sidecar_in_front_of_the_service(tmp_path: Path) -> None:
    """nginx owns the network the service joins, mounts the repository's template and reaches the service on loopback."""
    services = compose()["services"]
    assert set(services) == {"nginx", "jssdk", "redis"}
    nginx, jssdk = services["nginx"], services["jssdk"]
    dotenv = env_file(DEPLOY / ".env.example")
    assert_service_env(compose_env())
    settings = compose_settings(tmp_path)

    assert jssdk["network_mode"] == "service:nginx" and "ports" not in jssdk
    assert nginx["image"].startswith("nginx:")
    assert set(nginx["environment"]) == SIDECAR_ENV
    assert nginx["environment"]["JSSDK_UPSTREAM"] == f"127.0.0.1:{settings.port}"
    published = [interpolate(port, dotenv).rsplit(":", 1)[1] for port in nginx["ports"]]
    assert published == [nginx["environment"]["LISTEN_PORT"]]
    source, target, mode = nginx["volumes"][0].split(":")
    assert ((DEPLOY / source).resolve(), target, mode) == (TEMPLATE.parent, "/etc/nginx/templates", "ro")
    source, target, mode = nginx["volumes"][1].split(":")
    assert ((DEPLOY / source).resolve(), target, mode) == (SHIPPED_CALLBACK_IPS, CALLBACK_IPS_PATH, "ro")
    assert nginx["tmpfs"] == ["/etc/nginx/conf.d"]

    assert (DEPLOY / jssdk["build"]["context"]).resolve() == ROOT
    assert (DEPLOY / jssdk["build"]["context"] / jssdk["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert jssdk["command"] == json.loads(instruction("CMD"))
    assert settings.host == "0.0.0.0"
    cache = urlsplit(settings.cache_url)
    assert (cache.scheme, cache.hostname, cache.port) == ("redis", "redis", 6379)
    assert jssdk["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]


def test_filled_in_settings_and_secrets_stay_out_of_the_repository() -> None:
    """deploy/.env and deploy/secrets/, where compose reads them, are ignored by git."""
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "secrets/" in ignored
    assert compose()["secrets"]["jssdk_app_secret"]["file"].startswith("./secrets/")


# -- Kubernetes --------------------------------------------------------------------------------


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("Deployment", "jssdk-service")["spec"]["template"]["spec"]
    return spec


def test_k8s_resources_and_the_generated_template_exist() -> None:
    """Every resource the kustomization lists exists, and the nginx ConfigMap is made from the repository's template."""
    document = kustomization()
    assert all((DEPLOY / resource).is_file() for resource in document["resources"])
    assert sorted(document["resources"]) == sorted(f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml"))
    generators = {g["name"]: g for g in document["configMapGenerator"]}
    assert set(generators) == {"jssdk-nginx-templates", "jssdk-wechat-callback-ips"}
    generator = generators["jssdk-nginx-templates"]
    assert [(DEPLOY / f).resolve() for f in generator["files"]] == [TEMPLATE]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["name"]: m for m in container(pod_spec(), "nginx")["volumeMounts"]}
    assert volumes["nginx-templates"]["configMap"]["name"] == generator["name"]
    assert mounts["nginx-templates"]["mountPath"] == "/etc/nginx/templates"
    assert (mounts["nginx-conf"]["mountPath"], volumes["nginx-conf"]["emptyDir"]) == ("/etc/nginx/conf.d", {})


def test_k8s_mounts_the_callback_allow_list_where_the_template_includes_it() -> None:
    """The shipped fallback is a ConfigMap of a fixed name (the CronJob replaces it) mounted at /etc/nginx/<include>."""
    (ips,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "jssdk-wechat-callback-ips"]
    assert [(DEPLOY / f).resolve() for f in ips["files"]] == [SHIPPED_CALLBACK_IPS]
    assert ips["options"]["disableNameSuffixHash"] is True
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "wechat-callback-ips")
    mount = next(m for m in container(pod_spec(), "nginx")["volumeMounts"] if m["name"] == "wechat-callback-ips")
    assert volume["configMap"]["name"] == ips["name"]
    assert (mount["mountPath"], mount["subPath"]) == (CALLBACK_IPS_PATH, SHIPPED_CALLBACK_IPS.name)
    assert mount["readOnly"] is True
    guide = (DEPLOY / "README.md").read_text()
    assert "kind: CronJob" in guide and f"kubectl create configmap {ips['name']}" in guide
    assert "kubectl rollout restart deployment/jssdk-service" in guide


def test_k8s_service_container_env_ports_and_probes(tmp_path: Path) -> None:
    """The service container reads only known variables, listens on its named port and is probed on /healthz and /readyz."""
    spec = pod_spec()
    jssdk = container(spec, "jssdk")
    assert_service_env([*k8s_env(), *(e["name"] for e in jssdk["env"])])
    secret_volume = next(v for v in spec["volumes"] if v["name"] == "secrets")["secret"]
    settings = k8s_settings(tmp_path)

    assert spec["enableServiceLinks"] is False
    assert port_of(jssdk, "service") == settings.port and settings.host == "0.0.0.0"
    assert (jssdk["livenessProbe"]["httpGet"], jssdk["readinessProbe"]["httpGet"]) == (
        {"path": "/healthz", "port": "service"},
        {"path": "/readyz", "port": "service"},
    )
    assert jssdk["args"] == json.loads(instruction("CMD"))
    context = jssdk["securityContext"]
    assert context["runAsNonRoot"] and str(context["runAsUser"]) == instruction("USER").partition(":")[0]
    assert spec["securityContext"]["fsGroup"] == context["runAsGroup"]
    admin = next(e for e in jssdk["env"] if e["name"] == "JSSDK_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]
    assert admin["name"] == secret_volume["secretName"]
    annotations = k8s_object("Deployment", "jssdk-service")["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(settings.port), "/metrics")
    cache = urlsplit(settings.cache_url)
    redis = k8s_object("Service", str(cache.hostname))
    assert cache.scheme == "redis" and redis["spec"]["ports"][0]["port"] == cache.port


def test_k8s_sidecar_fronts_the_service_and_the_service_object_targets_it() -> None:
    """nginx reaches the service on loopback at its port, listens on LISTEN_PORT, and is what the Service exposes."""
    spec = pod_spec()
    jssdk, nginx = container(spec, "jssdk"), container(spec, "nginx")
    sidecar_env = plain_env(nginx)
    assert set(sidecar_env) == SIDECAR_ENV
    assert sidecar_env["JSSDK_UPSTREAM"] == f"127.0.0.1:{port_of(jssdk, 'service')}"
    assert str(port_of(nginx, "public")) == sidecar_env["LISTEN_PORT"]
    assert nginx["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "public"}
    service = k8s_object("Service", "jssdk-service")["spec"]
    labels = k8s_object("Deployment", "jssdk-service")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["public"]
    policy = k8s_object("NetworkPolicy", "jssdk-service")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(port["port"] for rule in policy["ingress"] for port in rule["ports"]) == ["public", "service"]


def test_the_operator_guide_names_the_secret_the_manifests_use() -> None:
    """deploy/README.md creates the Secret and keys that the Deployment reads."""
    guide = (DEPLOY / "README.md").read_text()
    spec = pod_spec()
    secret = next(v for v in spec["volumes"] if v["name"] == "secrets")["secret"]
    assert f"kubectl create secret generic {secret['secretName']}" in guide
    assert f"{secret['items'][0]['key']}=" in guide and "admin-token=" in guide


# -- systemd -----------------------------------------------------------------------------------


def test_the_systemd_unit_runs_the_service_on_loopback_with_its_secret_as_a_credential(tmp_path: Path) -> None:
    """ExecStart serves, the user is dynamic, the AppSecret comes from LoadCredential, and the example settings load."""
    assert unit_values("ExecStart") == ["/opt/jssdk-service/bin/jssdk-service serve"]
    assert unit_values("DynamicUser") == ["yes"] and unit_values("NoNewPrivileges") == ["yes"]
    env = dict(pair.split("=", 1) for line in unit_values("Environment") for pair in shlex.split(line))
    (credential,) = unit_values("LoadCredential")
    name, _, source = credential.partition(":")
    assert env["JSSDK_APP_SECRET_FILE"] == f"%d/{name}" and source.startswith("/etc/jssdk-service/")
    assert unit_values("EnvironmentFile") == ["/etc/jssdk-service/jssdk.env"]
    assert_service_env(systemd_env())
    settings = systemd_settings(tmp_path)
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert systemd_unit()["Install"] == [("WantedBy", "multi-user.target")]


def test_the_daily_refresh_rewrites_the_include_and_reloads_nginx_only_on_success() -> None:
    """A oneshot runs `wechat-ips --callback --format nginx --output /etc/nginx/<include>` with the service's
    settings, reloads nginx in ExecStartPost (skipped on failure), and a timer starts it daily at a random minute."""
    unit = "jssdk-wechat-ips.service"
    assert unit_values("Type", unit) == ["oneshot"]
    (command,) = unit_values("ExecStart", unit)
    program, *args = shlex.split(command)
    assert program == unit_values("ExecStart")[0].split()[0]
    parsed = _parser().parse_args(args)
    assert (parsed.command, parsed.which, parsed.format, parsed.output) == ("wechat-ips", "callback", "nginx",
                                                                            CALLBACK_IPS_PATH)  # fmt: skip
    assert unit_values("ExecStartPost", unit) == ["+/usr/sbin/nginx -s reload"]
    assert unit_values("ReadWritePaths", unit) == [str(Path(CALLBACK_IPS_PATH).parent)]
    assert unit_values("ProtectSystem", unit) == ["strict"]
    for key in ("EnvironmentFile", "LoadCredential"):
        assert unit_values(key, unit) == unit_values(key), key
    assert "JSSDK_APP_SECRET_FILE=%d/app-secret" in unit_values("Environment", unit)

    timer = "jssdk-wechat-ips.timer"
    assert unit_values("OnCalendar", timer, "Timer") == ["daily"]
    (delay,) = unit_values("RandomizedDelaySec", timer, "Timer")
    assert seconds(delay) >= 600
    assert unit_values("Persistent", timer, "Timer") == ["true"]
    assert systemd_unit(timer)["Install"] == [("WantedBy", "timers.target")]
    guide = (DEPLOY / "README.md").read_text()
    assert "## WeChat's pushes: the callback allow list" in guide
    assert "systemctl enable --now jssdk-wechat-ips.timer" in guide
    assert f"install -m 0644 deploy/nginx/wechat-callback-ips.conf {CALLBACK_IPS_PATH}" in guide


# -- limits, timeouts and stopping -------------------------------------------------------------


def test_the_open_file_limit_is_raised_where_the_deployment_sets_it() -> None:
    """The systemd unit sets LimitNOFILE=65536 and the Compose file the same nofile ulimit for the service."""
    assert unit_values("LimitNOFILE") == ["65536"]
    nofile = compose()["services"]["jssdk"]["ulimits"]["nofile"]
    assert (nofile["soft"], nofile["hard"]) == (65536, 65536)


def test_the_workers_metrics_live_in_memory_where_the_root_filesystem_is_read_only(tmp_path: Path) -> None:
    """JSSDK_METRICS_DIR is a tmpfs in Compose, an in-memory emptyDir in Kubernetes, the RuntimeDirectory in systemd."""
    jssdk = compose()["services"]["jssdk"]
    assert jssdk["read_only"] is True
    directory = compose_settings(tmp_path).metrics_dir
    assert directory is not None and directory in [entry.split(":", 1)[0] for entry in jssdk["tmpfs"]]

    spec = pod_spec()
    service = container(spec, "jssdk")
    assert service["securityContext"]["readOnlyRootFilesystem"] is True
    directory = k8s_settings(tmp_path).metrics_dir
    (mount,) = [m for m in service["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory" and not mount.get("readOnly")

    assert unit_values("ProtectSystem") == ["strict"]
    (runtime,) = unit_values("RuntimeDirectory")
    assert systemd_settings(tmp_path).metrics_dir == f"%t/{runtime}"


def test_every_deployment_gives_a_stop_more_time_than_the_drain_and_the_requests_in_progress(tmp_path: Path) -> None:
    """stop_grace_period, terminationGracePeriodSeconds and TimeoutStopSec exceed the drain plus the shutdown."""
    grace = {
        "compose": (seconds(compose()["services"]["jssdk"]["stop_grace_period"]), compose_settings(tmp_path)),
        "k8s": (seconds(pod_spec()["terminationGracePeriodSeconds"]), k8s_settings(tmp_path)),
        "systemd": (seconds(unit_values("TimeoutStopSec")[-1]), systemd_settings(tmp_path)),
    }
    for where, (allowed, settings) in grace.items():
        assert settings.drain_seconds > 0, where
        assert allowed > longest_stop(settings), f"{where}: {allowed}s, a stop may take {longest_stop(settings)}s"


def test_the_sidecar_keeps_accepting_during_the_pods_removal_and_stops_before_the_service(tmp_path: Path) -> None:
    """nginx's preStop sleeps less than the service drains, and its sleep plus a proxied request fits the grace period."""
    spec = pod_spec()
    nginx, service = container(spec, "nginx"), container(spec, "jssdk")
    command = nginx["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    sleep = seconds(command[1])
    settings = k8s_settings(tmp_path)
    assert 0 < sleep < settings.drain_seconds
    assert sleep + seconds(template_directive("proxy_read_timeout")) < seconds(spec["terminationGracePeriodSeconds"])
    assert "lifecycle" not in service, "the service drains on SIGTERM: a preStop would only delay /readyz 503"
    assert service["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_nginx_closes_idle_upstream_connections_before_the_service_does(tmp_path: Path) -> None:
    """The upstream block keeps connections alive and times them out below every deployment's JSSDK_KEEPALIVE_TIMEOUT."""
    assert int(template_directive("keepalive", "upstream")) > 0
    nginx_idle = seconds(template_directive("keepalive_timeout", "upstream"))
    assert nginx_idle == 60
    assert Settings(accounts=()).keepalive_timeout > nginx_idle
    for settings in (compose_settings(tmp_path), k8s_settings(tmp_path), systemd_settings(tmp_path)):
        assert settings.keepalive_timeout > nginx_idle


# -- against the running service ---------------------------------------------------------------


def probe_paths() -> Iterator[str]:
    """Every path a deployment file probes the service on."""
    spec = pod_spec()
    for name in ("jssdk", "nginx"):
        for probe in ("livenessProbe", "readinessProbe"):
            if "httpGet" in container(spec, name).get(probe, {}):
                yield container(spec, name)[probe]["httpGet"]["path"]
    healthcheck = re.search(r"'http://127\.0\.0\.1:%s(/\w+)'", instruction("HEALTHCHECK"))
    assert healthcheck is not None
    yield healthcheck.group(1)


async def test_every_probed_path_answers_200_on_the_service(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """The paths the image and the pods are probed on answer 200 on a ready service, and nginx passes them unlimited."""
    paths = set(probe_paths())
    assert paths == {"/healthz", "/readyz"}
    async with http.get(f"{service.url}/v1/signature", params={"url": "https://example.com/"}) as response:
        assert response.status == 200
    for path in sorted(paths):
        async with http.get(f"{service.url}{path}") as response:
            assert response.status == 200, path
        assert f"location = {path} " in TEMPLATE.read_text()
