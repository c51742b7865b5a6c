"""deploy/kubernetes, checked without a cluster: every manifest against Kubernetes' own schemas, the RBAC
against the API calls gateway_provisioners' Kubernetes provisioner makes, the Deployment's command and
variables against the real CLI, its probes against a real gateway started as the pod starts it, and the
kernelspec against what gateway_provisioners' spec tool writes."""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import aiohttp
import kubernetes_validate
import yaml

from kernels_gateway import cli
from kernels_gateway.config import from_namespace

from .test_docker import REPO, arguments

DEPLOY = REPO / "deploy" / "kubernetes"
# The oldest release the manifests are for (ReadWriteOncePod is GA from 1.29 on), and the newest whose
# schemas kubernetes-validate bundles here, which would catch an API that has been removed since.
KUBERNETES = ("1.29.0", "1.37.0")
SPEC = "k8s_python"
SPEC_TOOL_ARGS = ["--launch-timeout", "120"]  # as kustomization.yaml says
PROVISIONERS = "jupyter_client.kernel_provisioners"


def tool(name: str) -> str:
    """A console script of the test's own environment."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert found, f"{name} comes with the test extra"
    return found


def gateway_provisioners() -> Path:
    """The installed package's folder, found without importing it: importing it starts its response
    manager's set-up, and its Kubernetes module wants a cluster."""
    return Path(importlib.util.find_spec("gateway_provisioners").origin).parent


def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def generated_config_map(generator: dict) -> dict:
    """A ConfigMap as kustomize's configMapGenerator makes it: one key per file, named after the file,
    text in `data`, anything that is not UTF-8 in `binaryData` (the name's hash suffix aside)."""
    data, binary = {}, {}
    for file in generator["files"]:
        content = (DEPLOY / file).read_bytes()
        try:
            data[PurePosixPath(file).name] = content.decode()
        except UnicodeDecodeError:
            binary[PurePosixPath(file).name] = base64.b64encode(content).decode()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
            "data": data, **({"binaryData": binary} if binary else {})}


def manifests() -> list[dict]:
    """Every object `kubectl apply -k deploy/kubernetes` creates."""
    found = [doc for resource in kustomization()["resources"]
             for doc in yaml.safe_load_all((DEPLOY / resource).read_text()) if doc]
    return found + [generated_config_map(g) for g in kustomization().get("configMapGenerator", [])]


def one(kind: str) -> dict:
    [found] = [m for m in manifests() if m["kind"] == kind]
    return found


def pod() -> dict:
    return one("Deployment")["spec"]["template"]


def container() -> dict:
    [found] = pod()["spec"]["containers"]
    return found


def container_env() -> dict[str, str]:
    """The environment the container starts with: the image's ENV (the root Dockerfile's, which the
    Kubernetes image inherits), then the Deployment's plain values. Values from the API (valueFrom) are
    left out: no cluster gives them here."""
    env = dict(entry.partition("=")[::2] for line in arguments("ENV") for entry in shlex.split(line))
    env.update({e["name"]: e["value"] for e in container()["env"] if "value" in e})
    return env


def mount(volume_kind: str) -> dict:
    """The container's mount of its one volume of that kind, with the volume's own fields."""
    volumes = {v["name"]: v for v in pod()["spec"]["volumes"]}
    [found] = [{**m, **volumes[m["name"]]} for m in container()["volumeMounts"] if volume_kind in volumes[m["name"]]]
    return found


def config():
    """The configuration the gateway resolves from the Deployment's arguments and the container's
    environment, through its own parser (an unknown option exits here as it would in the pod)."""
    return from_namespace(cli.parser().parse_args(container()["args"]), environ=container_env())


# -- schemas -----------------------------------------------------------------------------------


def test_every_manifest_is_valid_for_kubernetes():
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}, "kustomization.yaml lists every manifest"
    problems = []
    for version in KUBERNETES:
        for manifest in manifests():
            # strict: a field Kubernetes does not know (a typo, a misplaced key) is an error too, where
            # the API server would drop it without a word
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(map(str, e.path))
                problems.append(f"{version}: {manifest['kind']} {manifest['metadata']['name']}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(e.message)
    assert not problems, "\n".join(problems)
    assert {m["kind"] for m in manifests()} == {
        "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Deployment", "Service", "ConfigMap"}


def test_the_kernelspec_config_map_fits_and_is_mounted_whole():
    [generator] = kustomization()["configMapGenerator"]
    shipped = DEPLOY / "kernelspecs" / SPEC
    files = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file())
    assert sorted(Path(f).relative_to(f"kernelspecs/{SPEC}").as_posix() for f in generator["files"]) == files
    config_map = generated_config_map(generator)
    assert len(yaml.safe_dump(config_map).encode()) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"
    volume = mount("configMap")
    assert volume["configMap"]["name"] == generator["name"]
    # each key back at its path in the kernelspec's folder (keys cannot hold a slash)
    assert sorted(item["path"] for item in volume["configMap"]["items"]) == files
    for item in volume["configMap"]["items"]:
        assert PurePosixPath(item["path"]).name == item["key"]


# -- RBAC --------------------------------------------------------------------------------------

# Called only for kernels in namespaces of their own (GP_SHARED_NAMESPACE=False), which the Deployment
# does not ask for: the namespace, its role binding, and the namespace's deletion at the kernel's end.
OWN_NAMESPACE_ONLY = {"_create_kernel_namespace", "_create_role_binding"}
API_METHOD = re.compile(r"(create|read|list|delete|patch|replace)_(?:namespaced_)?([a-z_]+)")
VERBS = {"read": "get"}


def api_calls(path: Path) -> set[tuple[str, str, str]]:
    """(enclosing function, verb, resource) of each `client.XxxApi(...).verb_[namespaced_]kind(...)`."""
    calls = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Attribute)
                    and node.func.value.func.attr.endswith("Api")
                    and (found := API_METHOD.fullmatch(node.func.attr))):
                verb, kind = found.groups()
                calls.add((function.name, VERBS.get(verb, verb), kind.replace("_", "") + "s"))
    return calls


def test_the_role_grants_exactly_what_the_provisioner_calls():
    # The Kubernetes provisioner's module and those of its base classes
    provisioner = {call for module in ("k8s.py", "container.py", "remote_provisioner.py")
                   for call in api_calls(gateway_provisioners() / module)}
    scripts = DEPLOY / "kernelspecs" / SPEC / "scripts"
    # The launcher (run in the gateway's pod, the kernelspec's argv) creates the objects its template
    # describes, each through its own call; only those kinds' calls ever run.
    template_kinds = {k.lower() + "s" for k in re.findall(r"^kind: (\w+)", (scripts / "kernel-pod.yaml.j2").read_text(), re.M)}
    launcher = {(verb, kind) for _, verb, kind in api_calls(scripts / "launch_kubernetes.py") if kind in template_kinds}
    managed = {(verb, kind) for function, verb, kind in provisioner
               if function not in OWN_NAMESPACE_ONLY and kind != "namespaces"}
    used = launcher | managed
    assert ("create", "pods") in used, "the scan finds the provisioner's calls"
    env = {e["name"]: e for e in container()["env"]}
    assert env["GP_SHARED_NAMESPACE"]["value"] == "True", "kernels' pods go to the gateway's namespace"
    assert env["GP_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    role = one("Role")
    granted = {(verb, resource) for rule in role["rules"] for verb in rule["verbs"] for resource in rule["resources"]}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert granted == used, f"granted and unused: {sorted(granted - used)}; used and not granted: {sorted(used - granted)}"
    binding, account = one("RoleBinding"), one("ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert pod()["spec"]["serviceAccountName"] == account["metadata"]["name"]


# -- the Deployment ----------------------------------------------------------------------------


def gateway_help() -> tuple[set[str], set[str]]:
    """The options and variables `kernels-gateway --help` names."""
    text = " ".join(subprocess.run([tool("kernels-gateway"), "--help"], capture_output=True, text=True,
                                   check=True).stdout.split())
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))
    variables = {name.strip() for names in re.findall(r"\(env ([A-Z_, ]+);", text) for name in names.split(",")}
    return options, variables


def gateway_provisioners_variables() -> set[str]:
    return {name for path in gateway_provisioners().rglob("*.py") for name in re.findall(r"[\"'](GP_[A-Z_]+)[\"']", path.read_text())}


def test_the_command_and_variables_are_the_gateways_own():
    options, variables = gateway_help()
    given = [arg for arg in container()["args"] if arg.startswith("--")]
    assert given and set(given) <= options, f"not options of kernels-gateway: {set(given) - options}"
    assert "command" not in container(), "the image's entrypoint, tini -- kernels-gateway, stays"
    assert [image["name"] for image in kustomization()["images"]] == [container()["image"]], "kustomize names the image"
    assert arguments("ENTRYPOINT") == ['["tini", "--", "kernels-gateway"]']
    assert not re.search(r"^\s*(ENTRYPOINT|CMD)\b", (DEPLOY / "Dockerfile").read_text(), re.M | re.I)
    ours = {e["name"] for e in container()["env"]}
    provisioner = {name for name in ours if name.startswith("GP_")}
    assert provisioner <= gateway_provisioners_variables(), f"not read by gateway_provisioners: {provisioner - gateway_provisioners_variables()}"
    assert ours - provisioner - {"JUPYTER_PATH"} <= variables, f"not read by kernels-gateway: {ours - provisioner - variables}"

    resolved = config()
    runtime = mount("persistentVolumeClaim")
    assert resolved.runtime_dir.is_relative_to(runtime["mountPath"]), "the runtime directory is on the volume"
    assert runtime["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]
    assert one("PersistentVolumeClaim")["spec"]["accessModes"] in (["ReadWriteOnce"], ["ReadWriteOncePod"])
    deployment = one("Deployment")["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}, "never two supervisors"
    # a clean stop: workers 10 s, the supervisor 15 s plus --shutdown-wait
    assert pod()["spec"]["terminationGracePeriodSeconds"] >= 15 + resolved.shutdown_wait + 10

    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports["http"] == resolved.port
    assert resolved.ip == "0.0.0.0", "the pod's address reaches the gateway"
    assert ports["kernel-response"] == int(container_env()["GP_RESPONSE_PORT"])
    service = one("Service")["spec"]
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    labels = pod()["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert pod()["metadata"]["annotations"]["prometheus.io/port"] == str(resolved.port)
    assert pod()["metadata"]["annotations"]["prometheus.io/path"] == f"{resolved.base}/metrics"


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


async def test_the_probes_ask_a_real_gateway_started_as_the_pod_starts_it(start_gateway, http, tmp_path):
    # The pod's file system, as far as the gateway reads it: the kernelspec's volume at its mount path.
    root = tmp_path / "pod"
    volume = mount("configMap")
    [generator] = kustomization()["configMapGenerator"]
    config_map = generated_config_map(generator)
    for item in volume["configMap"]["items"]:
        target = root / volume["mountPath"].lstrip("/") / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["key"] in config_map.get("binaryData", {}):
            target.write_bytes(base64.b64decode(config_map["binaryData"][item["key"]]))
        else:
            target.write_text(config_map["data"][item["key"]])
    env = container_env()
    env["JUPYTER_PATH"] = str(root / env["JUPYTER_PATH"].lstrip("/"))
    env["KERNELS_GATEWAY_IP"] = "127.0.0.1"  # a test listens on loopback only
    args = list(container()["args"])
    at = args.index("--runtime-dir")
    del args[at:at + 2]  # the test's own, in a temporary folder
    gateway = await start_gateway(*args, env=env)
    env["KERNELS_GATEWAY_PORT"] = str(gateway.port)

    async def probe(spec: dict) -> bool:
        if "httpGet" in spec:
            assert spec["httpGet"]["port"] in {p["name"] for p in container()["ports"]}
            try:
                async with http.get(f"http://127.0.0.1:{gateway.port}{spec['httpGet']['path']}") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False
        command = spec["exec"]["command"]
        done = subprocess.run([tool(command[0]), *command[1:]], env={**os.environ, **env}, capture_output=True)
        return done.returncode == 0

    probes = [container()[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    for spec in probes:
        assert await probe(spec), spec
    async with http.get(f"{gateway.url}/api/kernelspecs") as response:
        specs = await response.json()
    assert specs["default"] == SPEC, "the kernelspec is found where the pod mounts it"
    assert specs["kernelspecs"][SPEC]["spec"]["metadata"]["kernel_provisioner"]["provisioner_name"] == "kubernetes-provisioner"

    assert await gateway.stop() == 0
    for spec in probes:
        assert not await probe(spec), f"a stopped gateway fails {spec}"


# -- the kernelspec ----------------------------------------------------------------------------


def test_the_kernelspec_is_what_the_spec_tool_writes(tmp_path):
    pinned = re.search(r"gateway_provisioners\[k8s\]==([\d.]+)", (DEPLOY / "Dockerfile").read_text()).group(1)
    assert importlib.metadata.version("gateway_provisioners") == pinned, (
        "the image runs the version tested here: regenerate kernelspecs/ with its jupyter-k8s-spec, "
        "and check rbac.yaml, when either changes")
    subprocess.run([tool("jupyter-k8s-spec"), "install", "--prefix", str(tmp_path), *SPEC_TOOL_ARGS],
                   check=True, capture_output=True)
    made, shipped = tmp_path / "share" / "jupyter" / "kernels" / SPEC, DEPLOY / "kernelspecs" / SPEC
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    # The pod's prefix in place of the tool's: the launcher's path in argv is where the pod mounts it.
    jupyter_path = container_env()["JUPYTER_PATH"]
    assert mount("configMap")["mountPath"] == f"{jupyter_path}/kernels/{SPEC}"
    prefix = str(PurePosixPath(jupyter_path).parent.parent)
    for file in files:
        expected = (made / file).read_bytes()
        if file.name == "kernel.json":
            expected = expected.replace(str(tmp_path).encode(), prefix.encode())
        assert (shipped / file).read_bytes() == expected, f"{file} differs from what jupyter-k8s-spec writes"

    spec = yaml.safe_load((shipped / "kernel.json").read_text())
    registered = {ep.name for ep in importlib.metadata.distribution("gateway_provisioners").entry_points
                  if ep.group == PROVISIONERS}
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] in registered
    assert container_env()["KERNELS_GATEWAY_DEFAULT_KERNEL_NAME"] == SPEC
