#!/usr/bin/env python3
"""Ingestion throughput of the relay against `engine run` on the same events, measured in the same run.

Starts `target/release/engine serve` in dry-run mode on a fresh data directory, posts the generated dataset with
CLIENTS concurrent connections (as /v1/batch requests of BATCH events, or one event per /v1/t request when BATCH is
1), and counts acknowledged events per second: each acknowledgement means mapped, stored and fsynced. The baseline
is `engine run --stateless` mapping the same events from a file (no HTTP, no disk), so the ratio is the price of
durability and transport. Usage:

    cargo build --release
    python3 benches/relay_load.py [EVENTS=20000] [CLIENTS=8] [BATCH=100]
    python3 benches/relay_load.py deliver [RATE=20000] [SECONDS=10] [CLIENTS=8] [BATCH=100]
    python3 benches/relay_load.py fleet [EVENTS=20000] [CLIENTS=8] [BATCH=100]

`deliver` measures the whole path at a fixed offered rate: a fake OpenAI on loopback (which checks the bearer token
and counts the events of each `{"events": [...]}` body), the relay delivering to it for real (fsync on, as always),
and clients that send /v1/batch requests on a schedule of RATE events/s. It first measures the load generator alone
against the fake (so that it is known not to be the bottleneck), then reports the acknowledgement latency of every
request from its scheduled time (p50, p99, max: a late request counts its wait), and the delivered rate: events
that reached the fake over the time from the first request to the last delivery.

`fleet` compares stores, unpaced, delivering for real to the fake OpenAI: one relay on redb, one relay on PostgreSQL
and three relays on one PostgreSQL database (a private server the script starts with Debian's binaries, as nobody
when run as root, on a fresh database per run), the clients spread over the relays. It reports acknowledged events/s
(every request answered) and delivered events/s (every event at the fake).
"""

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "target", "release", "engine")
GENERATOR = os.path.join(ROOT, "..", "shared", "bench", "gen_events.py")


def generated(count):
    """COUNT generated events, their times moved to the last hours."""
    lines = subprocess.run(["python3", GENERATOR, str(count), "7"], check=True, capture_output=True, text=True)
    rebased = subprocess.run([ENGINE, "send", "-", "--rebase-time", "--print"],
                             input=lines.stdout, capture_output=True, text=True, check=True)
    return [line for line in rebased.stdout.splitlines() if line.strip()]


class FakeOpenAI(http.server.ThreadingHTTPServer):
    """Answers POST /v1/events like OpenAI's Conversions API, counting the events it accepts."""
    daemon_threads = True

    def __init__(self, port, token):
        self.token = token
        self.events = 0
        self.last = None
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), FakeHandler)


class FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.token and self.headers.get("Authorization") != "Bearer " + self.server.token:
            return self.answer(401, b'{"error":{"message":"bad token"}}')
        if self.server.token:
            try:
                count = len(json.loads(body)["events"])
            except (ValueError, KeyError):
                return self.answer(400, b'{"error":{"message":"bad body"}}')
        else:
            # The sink that measures the load generator alone only counts, so that it costs next to nothing.
            count = body.count(b'"messageId"')
        with self.server.lock:
            self.server.events += count
            self.server.last = time.monotonic()
        self.answer(200, b"{}")

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def paced(port, bodies, clients, rate):
    """Sends BODIES from CLIENTS connections on a schedule of RATE events/s; latencies from each scheduled time."""
    latencies, acked = [], [0] * clients
    lock = threading.Lock()
    per_event = 1.0 / rate if rate else 0.0
    offsets, at = [], 0.0
    for _, _, n in bodies:
        offsets.append(at)
        at += n * per_event
    started = time.monotonic() + 0.2

    def client(index):
        connection = connect(port)
        mine = []
        for i in range(index, len(bodies), clients):
            path, body, n = bodies[i]
            due = started + offsets[i]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append(time.monotonic() - due)
            if response.status == 200:
                acked[index] += n
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started, time.monotonic(), sorted(latencies), sum(acked)


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))] * 1000


def deliver(rate, seconds, clients, batch):
    events = generated(rate * seconds)
    bodies = [("/v1/batch", ('{"batch":[' + ",".join(events[i:i + batch]) + "]}").encode("utf-8"),
               len(events[i:i + batch])) for i in range(0, len(events), batch)]
    # The load generator alone, unpaced, against a sink that only counts: its ceiling.
    sink = FakeOpenAI(18091, None)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    begun, ended, _, acked = paced(18091, bodies, clients, 0)
    sink.shutdown()
    print(f"load generator alone (unpaced, into a counting sink): {acked / (ended - begun):>9.0f} events/s")

    token = "sk-load-test"
    fake = FakeOpenAI(18090, token)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="relay-deliver-")
    config = delivering_config(work, 18089, token)
    wrapper = os.environ.get("RELAY_WRAPPER", "").split()
    relay = subprocess.Popen(wrapper + [ENGINE, "serve", "--config", config], cwd=work, stderr=subprocess.DEVNULL)
    try:
        wait_for(18089)
        begun, ended, latencies, acked = paced(18089, bodies, clients, rate)
        # Events the mapping drops (identify, unmapped) are acknowledged but never delivered: wait for as many as
        # it mapped, which every acknowledgement has counted by now.
        mapped = mapped_events(18089)
        deadline = time.monotonic() + 120
        while fake.events < mapped and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        relay.send_signal(2 if wrapper else 15)
        relay.wait(timeout=60)
        fake.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    delivered_in = (fake.last or ended) - begun
    print(f"offered  {rate:>9} events/s for {seconds} s: {len(events)} events in {len(bodies)} requests of "
          f"{batch} from {clients} clients")
    print(f"acknowledged {acked:>9} events in {ended - begun:.2f} s: {acked / (ended - begun):>9.0f} events/s; "
          f"latency p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")
    print(f"delivered    {fake.events:>9} events to the fake OpenAI in {delivered_in:.2f} s: "
          f"{fake.events / delivered_in:>9.0f} events/s")


def mapped_events(port):
    """The events the relay on `port` has mapped, from its /metrics."""
    connection = connect(port)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("signal_relay_events_total{") and 'outcome="mapped"' in line)


def delivering_config(work, port, token, extra=""):
    """Writes the relay.yaml of a relay on `port` that delivers for real to the fake OpenAI on port 18090, in batches
    of up to 1,000 events; returns its path."""
    config = os.path.join(work, "relay.yaml")
    with open(config, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\ndata_dir: data\npixel_id: load\napi_key: {token}\n"
                "endpoint: http://127.0.0.1:18090\ningestion: {rate_limit: 1000000}\n"
                "batch: {max_events: 1000, linger_ms: 100}\n" + extra)
    return config


def connect(port):
    """A keep-alive connection that sends each request at once: http.client writes the head and the body
    separately, and with Nagle's algorithm the body would wait for the peer's delayed acknowledgement (40 ms)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def wait_for(port):
    for _ in range(100):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
            return
        except OSError:
            time.sleep(0.1)


class PrivatePostgres:
    """A PostgreSQL server of this run's own, in a temporary directory, on port 18200."""

    def __init__(self):
        bins = sorted(d for d in (os.path.join("/usr/lib/postgresql", v, "bin")
                                  for v in os.listdir("/usr/lib/postgresql")) if os.path.isfile(os.path.join(d, "initdb")))
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="relay-fleet-pg-")
        self.user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        os.makedirs(os.path.join(self.dir, "socket"))
        if self.user:
            os.chmod(self.dir, 0o755)
            subprocess.run(["chown", "-R", "nobody", self.dir], check=True)
        self.run("initdb", "-D", self.data(), "-U", "engine", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.run("pg_ctl", "-D", self.data(), "-l", os.path.join(self.dir, "log"), "-w", "-o",
                 f"-p 18200 -k {self.dir}/socket -c listen_addresses=127.0.0.1 -c max_connections=200", "start")

    def data(self):
        return os.path.join(self.dir, "pgdata")

    def run(self, program, *args):
        subprocess.run(self.user + [os.path.join(self.bin, program), *args], check=True, cwd="/",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def database(self, name):
        self.run("psql", "-h", "127.0.0.1", "-p", "18200", "-U", "engine", "-d", "postgres", "-c",
                 f"CREATE DATABASE {name}")
        return f"postgres://engine@127.0.0.1:18200/{name}"

    def stop(self):
        self.run("pg_ctl", "-D", self.data(), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def fleet(count, clients, batch):
    events = generated(count)
    bodies = [("/v1/batch", ('{"batch":[' + ",".join(events[i:i + batch]) + "]}").encode("utf-8"),
               len(events[i:i + batch])) for i in range(0, len(events), batch)]
    token = "sk-load-test"
    pg = PrivatePostgres()
    results = []
    try:
        for name, store, relays in [("one relay, redb", "redb", 1), ("one relay, PostgreSQL", "postgres", 1),
                                    ("three relays, one PostgreSQL", "postgres", 3)]:
            fake = FakeOpenAI(18090, token)
            threading.Thread(target=fake.serve_forever, daemon=True).start()
            url = pg.database(f"fleet_{len(results)}") if store == "postgres" else None
            processes, works = [], []
            try:
                for n in range(relays):
                    work = tempfile.mkdtemp(prefix="relay-fleet-")
                    works.append(work)
                    shared = "store: {kind: postgres, url_env: BENCH_DATABASE_URL}\n" if url else ""
                    config = delivering_config(work, 18100 + n, token, "admin: {enabled: false}\n" + shared)
                    env = dict(os.environ, BENCH_DATABASE_URL=url or "")
                    processes.append(subprocess.Popen([ENGINE, "serve", "--config", config], cwd=work, env=env,
                                                      stderr=subprocess.DEVNULL))
                for n in range(relays):
                    wait_for(18100 + n)
                acked = [0] * clients

                def client(index):
                    connection = connect(18100 + index % relays)
                    for path, body, n in bodies[index::clients]:
                        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                        response = connection.getresponse()
                        response.read()
                        if response.status == 200:
                            acked[index] += n

                begun = time.monotonic()
                threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                answered = time.monotonic() - begun
                # Events the mapping drops (identify, unmapped) are acknowledged but never delivered: wait until
                # deliveries stop for two seconds rather than for as many as were acknowledged.
                deadline, seen, still = time.monotonic() + 120, -1, time.monotonic()
                while time.monotonic() < deadline and time.monotonic() - still < 2:
                    if fake.events != seen:
                        seen, still = fake.events, time.monotonic()
                    time.sleep(0.02)
                delivered = (fake.last or time.monotonic()) - begun
                results.append((name, sum(acked), answered, fake.events, delivered))
            finally:
                for process in processes:
                    process.send_signal(15)
                for process in processes:
                    process.wait(timeout=60)
                fake.shutdown()
                fake.server_close()
                for work in works:
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        pg.stop()
    print(f"events: {len(events)} in requests of {batch} from {clients} clients, delivered to a fake OpenAI")
    for name, acked, answered, delivered_events, delivered in results:
        print(f"{name:<30} acknowledged {acked:>6} ({acked / answered:>6.0f} events/s)   delivered {delivered_events:>6} "
              f"({delivered_events / delivered:>8.0f} events/s)")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "fleet":
        args = [int(a) for a in sys.argv[2:]]
        count, clients, batch = (args + [20000, 8, 100][len(args):])[:3]
        return fleet(count, clients, batch)
    if len(sys.argv) > 1 and sys.argv[1] == "deliver":
        args = [int(a) for a in sys.argv[2:]]
        rate, seconds, clients, batch = (args + [20000, 10, 8, 100][len(args):])[:4]
        return deliver(rate, seconds, clients, batch)
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
    before = os.times()
    subprocess.run([ENGINE, "run", "--stateless"], input=rebased.stdout, capture_output=True, text=True, check=True)
    baseline = len(events) / (time.monotonic() - started)
    after = os.times()
    baseline_cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)

    work = tempfile.mkdtemp(prefix="relay-load-")
    config = os.path.join(work, "relay.yaml")
    with open(config, "w") as f:
        f.write("listen: 127.0.0.1:18089\ndata_dir: data\ndry_run: true\npixel_id: load\n"
                "ingestion: {rate_limit: 1000000}\nbatch: {linger_ms: 200}\n")
    # RELAY_WRAPPER="perf record -g -o /tmp/relay.perf" profiles the relay under this load.
    wrapper = os.environ.get("RELAY_WRAPPER", "").split()
    relay = subprocess.Popen(wrapper + [ENGINE, "serve", "--config", config], stderr=subprocess.DEVNULL)
    try:
        wait_for(18089)
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
            connection = connect(18089)
            for path, body, n in bodies[index::clients]:
                connection.request("POST", path, body=body.encode("utf-8"), headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    acked[index] += n
                else:
                    refused[index] += n

        started = time.monotonic()
        cpu_before = cpu_seconds(relay.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        relay_cpu = cpu_seconds(relay.pid) - cpu_before
    finally:
        relay.send_signal(2 if wrapper else 15)
        relay.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    if sum(acked) + sum(refused) != len(events):
        sys.exit(f"only {sum(acked) + sum(refused)} of {len(events)} events were answered: a client failed")
    rate = sum(acked) / elapsed
    print(f"events: {len(events)}, clients: {clients}, events per request: {batch}")
    print(f"baseline  engine run --stateless (file in, no disk) : {baseline:>9.0f} events/s")
    print(f"relay     acknowledged (mapped, stored, fsynced)    : {rate:>9.0f} events/s  "
          f"({rate / baseline:.2f}x baseline), {sum(refused)} refused")
    # CPU time is steadier than wall time on a shared machine: what each event costs the relay (all its threads,
    # delivery included) against what mapping it costs `engine run`.
    # Under a wrapper that runs the relay as its child (perf record), the process watched is the wrapper's.
    if relay_cpu > 0 and sum(acked):
        print(f"CPU per event: engine run {baseline_cpu / len(events) * 1e6:.1f} us, relay "
              f"{relay_cpu / sum(acked) * 1e6:.1f} us ({baseline_cpu / len(events) / (relay_cpu / sum(acked)):.2f}x)")
    else:
        print("CPU per event: not measured (the relay runs under a wrapper of its own)")


def cpu_seconds(pid):
    """User and system time a process (all its threads) has taken so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
