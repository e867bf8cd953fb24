"""Scale-out on Ray Serve: the same server application, one model and scheduler per replica.

`app_builder(args)` is the import path a Serve config names
(`edgeseq.serving.ray_deployment:app_builder`); each replica loads the artifact (present
at the same path on every node) with `threads` intra-op threads and serves the FastAPI
application of `edgeseq serve` (OpenAI-style completions, v2, metrics). Ray's proxy
spreads requests over the replicas; within a replica the scheduler batches them.

`write_serve_config` writes the config that `edgeseq deploy ray` produces and `serve run`
(or `serve deploy`, KubeRay's RayService) accepts. Needs the `ray` extra on the cluster.
"""

import json
from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError

DEPLOYMENT = "edgeseq"
IMPORT_PATH = "edgeseq.serving.ray_deployment:app_builder"


def replica_app(artifact: str, name: str, threads: int, max_batch: int, max_queue: int, limits: dict[str, Any]):
    """A no-argument builder Ray evaluates on each replica: load the model, build the app."""

    def build():
        from edgeseq.runtimes import load

        from .app import build_app
        from .limits import ServeLimits

        model = load(artifact, threads=threads, max_batch=max_batch, max_queue=max_queue)
        return build_app(model, name, ServeLimits(**limits), close_model=True)

    return build


def app_builder(args: dict[str, Any]):
    """The Serve application for `args`: artifact (required), name, threads, max_batch,
    max_queue, and the server limits (max_tokens, max_rows, max_body_bytes, timeout_s)."""
    from ray import serve

    if "artifact" not in args:
        raise BuildError("the Serve config's args have no 'artifact'", "write the config with `edgeseq deploy ray OUT -o DIR`")
    artifact = str(args["artifact"])
    threads = int(args.get("threads", 1))
    name = str(args.get("name") or Path(artifact).name)
    limits = {k: args[k] for k in ("max_tokens", "max_rows", "max_body_bytes", "timeout_s") if k in args}
    ingress = serve.ingress(replica_app(artifact, name, threads, int(args.get("max_batch", 32)),
                                        int(args.get("max_queue", 256)), limits))
    deployment = serve.deployment(ingress(), name=DEPLOYMENT, ray_actor_options={"num_cpus": threads})
    return deployment.bind()


def serve_config(artifact: str | Path, replicas: int, threads: int, name: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000) -> dict[str, Any]:
    artifact = Path(artifact).resolve()
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": "edgeseq",
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": {"artifact": str(artifact), "threads": threads, "name": name or artifact.name},
            "deployments": [{"name": DEPLOYMENT, "num_replicas": replicas, "ray_actor_options": {"num_cpus": threads}}],
        }],
    }


def write_serve_config(artifact: str | Path, out: str | Path, replicas: int = 1, threads: int = 1,
                       name: str | None = None, host: str = "127.0.0.1", port: int = 8000, force: bool = False) -> Path:
    """DIR/serve_config.yaml (JSON is YAML; the comment says how to run it), written atomically."""
    from edgeseq.atomic import atomic_folder
    from edgeseq.runtimes import read_artifact

    if replicas < 1 or threads < 1:
        raise BuildError(f"--replicas {replicas} and --threads {threads} must be at least 1", "pass e.g. --replicas 2 --threads 1")
    read_artifact(artifact)  # a clear LoadError now rather than on every replica later
    out = Path(out)
    if out.exists() and not force:
        raise BuildError(f"output folder {out} already exists", "choose another -o folder or pass --force")
    config = serve_config(artifact, replicas, threads, name, host, port)
    with atomic_folder(out) as tmp:
        (tmp / "serve_config.yaml").write_text(
            "# Ray Serve config written by `edgeseq deploy ray`. Run it on a Ray cluster where the artifact\n"
            f"# is present at {config['applications'][0]['args']['artifact']} on every node:\n"
            "#   serve run serve_config.yaml      (or: serve deploy serve_config.yaml)\n"
            + json.dumps(config, indent=2) + "\n")
    return out / "serve_config.yaml"
