#!/usr/bin/env python3
"""instructions.py DATA [RELAY_EVENTS] — instructions per event, counted by valgrind's callgrind, for `engine run`
(stateless and with identity memory), the hand-written baseline, the JSON scan floor and, given RELAY_EVENTS, the
relay under `relay_load.py` (dry run, 8 clients, batches of 100).

Wall-clock and even CPU-time ratios on these shared machines move by 10 % and more from run to run; instruction
counts do not, so they show what a change did before `ratio.py` can. They are not the targets (those are
`ratio.py`'s), and fewer instructions is not always less time: memory stalls and branch misses do not count here.
Use a slice of the dataset: callgrind runs programs about fifty times slower. From the project root, after
`cargo build --release` and building the baseline (benches/README.md):

    head -20000 /tmp/events.ndjson > /tmp/ev20k.ndjson
    python3 benches/instructions.py /tmp/ev20k.ndjson 5000
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "target", "release", "engine")
BASELINE = os.path.join(ROOT, "target", "baseline_rust", "release")
NOW = "2026-11-20T12:00:00Z"


def counted(command, stdin_path, out_path):
    """Runs `command` under callgrind on `stdin_path`; returns the instructions it executed."""
    with open(stdin_path, "rb") as stdin:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_path}", *command],
                       stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return total(out_path)


def total(out_path):
    with open(out_path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    sys.exit(f"{out_path}: no instruction total in callgrind's output")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data = sys.argv[1]
    events = sum(1 for line in open(data, "rb") if line.strip())
    commands = [
        ("baseline", [os.path.join(BASELINE, "peer-rust-serde")]),
        ("engine run --stateless", [ENGINE, "run", "--stateless", "--now", NOW]),
        ("engine run", [ENGINE, "run", "--now", NOW]),
        ("identity skip (the scan floor)", [os.path.join(BASELINE, "identity"), "skip"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        counts = {}
        for name, command in commands:
            counts[name] = counted(command, data, os.path.join(tmp, "callgrind.out"))
        print(f"{events} events of {data}")
        base = counts["baseline"] / events
        for name, count in counts.items():
            print(f"{name:<32} {count / 1e6:>9,.0f} M instructions  {count / events / 1000:>7.1f} k per event  "
                  f"{base / (count / events):.2f}x the baseline's rate")
        if len(sys.argv) > 2:
            relay_events = int(sys.argv[2])
            out_path = os.path.join(tmp, "relay.out")
            # The relay's threads are counted together; callgrind writes its file when the relay exits.
            env = dict(os.environ, RELAY_WRAPPER=f"valgrind --tool=callgrind --callgrind-out-file={out_path}")
            subprocess.run(["python3", os.path.join(ROOT, "benches", "relay_load.py"), str(relay_events), "8", "100"],
                           env=env, stdout=subprocess.DEVNULL, check=True)
            count = total(out_path)
            print(f"{'relay (relay_load.py, dry run)':<32} {count / 1e6:>9,.0f} M instructions  "
                  f"{count / relay_events / 1000:>7.1f} k per event")


if __name__ == "__main__":
    main()
