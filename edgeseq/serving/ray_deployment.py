"""Scale-out on Ray Serve: the same server application, one model and scheduler per replica.

`app_builder(args)` is the import path a Serve config names
(`edgeseq.serving.ray_deployment:app_builder`); each replica loads the artifact (present
at the same path on every node) with `threads` intra-op threads and serves the FastAPI
application of `edgeseq serve` (OpenAI-style completions, v2, metrics). Ray's proxy
spreads requests over the replicas; within a replica the scheduler batches them.

`write_serve_config` writes the config that `edgeseq deploy ray` produces and `serve run`
(or `serve deploy`, KubeRay's RayService) accepts. Needs the `ray` extra on the cluster.

API keys never go into the config: it names an environment variable (`api_key_env`), and
each replica reads its keys (one or more, separated by spaces) from that variable, which
Ray workers inherit from the `ray start` of their node. A replica whose variable is unset
refuses to start, so a config written for keys never serves without them.
"""

import json
import os
from pathlib import Path
from typing import Any

from edgeseq.errors import BuildError

DEPLOYMENT = "edgeseq"
IMPORT_PATH = "edgeseq.serving.ray_deployment:app_builder"


def replica_keys(api_key_env: str | None, environ=os.environ):
    """The keys a replica serves with, from the variable the config names (None: no keys)."""
    from .auth import ApiKeys

    if api_key_env is None:
        return ApiKeys(())
    value = environ.get(api_key_env, "").split()
    if not value:
        raise BuildError(f"the Serve config says API keys come from ${api_key_env}, and it is unset on this node",
                         f"export {api_key_env}=KEY before `ray start` on every node")
    return ApiKeys.gather(value, environ={})


def replica_app(artifact: str, name: str, threads: int, max_batch: int, max_queue: int, limits: dict[str, Any],
                api_key_env: str | None = None, public_metrics: bool = False):
    """A no-argument builder Ray evaluates on each replica: load the model, build the app."""

    def build():
        from edgeseq.runtimes import load

        from .app import build_app
        from .auth import AuthPolicy
        from .limits import ServeLimits

        auth = AuthPolicy(replica_keys(api_key_env), public_metrics)  # before the model loads
        model = load(artifact, threads=threads, max_batch=max_batch, max_queue=max_queue)
        return build_app(model, name, ServeLimits(**limits), close_model=True, auth=auth)

    return build


def app_builder(args: dict[str, Any]):
    """The Serve application for `args`: artifact (required), name, threads, max_batch,
    max_queue, the server limits (max_tokens, max_rows, max_body_bytes, timeout_s), and
    api_key_env (the variable replicas read their keys from) and public_metrics."""
    from ray import serve

    if "artifact" not in args:
        raise BuildError("the Serve config's args have no 'artifact'", "write the config with `edgeseq deploy ray OUT -o DIR`")
    artifact = str(args["artifact"])
    threads = int(args.get("threads", 1))
    name = str(args.get("name") or Path(artifact).name)
    limits = {k: args[k] for k in ("max_tokens", "max_rows", "max_body_bytes", "timeout_s") if k in args}
    ingress = serve.ingress(replica_app(artifact, name, threads, int(args.get("max_batch", 32)),
                                        int(args.get("max_queue", 256)), limits, args.get("api_key_env"),
                                        bool(args.get("public_metrics", False))))
    deployment = serve.deployment(ingress(), name=DEPLOYMENT, ray_actor_options={"num_cpus": threads})
    return deployment.bind()


def serve_config(artifact: str | Path, replicas: int, threads: int, name: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, api_key_env: str | None = None, public_metrics: bool = False) -> dict[str, Any]:
    artifact = Path(artifact).resolve()
    args = {"artifact": str(artifact), "threads": threads, "name": name or artifact.name}
    if api_key_env is not None:
        args["api_key_env"] = api_key_env
    if public_metrics:
        args["public_metrics"] = True
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": "edgeseq",
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": args,
            "deployments": [{"name": DEPLOYMENT, "num_replicas": replicas, "ray_actor_options": {"num_cpus": threads}}],
        }],
    }


def write_serve_config(artifact: str | Path, out: str | Path, replicas: int = 1, threads: int = 1,
                       name: str | None = None, host: str = "127.0.0.1", port: int = 8000, force: bool = False,
                       api_key_env: str | None = None, no_auth: bool = False, public_metrics: bool = False) -> Path:
    """DIR/serve_config.yaml (JSON is YAML; the comment says how to run it), written atomically.
    A non-loopback `host` needs `api_key_env` (or `no_auth`), as `edgeseq serve` does."""
    from edgeseq.atomic import atomic_folder
    from edgeseq.runtimes import read_artifact

    from .auth import is_loopback

    if api_key_env is None and not no_auth and not is_loopback(host):
        raise BuildError(f"--host {host} opens the Ray proxy beyond this machine, and no API key variable is named",
                         "pass --api-key-env EDGESEQ_API_KEY (and export it before `ray start` on every node), "
                         "or --no-auth to serve without keys")
    if api_key_env is not None and not api_key_env.isidentifier():
        raise BuildError(f"--api-key-env {api_key_env!r} is not a variable name", "pass e.g. --api-key-env EDGESEQ_API_KEY")
    if replicas < 1 or threads < 1:
        raise BuildError(f"--replicas {replicas} and --threads {threads} must be at least 1", "pass e.g. --replicas 2 --threads 1")
    read_artifact(artifact)  # a clear LoadError now rather than on every replica later
    out = Path(out)
    if out.exists() and not force:
        raise BuildError(f"output folder {out} already exists", "choose another -o folder or pass --force")
    config = serve_config(artifact, replicas, threads, name, host, port, api_key_env, public_metrics)
    keys = (f"# Replicas read their API keys from ${api_key_env} (export it before `ray start` on every node).\n"
            if api_key_env else "")
    with atomic_folder(out) as tmp:
        (tmp / "serve_config.yaml").write_text(
            "# Ray Serve config written by `edgeseq deploy ray`. Run it on a Ray cluster where the artifact\n"
            f"# is present at {config['applications'][0]['args']['artifact']} on every node:\n"
            "#   serve run serve_config.yaml      (or: serve deploy serve_config.yaml)\n"
            + keys + json.dumps(config, indent=2) + "\n")
    return out / "serve_config.yaml"
