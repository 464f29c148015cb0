"""Memory and latency of ``generalad serve`` over N sequential predictions (issue 18; docs/INSPECT.md).

    python benchmarks/serve_rss.py RUN [RUN ...] --images DIR [--n 200] [--warmup 10] [--out OUT.json]

For each RUN (a model directory or an export directory) it starts ``generalad serve --run RUN`` as its own
process on a free loopback port, waits for ``GET /api/model``, then POSTs images of DIR (cycled, sorted) to
``/api/predict`` one after another: ``warmup`` requests, then ``n`` measured ones. The server's resident
memory (VmRSS from /proc/PID/status) is read after the warm-up, every 25 requests and after the last one; latency is the
client's wall time per request (upload + decode + model + overlay PNG + JSON). Requests go to 127.0.0.1 only,
their count is bounded, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_speed import cpu_model  # noqa: E402

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/model", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise RuntimeError("server did not start in time")


def post(url: str, body: bytes, ctype: str) -> dict:
    req = urllib.request.Request(url + "/api/predict", data=body, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def measure(run: str, images: list[Path], n: int, warmup: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "generalad.cli", "serve", "--run", run, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t_start = time.perf_counter()
        card = wait_ready(url, proc)
        startup_s = time.perf_counter() - t_start
        bodies = [multipart(p) for p in images]
        for i in range(warmup):
            post(url, *bodies[i % len(bodies)])
        rss_before = rss_mb(proc.pid)
        latencies, server_ms, trace = [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            rec = post(url, *bodies[(warmup + i) % len(bodies)])
            latencies.append((time.perf_counter() - t0) * 1000.0)
            server_ms.append(rec["latency_ms"])
            if (i + 1) % 25 == 0:  # does it level off or keep growing?
                trace.append(round(rss_mb(proc.pid), 1))
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array(latencies)
    return {
        "run": run, "kind": card["kind"], "method": card["method"], "backbone": card["backbone"],
        "image_size": card["image_size"], "n": n, "warmup": warmup, "startup_s": round(startup_s, 1),
        "rss_mb_after_warmup": round(rss_before, 1), "rss_mb_after_n": round(rss_after, 1),
        "rss_rise_pct": round(100.0 * (rss_after - rss_before) / rss_before, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
        "latency_ms_mean": round(float(lat.mean()), 1),
        "server_ms_p50": round(float(np.percentile(server_ms, 50)), 1),
        "rss_mb_every_25": trace,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--images", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise SystemExit(f"no images in {args.images}")
    sizes = sorted({tuple(int(x) for x in _hw(p)) for p in images[:50]})
    runs = [measure(r, images, args.n, args.warmup) for r in args.runs]
    result = {"cpu": cpu_model(), "images": str(Path(args.images).resolve()), "n_distinct_images": len(images),
              "image_sizes": [list(s) for s in sizes[:5]], "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


def _hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


if __name__ == "__main__":
    main()
