"""Scale-out on Ray Serve, for real: `edgeseq deploy ray` writes a Serve config, `serve run`
deploys it on a local Ray cluster of two raylets on 127.0.0.1 (one CPU each), and two
replicas (one per raylet) answer HTTP requests with what `load().generate` gives.
Slow: starting Ray takes tens of seconds."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from edgeseq.runtimes import load

from edgeseq.serving.load import LoadRequest, send
from edgeseq.serving.process import free_port, is_ready

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
KEY = "sk-ray-replica-key-0123456789"


def test_deploy_ray_writes_a_serve_config(tmp_path):
    from click.testing import CliRunner

    from edgeseq.cli import cli

    r = CliRunner().invoke(cli, ["deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "d"), "--replicas", "3", "--threads", "2"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "d" / "serve_config.yaml").read_text()
    config = json.loads("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")))
    app = config["applications"][0]
    assert app["import_path"] == "edgeseq.serving.ray_deployment:app_builder"
    assert app["args"] == {"artifact": str(FIXTURE), "threads": 2, "name": "nash-t5-tiny"}
    assert app["deployments"] == [{"name": "edgeseq", "num_replicas": 3, "ray_actor_options": {"num_cpus": 2}}]
    assert config["http_options"]["host"] == "127.0.0.1"
    r = CliRunner().invoke(cli, ["deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "d")])
    assert r.exit_code == 1 and "already exists" in r.output
    r = CliRunner().invoke(cli, ["deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "e"), "--replicas", "0"])
    assert r.exit_code == 1 and "--replicas 0 and --threads 1 must be at least 1" in r.output
    r = CliRunner().invoke(cli, ["deploy", "ray", str(tmp_path / "nothing"), "-o", str(tmp_path / "e")])
    assert r.exit_code == 1 and "not an artifact folder" in r.output and not (tmp_path / "e").exists()
    # a cluster-wide proxy needs keys, named by variable: the key itself never reaches the file
    r = CliRunner().invoke(cli, ["deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "f"), "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "no API key variable is named" in r.output and not (tmp_path / "f").exists()
    r = CliRunner().invoke(cli, ["deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "f"), "--host", "0.0.0.0",
                                 "--api-key-env", "EDGESEQ_API_KEY"], env={"EDGESEQ_API_KEY": KEY})
    assert r.exit_code == 0, r.output
    text = (tmp_path / "f" / "serve_config.yaml").read_text()
    assert KEY not in text and "$EDGESEQ_API_KEY" in text
    assert json.loads("".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
                      )["applications"][0]["args"]["api_key_env"] == "EDGESEQ_API_KEY"


def test_a_replica_reads_its_keys_from_the_named_variable():
    from edgeseq.errors import BuildError
    from edgeseq.serving.ray_deployment import replica_keys

    keys = replica_keys("EDGESEQ_API_KEY", {"EDGESEQ_API_KEY": f"{KEY} {KEY}-second"})
    assert len(keys) == 2 and keys.admits(KEY) and keys.admits(f"{KEY}-second") and not keys.admits("x" * 20)
    assert not replica_keys(None, {"EDGESEQ_API_KEY": KEY})
    with pytest.raises(BuildError, match="unset on this node"):
        replica_keys("EDGESEQ_API_KEY", {})


def ray_cli(*args: str, env=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], env=env, capture_output=True,
                          text=True, timeout=timeout)


SERVE_STATUS = """
import ray
from ray import serve
ray.init(log_to_driver=False)
app = serve.status().applications["edgeseq"]
print(app.status, app.deployments["edgeseq"].replica_states, ray.cluster_resources().get("CPU"),
      ray.available_resources().get("CPU", 0.0))
"""


@pytest.mark.slow
def test_two_replicas_on_two_raylets_match_generate(tmp_path):
    """Two raylets with one CPU each and two replicas of num_cpus=1: one replica per raylet."""
    port, gcs = free_port(), free_port()
    deploy = subprocess.run([sys.executable, "-m", "edgeseq.cli", "deploy", "ray", str(FIXTURE), "-o", str(tmp_path / "d"),
                             "--replicas", "2", "--threads", "1", "--port", str(port), "--name", "tiny",
                             "--api-key-env", "EDGESEQ_API_KEY"],
                            capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stderr
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"EDGESEQ_API_KEY": KEY}  # the raylets pass it on
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        head = ray_cli("ray", "start", "--head", f"--port={gcs}", "--include-dashboard=false", *common, env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = ray_cli("ray", "start", f"--address=127.0.0.1:{gcs}", *common, env=env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
        run = ray_cli("serve", "run", "--non-blocking", str(tmp_path / "d" / "serve_config.yaml"), env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while not is_ready(url):
            assert time.monotonic() < deadline, "the Serve application did not become ready"
            time.sleep(0.5)
        requests = [LoadRequest([5 + i, 17, 3], 12) for i in range(16)]
        requests += [LoadRequest([40 + i, 2], 9, stream=True) for i in range(4)]
        results = [None] * len(requests)

        def client(i):
            results[i] = send(url, requests[i], api_key=KEY)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with load(FIXTURE) as model:
            expected = [model.generate([r.prompt], r.max_tokens, stop_tokens=[]).tokens[0] for r in requests]
        assert results == expected
        with pytest.raises(RuntimeError, match="HTTP 401"):
            send(url, requests[0])
        status = subprocess.run([sys.executable, "-c", SERVE_STATUS], env=env, capture_output=True, text=True, timeout=120)
        # both replicas run, and they hold both CPUs of the cluster: one per raylet
        assert status.stdout.strip().splitlines()[-1] == "ApplicationStatus.RUNNING {'RUNNING': 2} 2.0 0.0", status
    finally:
        ray_cli("serve", "shutdown", "-y", env=env, timeout=120)
        ray_cli("ray", "stop", "--force", env=env, timeout=120)
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
