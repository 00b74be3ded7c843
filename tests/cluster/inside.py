"""Run a cluster scenario inside fresh user, network and mount namespaces (``unshare -rnm``).

Started by ``test_pod_harness.py`` as
``unshare --user --map-root-user --net --mount --fork python inside.py JOB.json``.
In there nothing of this machine's network is reachable, the ports are free, and:

- ``/etc/hosts`` maps the chart's in-cluster Service names (``qcloop-minio.qcloop.svc``,
  ...) to loopback, where the services of the scenario listen on the chart's ports: an
  S3 endpoint (moto's server) in place of MinIO, and MLflow started with the command and
  environment of the chart's own Deployment;
- the steps' working folder is a read-only bind mount (EROFS even for root);
- each action runs with exactly the environment the job gives it (a pod's, built by
  ``emulator.py``): a command, or the compiled pipeline through ``kfp.local`` whose
  step subprocesses each get their own pod's environment instead of this process's.

It writes what happened (exit codes, outputs, the tail of each log) to the job's result
file. Everything it starts stops with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def isolate(job: dict[str, Any]) -> None:
    """Loopback up, the Service names on it, the steps' folder read-only."""
    sh("ip", "link", "set", "lo", "up")
    hosts = Path(job["scratch"]) / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in job["hosts"]))
    sh("mount", "--bind", str(hosts), "/etc/hosts")
    readonly = job["readonly"]
    sh("mount", "--bind", readonly, readonly)
    sh("mount", "-o", "remount,bind,ro", readonly)


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.5)


def start_services(job: dict[str, Any]) -> tuple[Any, subprocess.Popen[bytes]]:
    """The S3 endpoint on MinIO's port with its buckets, and the chart's MLflow server."""
    # path-style, as MinIO serves it: moto would read `qcloop-minio` of the Host header
    # `qcloop-minio.qcloop.svc:9000` as a bucket name (read when moto is imported)
    os.environ["S3_IGNORE_SUBDOMAIN_BUCKETNAME"] = "true"
    import boto3
    from moto.server import ThreadedMotoServer

    s3 = job["s3"]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3["port"], verbose=False)
    moto.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{s3['port']}",
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        region_name="us-east-1",
    )
    for bucket in s3["buckets"]:
        client.create_bucket(Bucket=bucket)
    mlflow = job["mlflow"]
    log = open(Path(job["scratch"]) / "mlflow.log", "wb")  # noqa: SIM115 - lives with the server
    server = subprocess.Popen(
        mlflow["command"], env=mlflow["env"], stdout=log, stderr=log, start_new_session=True
    )
    wait_http(f"http://127.0.0.1:{mlflow['port']}/health", timeout=120)
    return moto, server


def run_command(action: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        action["argv"],
        env=action["env"],
        cwd=action["cwd"],
        capture_output=True,
        text=True,
        timeout=action.get("timeout", 600),
    )
    return {"rc": done.returncode, "stdout": done.stdout, "log": done.stderr[-6000:]}


def run_pipeline(action: dict[str, Any]) -> dict[str, Any]:
    """The compiled IR through kfp.local; step ``f`` runs with ``action["envs"][f]`` only."""
    from kfp import components, local
    from kfp.local import subprocess_task_handler

    envs: dict[str, dict[str, str]] = action["envs"]
    seen: list[str] = []

    def in_its_pod(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        function = full_command[full_command.index("--function_to_execute") + 1]
        seen.append(function)
        with subprocess.Popen(
            full_command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=envs[function],  # the pod's environment, and nothing of this process
            cwd=action["cwd"],
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                print(line, end="")
            return process.wait()

    subprocess_task_handler.run_local_subprocess = in_its_pod
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=action["pipeline_root"],
    )
    pipeline = components.load_component_from_file(action["ir"])
    os.chdir(action["cwd"])  # read-only: nothing the orchestrator or a step writes lands here
    task = pipeline(**action["arguments"])
    outputs = {k: v for k, v in task.outputs.items()} if task.outputs else {}
    return {"outputs": outputs, "steps": seen}


def main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    isolate(job)
    moto, mlflow = start_services(job)
    results: dict[str, Any] = {}
    try:
        for action in job["actions"]:
            started = time.monotonic()
            try:
                found = (run_pipeline if action["kind"] == "pipeline" else run_command)(action)
            except Exception as exc:
                found = {"error": f"{type(exc).__name__}: {exc}"}
            found["seconds"] = round(time.monotonic() - started, 1)
            results[action["name"]] = found
            Path(job["result"]).write_text(json.dumps(results, indent=2, default=str))
    finally:
        os.killpg(mlflow.pid, signal.SIGTERM)
        mlflow.wait(timeout=30)
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
