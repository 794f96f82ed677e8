"""Check a sweep spec against the Ray cluster it is sent to, before anything is sent.

``sweeps validate SPEC --address URL`` and ``sweeps submit`` both call ``preflight``: the spec
alone is valid (``sweeps.spec``), but whether its Tune storage and MLflow tracking store work
depends on where the trials run. A dashboard address on loopback is one machine; any other is
treated as a multi-node cluster, where every node must reach the storage and one MLflow server
must be the only writer. Nothing here talks to the cluster (``sweeps.jobs`` does).
"""

from __future__ import annotations

import ipaddress
import math
import os
from urllib.parse import urlsplit

from sweeps.dbinit import sqlite_path
from sweeps.spec import DEFAULT_TRACKING_DB, SpecError, SweepSpec
from sweeps.uris import redact

SHARED_STORAGE_SCHEMES = ("s3", "gs")  # every node of a cluster reaches these


def resolve_address(address: str | None) -> str:
    """``--address``, else ``$RAY_ADDRESS`` when it is a dashboard URL (http or https).

    Raises ``SpecError`` naming ``--address`` when neither is a dashboard URL: a bare
    ``HOST:6379`` or ``auto`` is a driver address, which the Jobs API cannot use.
    """
    if address is None:
        env = os.environ.get("RAY_ADDRESS", "")
        if not env.startswith(("http://", "https://")):
            hint = f" (RAY_ADDRESS={env!r} is not one)" if env else ""
            raise SpecError(
                "--address: give the Ray dashboard URL, e.g. --address "
                f"http://127.0.0.1:8265, or set RAY_ADDRESS to it{hint}"
            )
        address = env
    try:
        host = urlsplit(address).hostname
    except ValueError:  # "http://[bad": not a URL at all
        host = None
    if not address.startswith(("http://", "https://")) or not host:
        raise SpecError(
            f"--address must be the Ray dashboard's http(s)://HOST:PORT URL "
            f"(port 8265 by default), but got {address!r}"
        )
    return address.rstrip("/")


def is_loopback(address: str) -> bool:
    """Whether the dashboard URL names this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _setting(spec: SweepSpec, field_name: str, env: str) -> tuple[str | None, str]:
    """A setting's value and where it came from, in the order the job resolves it."""
    value = getattr(spec, field_name)
    if value:
        return value, field_name
    if os.environ.get(env):
        return os.environ[env], env
    return None, field_name


def preflight(spec: SweepSpec, address: str, *, shared_storage: bool = False) -> None:
    """Refuse storage and tracking settings that the cluster at ``address`` cannot use.

    A non-loopback address is treated as a multi-node cluster: Tune's storage must be reachable
    from every node (``s3://``, ``gs://``, or with ``shared_storage`` a path every node mounts)
    and MLflow must be a server (``http(s)://``): a SQLite or file store on the head node has
    more than one writer and is not reachable from the workers. On loopback local paths and
    SQLite are fine, but not relative ones: the job runs in a temporary working directory.

    Args:
        spec: the validated sweep; unset settings fall back to ``FLATSWEEP_STORAGE`` and
            ``MLFLOW_TRACKING_URI`` of this shell, which ``sweeps submit`` forwards.
        address: the dashboard URL, as ``resolve_address`` returns it.
        shared_storage: a local absolute path is mounted on every node (``--shared-storage``).

    Raises ``SpecError`` with one line naming the setting (or the variable it came from).
    """
    storage, storage_from = _setting(spec, "storage_path", "FLATSWEEP_STORAGE")
    tracking, tracking_from = _setting(spec, "tracking_uri", "MLFLOW_TRACKING_URI")
    if is_loopback(address):
        # Values from this shell's environment are made absolute before they are forwarded.
        if (
            storage_from == "storage_path"
            and storage
            and "://" not in storage
            and not os.path.isabs(os.path.expanduser(storage))
        ):
            raise SpecError(
                f"storage_path: {storage!r} is relative, and a submitted job runs "
                "in a temporary working directory on the cluster; give an "
                "absolute path or an s3:// or gs:// URI"
            )
        db = sqlite_path(tracking) if tracking_from == "tracking_uri" and tracking else None
        if db is not None and not os.path.isabs(os.path.expanduser(db)):
            raise SpecError(
                f"tracking_uri: {tracking!r} is a relative SQLite path, and a "
                "submitted job runs in a temporary working directory on the "
                "cluster; give sqlite:////absolute/path.db or an http(s):// server"
            )
        return

    where = f"the cluster at {address} is treated as multi-node (its host is not loopback)"
    if storage is None:
        raise SpecError(
            f"storage_path: not set, so Tune would write under the job's working "
            f"directory on one node, but {where}; set storage_path (or "
            "FLATSWEEP_STORAGE) to s3://bucket/path or gs://bucket/path, or to a "
            "path every node mounts together with --shared-storage"
        )
    scheme = storage.split("://", 1)[0].lower() if "://" in storage else ""
    if shared_storage and scheme == "" and not os.path.isabs(os.path.expanduser(storage)):
        raise SpecError(
            f"{storage_from}: --shared-storage needs an absolute path (or file:// URI) that "
            f"every node mounts, but got the relative path {redact(storage)!r}"
        )
    if scheme not in SHARED_STORAGE_SCHEMES:
        local = scheme == "file" or (scheme == "" and os.path.isabs(os.path.expanduser(storage)))
        if not (local and shared_storage):
            hint = (
                ""
                if scheme in ("", "file")
                else f"; scheme {scheme!r} is not supported for multi-node sweeps"
            )
            raise SpecError(
                f"{storage_from}: storage {redact(storage)!r} is local to one machine{hint}, "
                f"but {where}; set storage_path (or FLATSWEEP_STORAGE) to "
                "s3://bucket/path or gs://bucket/path, or pass --shared-storage "
                "if every node mounts that absolute path"
            )
    if tracking is None or not tracking.lower().startswith(("http://", "https://")):
        shown = (
            f"the default sqlite:///{DEFAULT_TRACKING_DB}"
            if tracking is None
            else repr(redact(tracking))
        )
        raise SpecError(
            f"{tracking_from}: {shown} is a store on one machine, but {where}: it "
            "would have more than one writer / not be reachable from every node; "
            "set tracking_uri (or MLFLOW_TRACKING_URI) to an http(s):// MLflow "
            "server"
        )


def trials_held(nodes: list[dict[str, float]], cpu: float, gpu: float) -> int:
    """How many trials of ``cpu`` CPUs and ``gpu`` GPUs the ``nodes`` (each one's total
    resources, as ``ray.nodes()`` gives them) hold at once. Node by node, since a trial runs
    on one node: two nodes of 2 CPUs hold four trials of 0.75 CPUs, not the five that the
    cluster's 4 CPUs would (the fifth would wait for a slot, and Tune would hold it pending)."""
    held = 0
    for node in nodes:
        # 1e-9: Ray's fractional resources are fixed-point (1e-4); 0.1 * 3 must fit 0.3.
        fits = math.floor(node.get("CPU", 0) / cpu + 1e-9)
        if gpu > 0:
            fits = min(fits, math.floor(node.get("GPU", 0) / gpu + 1e-9))
        held += fits
    return held


def check_fits_local_ray(spec: SweepSpec) -> None:
    """Refuse, before anything is written, a trial that the local Ray this sweep is about to
    start could never place (``resources.cpu: 8`` on a 2-CPU machine, a GPU where there is
    none): Tune would wait for it for ever, printing "No trial is running". Only for a Ray of
    our own: a cluster joined (a job, ``RAY_ADDRESS``) may add nodes, and Tune then waits for
    them, as it should."""
    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized() or (address and not address.startswith("http")):
        return
    try:  # what Ray counts when it starts a node here
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        cpus = get_num_cpus()
        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:  # noqa: BLE001 - Ray's private helpers moved: Tune's own wait applies
        return
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if trials_held([{"CPU": cpus, "GPU": gpus}], cpu, gpu) == 0:
        raise SpecError(
            f"resources: a trial asks for {cpu:g} CPUs and {gpu:g} GPUs, but the local Ray "
            f"a sweep starts on this machine has {cpus} CPUs and {gpus} GPUs, so no trial "
            f"could ever start; lower resources.cpu / resources.gpu, or run on a cluster "
            f"(sweeps submit, or RAY_ADDRESS)"
        )
