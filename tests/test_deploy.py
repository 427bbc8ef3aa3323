"""The deployment, proved without a Docker engine: lint, schema, the image's own install and
start steps outside Docker, and the compose topology (two replicas behind the repo's nginx)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import png
from .factories import write_tiny
from .system import require

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if last.status_code == 200:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} never became ready: {last!r}")


def test_dockerfiles_pass_hadolint() -> None:
    for dockerfile in ("Dockerfile", "deploy/Dockerfile.train"):
        result = subprocess.run(
            [BIN / "hadolint", dockerfile], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec_and_our_rules() -> None:
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "healthcheck" in services["api"] and "healthcheck" in services["nginx"]
    assert services["prometheus"]["profiles"] == ["monitoring"] and services["train"][
        "profiles"
    ] == ["train"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port


def test_dockerfile_rules() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim-bookworm") == 2  # multi-stage
    assert (
        re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text and "/health/ready" in text
    )
    assert "download.pytorch.org/whl/cpu" in text and re.search(
        r"^COPY .*weights /app/weights$", text, re.M
    )
    assert "[dev]" not in text and "[train]" not in text


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile needs a plain exec-form CMD"
    return list(json.loads(match.group(1)))


def as_user(cmd: list[str]) -> list[str]:
    """Run as an unprivileged user when we are root (CI), as the image does."""
    if os.geteuid() != 0:
        return cmd
    import pwd

    subprocess.run(
        ["useradd", "--system", "--no-create-home", "latentserve-ci"], capture_output=True
    )
    user = pwd.getpwnam("latentserve-ci")
    # setpriv execs the command itself, so SIGTERM reaches the server, as in a container
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv,
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--",
        *cmd,
    ]


@pytest.fixture(scope="module")
def public_root() -> Iterator[Path]:
    """A temporary folder the unprivileged user can reach (pytest's own are root-only)."""
    root = Path(tempfile.mkdtemp(prefix="latentserve-image-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_venv(public_root: Path) -> Path:
    """The image's build stage, outside Docker: copy what the Dockerfile copies, run install.sh."""
    require("python3-venv")
    root = public_root
    src = root / "src"
    for item in re.findall(r"^COPY (?!--)(.+) /src/", (ROOT / "Dockerfile").read_text(), re.M):
        for name in item.split():
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, target)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    venv = root / "venv"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    # the image's python is a system one any user can run: here, Debian's /usr/bin/python3
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    env["HOME"] = str(root)
    result = subprocess.run(["sh", str(src / "deploy/install.sh"), str(venv), str(src)],
                            env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return venv


def test_image_steps_start_the_service_as_non_root_on_read_only_weights(
    image_venv: Path, public_root: Path
) -> None:
    tmp_path = public_root / "run"
    tmp_path.mkdir()
    installed = subprocess.run(
        [image_venv / "bin/pip", "list", "--format=json"], capture_output=True, text=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "torch" in names and not names & {"pytest", "ruff", "mypy", "matplotlib", "scikit-image"}
    cli = subprocess.run([image_venv / "bin/latentserve", "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "generate" in cli.stdout  # the client ships in the image
    weights = tmp_path / "weights"
    if any((ROOT / "weights").glob("*/model.safetensors")):
        shutil.copytree(ROOT / "weights", weights, ignore=shutil.ignore_patterns("*.sh"))
    else:  # before the shipped weights exist
        for name, family in (("ae-fashion", "ae"), ("vae-fashion", "vae"), ("gan-fashion", "gan")):
            write_tiny(weights / name, family)
    subprocess.run(["chmod", "-R", "a+rX,a-w", str(weights)], check=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(workdir, 0o777)
    port = free_port()
    env = {
        "PATH": f"{image_venv}/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(workdir),
        "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_PORT": str(port), "LATENTSERVE_WEIGHTS_DIR": str(weights),
    }  # fmt: skip
    cmd = dockerfile_cmd()
    proc = subprocess.Popen(
        as_user(cmd),
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            ready = wait_ready(f"{base}/health/ready")
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[0][-3000:]) from None
        names = ready.json()["models"]
        assert names
        models = {m["name"]: m for m in httpx.get(f"{base}/v1/models").json()["models"]}
        for name, info in models.items():
            for op in info["operations"]:
                r = call_operation(base, name, op, info)
                assert r.status_code == 200, (name, op, r.text)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so its exit status says why it stopped
    assert proc.returncode in (0, -signal.SIGTERM), out[-3000:]
    assert "Application shutdown complete." in out and "Finished server process" in out
    assert "Traceback" not in out


def call_operation(
    base: str, name: str, op: str, info: dict, post: Any = httpx.post
) -> httpx.Response:
    """One request for each API operation, built from the model's description (``post``:
    httpx.post against a server, or a TestClient's post with ``base`` "")."""
    url = f"{base}/v1/models/{name}/{op}"
    wait = {"timeout": 30} if post is httpx.post else {}  # TestClient takes no timeout
    image = png(
        info["image_shape"][1],
        "L" if info["image_shape"][0] == 1 else "RGB",
        200 if info["image_shape"][0] == 1 else (200, 100, 50),
    )
    if op in ("encode", "reconstruct", "denoise", "classify", "likelihood", "anomaly"):
        return post(url, files={"image": ("x.png", image, "image/png")}, **wait)
    if op == "decode":
        return post(url, json={"latent": [0.0] * info["latent_dim"]}, **wait)
    if op == "generate":
        return post(url, json={"n": 4, "seed": 1}, **wait)
    if op == "arithmetic":
        terms = {f"latent_{t}": [0.1 * i] * info["latent_dim"] for i, t in enumerate("abc")}
        return post(url, json=terms, **wait)
    assert op == "interpolate", op
    if info["latent_prior"] is not None:  # seeds have codes
        return post(url, json={"seed_a": 1, "seed_b": 2, "steps": 4}, **wait)
    return post(url, files={"image": ("a.png", image), "image_b": ("b.png", image)}, **wait)


# --- the compose topology: two replicas behind the repository's nginx config ---

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[str]], list[int]]]:
    require("nginx-light")
    weights = tmp_path / "weights"
    write_tiny(weights / "ae-t", "ae")
    ports = [free_port(), free_port()]
    replicas = []
    for port in ports:
        env = {
            **os.environ,
            "LATENTSERVE_PORT": str(port),
            "LATENTSERVE_WEIGHTS_DIR": str(weights),
            "PYTHONPATH": str(ROOT),
        }
        replicas.append(subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))  # fmt: skip
    lb_port = free_port()
    conf = (ROOT / "deploy/nginx.conf").read_text()
    upstream = "\n        ".join(
        f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports
    )
    conf = conf.replace("server api:8000 max_fails=1 fail_timeout=5s;", upstream)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{lb_port};").replace(
        "/tmp/nginx", str(tmp_path / "nginx")
    )
    assert upstream in conf and str(lb_port) in conf
    (tmp_path / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}/health/ready", timeout=60)
        wait_ready(f"http://127.0.0.1:{lb_port}/nginx-health", timeout=10)
        yield f"http://127.0.0.1:{lb_port}", replicas, ports
    finally:
        nginx.terminate()
        for p in replicas:
            p.kill()
        nginx.wait(10)
        for p in replicas:
            p.wait(10)


def served_count(port: int) -> float:
    """Reconstruct requests a replica has answered, from its own metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("latentserve_requests_total") and "/reconstruct" in line)  # fmt: skip


def test_nginx_spreads_requests_and_loses_none_when_a_replica_dies(topology) -> None:
    base, replicas, ports = topology
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            r = client.post(
                f"{base}/v1/models/ae-t/reconstruct",
                content=png(),
                headers={"content-type": "image/png"},
            )
            assert r.status_code == 200
    counts = [served_count(port) for port in ports]
    assert all(c > 0 for c in counts) and sum(counts) == 20, counts

    statuses: list[int] = []
    truncated: list[str] = []  # responses nginx had started to forward when the replica died
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() and len(statuses) < 400:
                try:
                    r = client.post(
                        f"{base}/v1/models/ae-t/reconstruct",
                        content=png(),
                        headers={"content-type": "image/png"},
                    )
                except httpx.RemoteProtocolError as exc:
                    truncated.append(str(exc))
                    continue
                statuses.append(r.status_code)

    def wait_for_replies(n: int) -> None:  # a count of replies, however long they take
        deadline = time.monotonic() + 120
        while len(statuses) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    wait_for_replies(20)  # load on both replicas
    replicas[0].kill()  # the abrupt kind of death: no graceful shutdown at all
    wait_for_replies(len(statuses) + 40)  # and then on the one left
    stop.set()
    for w in workers:
        w.join(30)
    assert len(statuses) >= 60, "the load stalled after the replica died"
    # every request nginx could retry (not yet answered by the dead replica) succeeded elsewhere
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # at most the responses that were in transit at the instant of the kill were cut short:
    # nginx cannot retry a response whose headers it has already forwarded
    assert len(truncated) <= 4, truncated
    assert all("peer closed connection" in t for t in truncated), truncated
