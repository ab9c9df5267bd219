"""Offline checks of the cluster configs in this folder (no cloud account or Kubernetes cluster needed).

    python cluster/validate_configs.py

- aws-gpu.yaml: YAML syntax; the Ray cluster-launcher JSON schema shipped with the installed Ray
  (ray/autoscaler/ray-schema.json); Ray's own prepare_config + validate_config (defaults merged the
  way `ray up` merges them); `bash -n` on every setup/start command.
- kuberay/*.yaml: YAML syntax; apiVersion ray.io/v1; every RayCluster/RayJob field name against the
  KubeRay v1 API types (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions, AuthOptions,
  RayJobSpec); rayStartParams values are strings; pod templates and PVCs strictly against the
  Kubernetes models of the `kubernetes` Python client (unknown fields, wrong types, missing required
  fields), when that package is importable; volume, claim and cluster-selector cross references.
- local_cluster.sh: `bash -n`.

Checks whose package is missing are reported as skipped, not passed. Exit status 1 on any error.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
errors: list[str] = []
skipped: list[str] = []
passed: list[str] = []


def err(msg: str) -> None:
    errors.append(msg)


# ---------------------------------------------------------------- AWS cluster launcher config
def check_aws(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    passed.append(f"{path.name}: yaml.safe_load")
    try:
        import jsonschema
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        skipped.append(f"{path.name}: Ray schema checks ({e})")
        return
    schema_file = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    try:
        jsonschema.validate(cfg, json.loads(schema_file.read_text()))
        passed.append(f"{path.name}: jsonschema against ray {ray.__version__} {schema_file.name}")
    except jsonschema.ValidationError as e:
        err(f"{path.name}: schema: {e.message} at {list(e.absolute_path)}")
        return
    from ray.autoscaler._private.util import prepare_config, validate_config
    full = prepare_config(cfg)
    try:
        validate_config(full)
        passed.append(f"{path.name}: ray prepare_config + validate_config")
    except Exception as e:  # noqa: BLE001 - report whatever Ray raises
        err(f"{path.name}: ray validate_config: {e}")
    n = 0
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in full.get(key) or []:
            r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            if r.returncode:
                err(f"{path.name}: {key}: bash -n: {r.stderr.strip()} in {cmd!r}")
            n += 1
    passed.append(f"{path.name}: bash -n on {n} commands (after Ray merges setup_commands into the per-type lists)")
    start = " ".join(full["head_start_ray_commands"])
    if "--dashboard-host=127.0.0.1" not in start:
        err(f"{path.name}: the dashboard must bind 127.0.0.1")
    if "--host 127.0.0.1" not in start:
        err(f"{path.name}: MLflow must bind 127.0.0.1")


# ---------------------------------------------------------------- KubeRay manifests
# Field names of the KubeRay ray.io/v1 Go types (ray-operator/apis/ray/v1/*_types.go) and of
# AuthOptions (KubeRay >= v1.5.1, per the KubeRay API reference).
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                   "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
                   "workerGroupSpecs", "authOptions"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                      "upscalingMode", "env", "envFrom", "volumeMounts", "version"}
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
               "schedule"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
QUANTITY_KEYS = {"limits", "requests", "sizeLimit"}  # values of these maps/fields are quantities


def keys_in(obj: dict, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        err(f"{where}: expected a mapping, got {type(obj).__name__}")
        return
    for k in obj:
        if k not in allowed:
            err(f"{where}: unknown field {k!r}")


class K8sModels:
    """Strict structural check against the kubernetes Python client's generated models.

    Every mapping is walked through the models' attribute_map/openapi_types (unknown fields, primitive
    types). Recent clients (pydantic models with strict types) are also validated with
    Model.from_dict, which catches wrong types and missing required fields (it drops unknown keys
    silently, hence the walk).
    """

    def __init__(self) -> None:
        import kubernetes.client as kc
        from kubernetes.utils import parse_quantity
        self.kc, self.parse_quantity = kc, parse_quantity

    def _quantities(self, obj, where: str, key: str = ""):
        """Quantities may be YAML numbers for the API server; the client models want strings."""
        if isinstance(obj, dict):
            return {k: self._quantities(v, f"{where}.{k}", k if k in QUANTITY_KEYS else key)
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._quantities(x, f"{where}[{i}]", key) for i, x in enumerate(obj)]
        if key in QUANTITY_KEYS and isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
            try:
                self.parse_quantity(obj)
            except ValueError:
                err(f"{where}: not a Kubernetes quantity: {obj!r}")
            return str(obj)
        return obj

    def validate(self, obj, type_name: str, where: str) -> None:
        cls = getattr(self.kc, type_name)
        obj = self._quantities(obj, where)
        self._walk(obj, type_name, where)  # unknown fields (from_dict silently drops them)
        if hasattr(cls, "model_validate"):
            try:
                cls.from_dict(obj)
            except Exception as e:  # noqa: BLE001 - pydantic.ValidationError and friends
                err(f"{where}: {type_name}: {e}")

    def _walk(self, obj, type_name: str, where: str) -> None:
        m = re.fullmatch(r"(?:list|List)\[(.*)\]", type_name)
        if m:
            if not isinstance(obj, list):
                return err(f"{where}: expected a list")
            for i, x in enumerate(obj):
                self._walk(x, m.group(1), f"{where}[{i}]")
            return
        m = re.fullmatch(r"(?:dict\(|Dict\[)[^,]*,\s*(.*)[)\]]", type_name)
        if m:
            if not isinstance(obj, dict):
                return err(f"{where}: expected a mapping")
            for k, v in obj.items():
                self._walk(v, m.group(1), f"{where}.{k}")
            return
        primitive = {"str": str, "int": int, "bool": bool}
        if type_name in primitive:
            if not isinstance(obj, primitive[type_name]) or (type_name == "int" and isinstance(obj, bool)):
                err(f"{where}: expected {type_name}, got {obj!r}")
            return
        cls = getattr(self.kc, type_name, None)
        if cls is None or not hasattr(cls, "attribute_map"):
            return  # float, object, datetime, ...
        if not isinstance(obj, dict):
            return err(f"{where}: expected a mapping for {type_name}")
        json_to_attr = {v: k for k, v in cls.attribute_map.items()}
        for k, v in obj.items():
            if k not in json_to_attr:
                err(f"{where}: unknown field {k!r} for {type_name}")
            else:
                self._walk(v, cls.openapi_types[json_to_attr[k]], f"{where}.{k}")


def check_pod_template(models: K8sModels | None, tmpl: dict, where: str, pvc_names: set[str]) -> dict:
    if models is not None:
        models.validate(tmpl, "V1PodTemplateSpec", where)
    spec = (tmpl or {}).get("spec") or {}
    vols = {v.get("name") for v in spec.get("volumes") or []}
    for c in spec.get("containers") or []:
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in vols:
                err(f"{where}: container {c.get('name')} mounts undeclared volume {m.get('name')!r}")
        for p in c.get("ports") or []:
            if len(p.get("name", "")) > 15:
                err(f"{where}: port name {p['name']!r} longer than 15 characters")
    for v in spec.get("volumes") or []:
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in pvc_names:
            err(f"{where}: volume {v.get('name')} uses PVC {claim!r} not defined in the manifests")
    return spec


def check_ray_start_params(params, where: str) -> None:
    if not isinstance(params, dict):
        return err(f"{where}: rayStartParams must be a mapping")
    for k, v in params.items():
        if not isinstance(v, str):
            err(f"{where}.{k}: rayStartParams values must be strings (quote {v!r})")


def check_raycluster_spec(models, spec: dict, where: str, pvc_names: set[str]) -> None:
    keys_in(spec, RAYCLUSTER_SPEC, where)
    keys_in(spec.get("autoscalerOptions") or {}, AUTOSCALER_OPTIONS, f"{where}.autoscalerOptions")
    mode = (spec.get("autoscalerOptions") or {}).get("upscalingMode")
    if mode is not None and mode not in {"Default", "Aggressive", "Conservative"}:
        err(f"{where}.autoscalerOptions.upscalingMode: {mode!r}")
    if "authOptions" in spec:
        keys_in(spec["authOptions"], AUTH_OPTIONS, f"{where}.authOptions")
        if spec["authOptions"].get("mode") not in {"token", "disabled"}:
            err(f"{where}.authOptions.mode must be token or disabled")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return err(f"{where}: headGroupSpec is required")
    keys_in(head, HEAD_GROUP, f"{where}.headGroupSpec")
    check_ray_start_params(head.get("rayStartParams", {}), f"{where}.headGroupSpec.rayStartParams")
    check_pod_template(models, head.get("template"), f"{where}.headGroupSpec.template", pvc_names)
    for i, wg in enumerate(spec.get("workerGroupSpecs") or []):
        w = f"{where}.workerGroupSpecs[{i}]"
        keys_in(wg, WORKER_GROUP, w)
        for req in ("groupName", "template"):
            if req not in wg:
                err(f"{w}: {req} is required")
        check_ray_start_params(wg.get("rayStartParams", {}), f"{w}.rayStartParams")
        lo, hi, n = wg.get("minReplicas", 0), wg.get("maxReplicas", 2**31 - 1), wg.get("replicas", 0)
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= n <= hi):
            err(f"{w}: need minReplicas <= replicas <= maxReplicas, got {lo}, {n}, {hi}")
        check_pod_template(models, wg.get("template"), f"{w}.template", pvc_names)


def check_kuberay(paths: list[Path]) -> None:
    try:
        models = K8sModels()
    except ImportError as e:
        models = None
        skipped.append(f"kuberay: pod templates / PVCs against Kubernetes models ({e}; pip install kubernetes)")
    docs = []
    for p in paths:
        for d in yaml.safe_load_all(p.read_text()):
            if d is not None:
                docs.append((p.name, d))
        passed.append(f"{p.name}: yaml.safe_load_all")
    pvc_names = {d["metadata"]["name"] for _, d in docs if d.get("kind") == "PersistentVolumeClaim"}
    cluster_names = set()
    for name, d in docs:
        kind, where = d.get("kind"), f"{name}:{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        keys_in(d, {"apiVersion", "kind", "metadata", "spec"}, where)
        if models is not None:
            models.validate(d.get("metadata") or {}, "V1ObjectMeta", f"{where}.metadata")
        if kind == "PersistentVolumeClaim":
            if models is not None:
                models.validate(d, "V1PersistentVolumeClaim", where)
        elif kind == "RayCluster":
            if d.get("apiVersion") != "ray.io/v1":
                err(f"{where}: apiVersion must be ray.io/v1")
            cluster_names.add(d["metadata"]["name"])
            check_raycluster_spec(models, d.get("spec") or {}, f"{where}.spec", pvc_names)
        elif kind == "RayJob":
            if d.get("apiVersion") != "ray.io/v1":
                err(f"{where}: apiVersion must be ray.io/v1")
            spec = d.get("spec") or {}
            keys_in(spec, RAYJOB_SPEC, f"{where}.spec")
            keys_in(spec.get("submitterConfig") or {}, {"backoffLimit"}, f"{where}.spec.submitterConfig")
            if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
                err(f"{where}.spec.submissionMode: {spec.get('submissionMode')!r}")
            if ("clusterSelector" in spec) == ("rayClusterSpec" in spec):
                err(f"{where}.spec: give exactly one of clusterSelector and rayClusterSpec")
            if "rayClusterSpec" in spec:
                check_raycluster_spec(models, spec["rayClusterSpec"], f"{where}.spec.rayClusterSpec", pvc_names)
            if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                err(f"{where}.spec.runtimeEnvYAML must be a YAML mapping")
            ep = spec.get("entrypoint", "")
            if re.search(r"&&|\|\||;|\|", ep):
                err(f"{where}.spec.entrypoint: shell operators would run in the submitter, not the job: {ep!r}")
        else:
            err(f"{where}: unexpected kind")
    for name, d in docs:
        sel = ((d.get("spec") or {}).get("clusterSelector") or {}).get("ray.io/cluster")
        if d.get("kind") == "RayJob" and sel is not None and sel not in cluster_names:
            err(f"{name}: clusterSelector ray.io/cluster={sel!r} matches no RayCluster in the manifests")
    if models is not None:
        passed.append("kuberay: pod templates, metadata and PVCs against kubernetes "
                      f"{__import__('kubernetes').__version__} models (strict fields + required fields)")
    passed.append("kuberay: RayCluster/RayJob field names against the KubeRay ray.io/v1 types; cross references")


def main() -> int:
    check_aws(HERE / "aws-gpu.yaml")
    check_kuberay(sorted((HERE / "kuberay").glob("*.yaml")))
    r = subprocess.run(["bash", "-n", str(HERE / "local_cluster.sh")], capture_output=True, text=True)
    if r.returncode:
        err(f"local_cluster.sh: bash -n: {r.stderr.strip()}")
    else:
        passed.append("local_cluster.sh: bash -n")
    for p in passed:
        print("ok      ", p)
    for s in skipped:
        print("skipped ", s)
    for e in errors:
        print("ERROR   ", e)
    print(f"{len(passed)} passed, {len(errors)} failed" + (f", {len(skipped)} skipped" if skipped else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
