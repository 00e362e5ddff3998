"""Serving under load: `minigpt serve` with continuous batching, driven by the official `openai`
client, concurrent streams against the same requests sent one by one.

The server runs as its own process (`minigpt serve`), the clients in this one (`AsyncOpenAI`,
streaming, `stream_options.include_usage`). Both runs send the same requests: the first
`--clients` Alpaca EN instructions after index 50,000 (held out from the SFT data the
benchmarks train on; generated questions when ../shared/data is absent), greedy, at most
`--max-tokens` tokens each.

* one by one: each request is sent when the previous one has finished;
* concurrent: all `--clients` requests are sent at once; the server decodes them together.

Reported: completion tokens per second of wall time for each run and their ratio (the goal is
≥ 5× at 64 clients), errors, and per request the time to first token (TTFT: request sent ->
first content chunk) and the inter-token latency (ITL: gaps between content chunks; a chunk
holds one token unless a multi-byte character spans two), p50 and p99 over all requests.

With `--screenshot PNG` (needs Selenium and Chromium) it also opens the chat page at `/` in
headless Chromium, sends two messages (a sum, which the quickstart model works out in its
thinking, then a question), waits for each reply and saves a screenshot.

    python benchmarks/bench_serve.py --model runs/quickstart/chat --clients 64 --max-tokens 128 \\
        --screenshot benchmarks/results/chat_page.png
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def prompts(n: int) -> list[str]:
    path = DATA / "alpaca" / "alpaca_en.jsonl.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for i, line in enumerate(f) if i >= 50_000][:n]
        return [(r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")) for r in rows]
    return [f"Write one sentence about the number {i}." for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, clients: int, dtype: str, threads: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", "import sys; from minigpt.cli import main; sys.exit(main())", "serve", "--model", model,
           "--port", str(port), "--max_batch_size", str(clients), "--max_queue", str(4 * clients), "--dtype", dtype,
           "--log_level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    import httpx2

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx2.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up within 120 s")


async def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 — every failure is counted as an error
        return {"error": f"{type(e).__name__}: {e}"}
    return {"sent": sent, "arrivals": arrivals, "tokens": tokens, "done": time.perf_counter()}


async def run(url: str, model: str, texts: list[str], max_tokens: int, concurrent: bool) -> tuple[list[dict], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    start = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*(one_request(client, model, t, max_tokens) for t in texts))
    else:
        results = [await one_request(client, model, t, max_tokens) for t in texts]
    wall = time.perf_counter() - start
    await client.close()
    return list(results), wall


def summarize(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if "error" not in r]
    ttft = [1000 * (r["arrivals"][0] - r["sent"]) for r in ok if r["arrivals"]]
    itl = [1000 * g for r in ok for g in np.diff(r["arrivals"])]
    tokens = sum(r["tokens"] for r in ok)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {
        "requests": len(results), "errors": len(results) - len(ok), "tokens": tokens, "wall_s": wall,
        "tokens_per_s": tokens / wall, "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
        "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
        "first_error": next((r["error"] for r in results if "error" in r), None),
    }


def screenshot(url: str, png: Path, messages: list[str]) -> None:
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url + "/")
        deadline = time.time() + 60
        while "connecting" in driver.find_element(By.ID, "model-name").text and time.time() < deadline:
            time.sleep(0.1)
        for n, message in enumerate(messages, start=1):
            box = driver.find_element(By.ID, "input")
            box.send_keys(message)
            box.send_keys(Keys.ENTER)
            while time.time() < deadline:
                done = driver.execute_script("return [...document.querySelectorAll('.stats')].filter(s => s.textContent).length")
                if done >= n:
                    break
                time.sleep(0.1)
        time.sleep(0.5)  # the final Markdown rendering
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory to serve")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, args.clients, args.dtype, args.threads)
    try:
        import httpx2

        name = httpx2.get(url + "/v1/models").json()["data"][0]["id"]
        texts = prompts(args.clients)
        asyncio.run(run(url, name, texts[:2], args.max_tokens, concurrent=False))  # warm-up
        seq = summarize(*asyncio.run(run(url, name, texts, args.max_tokens, concurrent=False)))
        con = summarize(*asyncio.run(run(url, name, texts, args.max_tokens, concurrent=True)))
        if args.screenshot is not None:
            screenshot(url, args.screenshot, ["What is 47 + 38?", "What does `json.dumps` do?"])
    finally:
        server.terminate()
        server.wait(30)

    import torch

    print(f"model {args.model}; {args.clients} requests, greedy, max {args.max_tokens} tokens each; "
          f"dtype {args.dtype}; torch threads {torch.get_num_threads()} (this process)")
    head = f"| run | requests | errors | tokens | wall s | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |"
    print(head)
    print("|" + "---|" * 8)
    for label, r in (("one by one", seq), (f"{args.clients} concurrent", con)):
        print(f"| {label} | {r['requests']} | {r['errors']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} |")
    ratio = con["tokens_per_s"] / seq["tokens_per_s"]
    print(f"throughput ratio, concurrent / one by one: {ratio:.2f}x (goal >= 5x)")
    for r in (seq, con):
        if r["first_error"]:
            print("first error:", r["first_error"])
    if args.screenshot is not None:
        print(f"screenshot: {args.screenshot}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"one_by_one": seq, "concurrent": con, "ratio": ratio, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
