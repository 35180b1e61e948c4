#!/usr/bin/env python3
"""Ingestion throughput of the relay against `engine run` on the same events, measured in the same run.

Starts `target/release/engine serve` in dry-run mode on a fresh data directory, posts the generated dataset with
CLIENTS concurrent connections (as /v1/batch requests of BATCH events, or one event per /v1/t request when BATCH is
1), and counts acknowledged events per second: each acknowledgement means mapped, stored and fsynced. The baseline
is `engine run --stateless` mapping the same events from a file (no HTTP, no disk), so the ratio is the price of
durability and transport. Usage:

    cargo build --release
    python3 benches/relay_load.py [EVENTS=20000] [CLIENTS=8] [BATCH=100]
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "target", "release", "engine")
GENERATOR = os.path.join(ROOT, "..", "shared", "bench", "gen_events.py")


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    lines = subprocess.run(["python3", GENERATOR, str(count), "7"], check=True, capture_output=True, text=True)
    # The generated events are from fixed days in November 2026; the relay checks OpenAI's 7-day window against its
    # own clock, so their times are moved to the last hours (`engine send --rebase-time` does the same).
    rebased = subprocess.run([ENGINE, "send", "-", "--rebase-time", "--print"],
                             input=lines.stdout, capture_output=True, text=True, check=True)
    events = [line for line in rebased.stdout.splitlines() if line.strip()]

    started = time.monotonic()
    subprocess.run([ENGINE, "run", "--stateless"], input=rebased.stdout, capture_output=True, text=True, check=True)
    baseline = len(events) / (time.monotonic() - started)

    work = tempfile.mkdtemp(prefix="relay-load-")
    config = os.path.join(work, "relay.yaml")
    with open(config, "w") as f:
        f.write("listen: 127.0.0.1:18089\ndata_dir: data\ndry_run: true\npixel_id: load\n"
                "ingestion: {rate_limit: 1000000}\nbatch: {linger_ms: 200}\n")
    relay = subprocess.Popen([ENGINE, "serve", "--config", config], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", 18089, timeout=1).request("GET", "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        endpoints = {"track": "/v1/t", "page": "/v1/p", "identify": "/v1/i", "group": "/v1/g"}
        bodies = []
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            path = endpoints.get(json.loads(chunk[0]).get("type")) if batch == 1 else None
            if path:
                bodies.append((path, chunk[0], 1))
            else:
                bodies.append(("/v1/batch", '{"batch":[' + ",".join(chunk) + "]}", len(chunk)))
        acked = [0] * clients
        refused = [0] * clients

        def client(index):
            connection = http.client.HTTPConnection("127.0.0.1", 18089, timeout=30)
            for path, body, n in bodies[index::clients]:
                connection.request("POST", path, body=body.encode("utf-8"), headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    acked[index] += n
                else:
                    refused[index] += n

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    if sum(acked) + sum(refused) != len(events):
        sys.exit(f"only {sum(acked) + sum(refused)} of {len(events)} events were answered: a client failed")
    rate = sum(acked) / elapsed
    print(f"events: {len(events)}, clients: {clients}, events per request: {batch}")
    print(f"baseline  engine run --stateless (file in, no disk) : {baseline:>9.0f} events/s")
    print(f"relay     acknowledged (mapped, stored, fsynced)    : {rate:>9.0f} events/s  "
          f"({rate / baseline:.2f}x baseline), {sum(refused)} refused")


if __name__ == "__main__":
    main()
