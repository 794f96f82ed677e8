"""Static checks of infra/: the configs parse, pin what pyproject.toml pins, publish nothing
beyond loopback or ClusterIP, commit no secret, and use only documented environment variables.

Offline and fast: nothing here builds an image, starts a container or opens a socket.
"""

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
README = INFRA / "README.md"
PLACEHOLDER = "change-me"

# What the flatsweep code reads from the environment (sweeps/, through MLflow, Ray and S3).
CODE_ENV = {
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "FLATSWEEP_STORAGE",
    "FLATSWEEP_CACHE_DIR",
    "FLATSWEEP_OPTUNA_STORAGE",
    "FLATSWEEP_DRAIN_TIMEOUT_S",
    "FLATSWEEP_MLFLOW_WRITERS",
    "FLATSWEEP_MLFLOW_PROCESS",
    "FLATSWEEP_MLFLOW_METRICS_EVERY_S",
    "FLATSWEEP_MLFLOW_BULK",
    "FLATSWEEP_OPTUNA_BULK",
}
# Set by the shell or the OS, not part of our interface.
SHELL_VARS = {"HOME", "PATH", "PWD", "SECONDS", "BASH_SOURCE", "TMPDIR"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
ENV_REF = re.compile(r"\$\$?\{?([A-Z][A-Z0-9_]*)")
TRIALS_IMAGE = "ghcr.io/flatsweep/flatsweep-trials:0.1.0"

YAML_FILES = sorted(INFRA.rglob("*.yaml"))
K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))
SHELL_SCRIPTS = sorted(INFRA.rglob("*.sh"))
ENV_FILES = [INFRA / "docker" / ".env.example", INFRA / "cluster" / "cluster.env.example"]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", dep)
        assert match, f"unpinned dependency in pyproject.toml: {dep!r}"
        found[match[1].lower()] = match[2]
    return found


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker" / "compose.yaml").read_text())


def k8s_docs() -> list[dict]:
    return [doc for path in K8S_FILES for doc in load_docs(path)]


def k8s_kind(kind: str) -> list[dict]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def launcher() -> dict:
    return yaml.safe_load((INFRA / "cluster" / "aws-gpu.yaml").read_text())


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def walk(node) -> Iterator:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("containers", [])


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = [("RayCluster", doc["spec"]) for doc in k8s_kind("RayCluster")]
    specs += [("RayJob", doc["spec"]["rayClusterSpec"]) for doc in k8s_kind("RayJob")]
    return specs


def readme_env_names() -> set[str]:
    """Every `NAME` in the first cell of a Markdown table row of infra/README.md."""
    names = set()
    for line in README.read_text().splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def config_env_names() -> dict[str, set[str]]:
    """The environment variable names each infra config sets or reads."""
    found: dict[str, set[str]] = {}

    spec = compose()
    names = set(ENV_REF.findall((INFRA / "docker" / "compose.yaml").read_text()))
    for service in spec["services"].values():
        env = service.get("environment", {})
        names |= set(env) if isinstance(env, dict) else {item.split("=")[0] for item in env}
    found["infra/docker/compose.yaml"] = names

    for path in K8S_FILES:
        names = set()
        for doc in load_docs(path):
            for node in walk(doc):
                if isinstance(node, dict) and isinstance(node.get("env"), list):
                    names |= {item["name"] for item in node["env"]}
            if doc["kind"] in ("Secret", "ConfigMap"):
                data = doc.get("stringData") or doc.get("data") or {}
                names |= {key for key in data if key.isupper()}  # auth_token is not env
        found[rel(path)] = names

    commands = "\n".join(
        cmd for key, value in launcher().items() if key.endswith("_commands") for cmd in value
    )
    names = set(ENV_REF.findall(commands)) | set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", commands))
    found["infra/cluster/aws-gpu.yaml"] = names - SHELL_VARS

    for path in ENV_FILES:
        found[rel(path)] = set(env_file(path))
    for path in SHELL_SCRIPTS:
        found[rel(path)] = set(ENV_REF.findall(path.read_text())) - SHELL_VARS

    entrypoint = (INFRA / "docker" / "mlflow_entrypoint.py").read_text()
    found["infra/docker/mlflow_entrypoint.py"] = set(
        re.findall(r"[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']", entrypoint)
    )
    return found


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs, f"{rel(path)} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: top level must be a mapping"


@pytest.mark.parametrize("path", K8S_FILES, ids=rel)
def test_k8s_objects_are_namespaced_and_typed(path):
    for doc in load_docs(path):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{rel(path)}: {doc.get('kind')}"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "flatsweep", (
                f"{rel(path)}: {doc['kind']}/{doc['metadata']['name']} must set namespace"
            )


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=rel)
def test_shell_script_parses(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cluster_launcher_matches_ray_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = launcher()
    util.validate_config(config)
    util.validate_config(util.prepare_config(config))


def test_mlflow_entrypoint_compiles():
    source = (INFRA / "docker" / "mlflow_entrypoint.py").read_text()
    compile(source, "mlflow_entrypoint.py", "exec")


# --- versions ---------------------------------------------------------------------------------


def test_pinned_versions_agree_with_pyproject():
    pinned = pins()
    mentions = []
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text()
        for name, version in re.findall(
            r"\b(ray|mlflow|torch|gunicorn)(?:\[[^\]]*\])?==([\w.]+)", text
        ):
            mentions.append((rel(path), name, version))
        for version in re.findall(r"flatsweep-mlflow:([\w.]+)", text):
            mentions.append((rel(path), "mlflow", version))
        for version in re.findall(r"rayproject/ray:(\d[\w.]*)", text):
            mentions.append((rel(path), "ray", version.split("-")[0]))
    for doc in k8s_docs():
        for node in walk(doc):
            if isinstance(node, dict) and "rayVersion" in node:
                mentions.append(("infra/k8s", "ray", str(node["rayVersion"])))

    wrong = [(path, name, v) for path, name, v in mentions if v != pinned[name]]
    assert not wrong, f"pyproject.toml pins {pinned}, but infra names {wrong}"
    named = {name for _, name, _ in mentions}
    assert named >= {"ray", "mlflow", "torch"}, f"infra names versions only of {named}"


def test_trials_image_installs_pyproject_pins():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert "pyproject.toml" in dockerfile
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert re.search(r"^USER (?!root|0\b)", dockerfile, re.M), "trials image must not run as root"


def test_mlflow_image_is_non_root_with_auth_extra():
    dockerfile = (INFRA / "docker" / "mlflow.Dockerfile").read_text()
    assert f"mlflow[auth]=={pins()['mlflow']}" in dockerfile
    assert re.search(r"^USER (?!root|0\b)", dockerfile, re.M)


# --- exposure ---------------------------------------------------------------------------------


def test_compose_publishes_only_on_loopback():
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            published.append(name)
            assert host_ip == "127.0.0.1", f"compose service {name} publishes {port!r}"
    assert {"mlflow", "minio"} <= set(published)
    assert "ports" not in compose()["services"]["postgres"], "only MLflow needs PostgreSQL"


def test_compose_mlflow_runs_basic_auth_on_postgres_and_s3():
    services = compose()["services"]
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "--artifacts-destination=s3://mlflow/" in command
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["mlflow"]["environment"]["POSTGRES_HOST"] == "postgres"
    assert services["mlflow"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }


def test_k8s_mlflow_runs_basic_auth():
    (deployment,) = [d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = containers(deployment["spec"]["template"]["spec"])
    args = container["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-server"}}]


def test_every_mlflow_server_infra_starts_runs_gunicorn_with_one_set_of_options():
    """uvicorn --workers N answers kept-alive requests ~40 ms late (Kludex/uvicorn#3149), so
    up.sh, compose, k8s and the image's default command all serve with gunicorn, alike, and
    up.sh, compose and k8s turn MLflow's job execution off."""

    def opts(args: list[str]) -> list[str]:
        found = [a.split("=", 1)[1] for a in args if a.startswith("--gunicorn-opts=")]
        found += [b for a, b in zip(args, args[1:], strict=False) if a == "--gunicorn-opts"]
        return found

    up = (INFRA / "local" / "up.sh").read_text()
    (deployment,) = [d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = containers(deployment["spec"]["template"]["spec"])
    cmd = re.search(
        r"^CMD (\[.*?\])", (INFRA / "docker" / "mlflow.Dockerfile").read_text(), re.M | re.S
    )
    found = {
        "up.sh": [shlex.split(m)[0] for m in re.findall(r"^\s*--gunicorn-opts (.+)$", up, re.M)],
        "compose": opts(compose()["services"]["mlflow"]["command"]),
        "k8s": opts(container["args"]),
        "mlflow.Dockerfile CMD": opts(json.loads(cmd[1].replace("\\\n", ""))),
    }
    assert all(len(v) == 1 for v in found.values()), found
    assert len({v[0] for v in found.values()}) == 1, found
    (value,) = found["up.sh"]
    assert "--no-control-socket" in shlex.split(value)
    assert not re.search(r"--(bind|b)\b", value), "the bind address is mlflow's --host"
    # ... and without MLflow's job consumers (huey), which poll the store all the time.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert (
        compose()["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
        == "false"
    )
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" in up


def test_k8s_services_are_cluster_ip():
    services = k8s_kind("Service")
    assert services
    for service in services:
        name = service["metadata"]["name"]
        assert service["spec"].get("type") == "ClusterIP", f"Service {name}"
        for port in service["spec"]["ports"]:
            assert "nodePort" not in port, f"Service {name}"
    for kind, spec in ray_cluster_specs():
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", kind
    assert not k8s_kind("Ingress")


def test_ray_clusters_autoscale_gpus_with_token_auth():
    for kind, spec in ray_cluster_specs():
        assert spec["rayVersion"] == pins()["ray"], kind
        assert spec["enableInTreeAutoscaling"] is True, kind
        assert spec["authOptions"] == {"mode": "token", "secretName": "flatsweep-ray-auth"}, kind
        (group,) = spec["workerGroupSpecs"]
        assert group["minReplicas"] == 0 < group["maxReplicas"], kind
        pods = [spec["headGroupSpec"]["template"]["spec"], group["template"]["spec"]]
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True, kind
            for container in containers(pod):
                assert container["image"] == TRIALS_IMAGE, kind
                assert {"configMapRef": {"name": "flatsweep-trials"}} in container["envFrom"]
                assert {"secretRef": {"name": "flatsweep-trials"}} in container["envFrom"]
        (worker,) = containers(group["template"]["spec"])
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1", kind
        (head,) = containers(spec["headGroupSpec"]["template"]["spec"])
        assert "nvidia.com/gpu" not in head["resources"]["limits"], kind


def test_rayjob_runs_the_raycluster_spec():
    (cluster,) = k8s_kind("RayCluster")
    (job,) = k8s_kind("RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], (
        "infra/k8s/rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    )
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_entrypoint_is_a_fixed_command():
    (job,) = k8s_kind("RayJob")
    entrypoint = job["spec"]["entrypoint"]
    assert re.fullmatch(r"sweeps run /app/examples/[\w./-]+\.ya?ml", entrypoint), entrypoint


def test_networkpolicies_deny_by_default_and_admit_only_pods():
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in k8s_kind("NetworkPolicy")}
    default = policies["default-deny-ingress"]
    assert default["podSelector"] == {} and "ingress" not in default
    ray_selected = False
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"NetworkPolicy {name} admits an address range"
        if spec["podSelector"].get("matchLabels", {}).get("ray.io/node-type") == "head":
            ray_selected = True
            ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
            assert ports == {8265, 10001}, name
    assert ray_selected


def test_up_sh_binds_dashboard_and_mlflow_to_loopback():
    script = (INFRA / "local" / "up.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in script
    assert "--node-ip-address=127.0.0.1" in script
    assert re.search(r"^\s*--host 127\.0\.0\.1$", script, re.M)
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    hosts = re.findall(r"--(?:dashboard-)?host[= ](\S+)", code)
    assert set(hosts) == {"127.0.0.1"}, hosts


def test_cluster_launcher_keeps_dashboard_local_and_auth_on():
    config = launcher()
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "export RAY_AUTH_MODE=token" in " ".join(config[key]), key
    worker = config["available_node_types"]["ray.worker.gpu"]
    assert worker["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
    assert config["available_node_types"]["ray.head.cpu"]["resources"] == {"CPU": 0}
    assert "infra/cluster/cluster.env" in config["file_mounts"].values()


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENV_FILES, ids=rel)
def test_env_examples_hold_only_placeholders(path):
    for key, value in env_file(path).items():
        if SECRET_NAME.search(key) or key.endswith("_USER") or key.endswith("_USERNAME"):
            assert value == PLACEHOLDER, f"{rel(path)}: {key} must be {PLACEHOLDER!r}"
        else:
            assert PLACEHOLDER in value, f"{rel(path)}: {key} should hold a placeholder"


def test_k8s_secrets_hold_only_placeholders():
    secrets = k8s_kind("Secret")
    assert {s["metadata"]["name"] for s in secrets} == {
        "flatsweep-ray-auth",
        "flatsweep-trials",
        "mlflow-server",
    }
    for secret in secrets:
        assert "data" not in secret, "base64 `data:` hides what is committed; use stringData"
        for key, value in secret["stringData"].items():
            assert value == PLACEHOLDER, f"Secret {secret['metadata']['name']}: {key}"
    assert not any(SECRET_NAME.search(key) for cm in k8s_kind("ConfigMap") for key in cm["data"])


def test_no_secret_literals_in_configs():
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", str(value)), (
                    f"compose {name}: {key} must come from .env as ${{{key}:?...}}"
                )
    for doc in k8s_docs():
        for node in walk(doc):
            if isinstance(node, dict) and isinstance(node.get("env"), list):
                for item in node["env"]:
                    if SECRET_NAME.search(item["name"]):
                        assert "value" not in item, f"{item['name']} must use valueFrom"


def test_no_known_default_credentials_anywhere():
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / "docs" / "cluster.md"]
    for path in files:
        text = path.read_text()
        for default in ("password1234", "minioadmin"):
            assert default not in text, f"{rel(path)} mentions the default {default!r}"
        assert not re.search(r"^\s*admin_password\s*=\s*\S", text, re.M), rel(path)


@pytest.mark.parametrize("path", ["infra/docker/.env", "infra/cluster/cluster.env"])
def test_secret_files_are_gitignored(path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    result = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path])
    assert result.returncode == 0, f"{path} is not gitignored"


def _entrypoint():
    path = INFRA / "docker" / "mlflow_entrypoint.py"
    spec = importlib.util.spec_from_file_location("mlflow_entrypoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_entrypoint_refuses_placeholders_and_missing_auth():
    entrypoint = _entrypoint()
    good = {
        "POSTGRES_PASSWORD": "pg-secret",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret-123",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key",
    }
    entrypoint.check_secrets(good)
    with pytest.raises(SystemExit, match="placeholder"):
        entrypoint.check_secrets({**good, "AWS_SECRET_ACCESS_KEY": PLACEHOLDER})
    with pytest.raises(SystemExit, match="MLFLOW_FLASK_SERVER_SECRET_KEY must be set"):
        entrypoint.check_secrets({**good, "MLFLOW_FLASK_SERVER_SECRET_KEY": ""})
    with pytest.raises(SystemExit, match="--app-name basic-auth"):
        entrypoint.main(["mlflow-entrypoint", "--host", "0.0.0.0"])


def test_mlflow_entrypoint_quotes_the_password_for_url_and_ini():
    import configparser

    entrypoint = _entrypoint()
    env = {"POSTGRES_PASSWORD": "p%w@d:/ x", "POSTGRES_HOST": "db"}
    parser = configparser.ConfigParser()
    parser.read_string(entrypoint.auth_ini(env))
    uri = parser["mlflow"]["database_uri"]
    assert uri == "postgresql+psycopg2://mlflow:p%25w%40d%3A%2F%20x@db:5432/mlflow_auth"
    assert "admin_password" not in parser["mlflow"]


# --- environment variables --------------------------------------------------------------------


def test_config_env_names_are_documented():
    documented = readme_env_names()
    missing = {
        path: sorted(names - documented)
        for path, names in config_env_names().items()
        if names - documented
    }
    assert not missing, f"not in the tables of infra/README.md: {missing}"


def test_code_env_is_documented():
    assert CODE_ENV <= readme_env_names(), sorted(CODE_ENV - readme_env_names())


def test_trials_get_only_what_the_code_reads():
    trials = set()
    for doc in k8s_docs():
        if doc["kind"] in ("Secret", "ConfigMap") and doc["metadata"]["name"] == "flatsweep-trials":
            trials |= set(doc.get("stringData") or doc.get("data"))
    trials |= set(env_file(INFRA / "cluster" / "cluster.env.example"))
    up = (INFRA / "local" / "up.sh").read_text()
    printed = re.findall(r'"export ([A-Z_]+)=', up)
    assert printed, "up.sh prints no export lines"
    trials |= set(printed)
    assert trials <= CODE_ENV, sorted(trials - CODE_ENV)


def test_every_variable_the_code_reads_is_listed():
    read = re.compile(
        r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
        r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
    )
    found = set()
    for package in ("trainers", "search_spaces", "sweeps"):
        for path in (ROOT / package).rglob("*.py"):
            found |= {a or b for a, b in read.findall(path.read_text())}
    assert "FLATSWEEP_STORAGE" in found  # the scan sees what it should
    # the OS's, and Tune's own snapshot period (read only to honour a user's setting)
    os_vars = {"XDG_CACHE_HOME", "TUNE_GLOBAL_CHECKPOINT_S"}
    assert found - os_vars <= CODE_ENV, sorted(found - os_vars - CODE_ENV)
