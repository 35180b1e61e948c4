#!/usr/bin/env python3
"""min_cpu.py DATA ROUNDS NAME=CMD [...] — the least CPU time (user + sys) each command took over ROUNDS runs, the
commands alternating, each pinned to one CPU, reading DATA on stdin; ratios to the first command, at the least times,
at the tenth percentile and the quarter of each command's times, and round by round (the median of each round's
ratio). With many rounds, ratios that agree at the three points are a difference; ones that change side are noise.

`../shared/bench/ratio.py` reports the median of five rounds, which is the figure the targets are stated in. On these
shared machines a neighbour's load only ever adds time, so the least time over more rounds is the steadier way to
compare two builds of the engine, where the difference sought (a few per cent) is smaller than a median moves from
one sitting to the next. Example, comparing a build kept from before a change with the current one:

    python3 benches/min_cpu.py /tmp/events.ndjson 9 \\
        "before=/tmp/engine-before run --stateless --now 2026-11-20T12:00:00Z" \\
        "after=target/release/engine run --stateless --now 2026-11-20T12:00:00Z"
"""
import os
import shlex
import subprocess
import sys


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    data, rounds = sys.argv[1], int(sys.argv[2])
    commands = [arg.split("=", 1) for arg in sys.argv[3:]]
    cpu = {1 if (os.cpu_count() or 1) > 1 else 0}
    times = {name: [] for name, _ in commands}
    for _ in range(rounds):
        for name, command in commands:
            with open(data, "rb") as stdin, open(os.devnull, "wb") as stdout:
                process = subprocess.Popen(shlex.split(command), stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL,
                                           preexec_fn=lambda: os.sched_setaffinity(0, cpu))
                _, status, usage = os.wait4(process.pid, 0)
            if status != 0:
                sys.exit(f"{name}: exited with status {status >> 8}: {command}")
            times[name].append(usage.ru_utime + usage.ru_stime)
    events = sum(1 for line in open(data, "rb") if line.strip())
    first = points(times[commands[0][0]])
    for name, _ in commands:
        least, tenth, quarter, median = points(times[name])
        # Each round's runs follow one another, so a ratio within a round shares that round's neighbours.
        ratios = sorted(f / t for f, t in zip(times[commands[0][0]], times[name]))
        print(f"{name:>16}: {events / least:>11,.0f} events/s at the least CPU time ({least:.3f} s; tenth percentile "
              f"{tenth:.3f} s, quarter {quarter:.3f} s, median {median:.3f} s)  "
              f"{first[0] / least:.3f}x the first at the least, {first[1] / tenth:.3f}x at the tenth "
              f"percentile, {first[2] / quarter:.3f}x at the quarter; "
              f"rounds' ratios {ratios[0]:.3f} - {ratios[-1]:.3f}x, median {ratios[len(ratios) // 2]:.3f}x")


def points(times):
    """The least, tenth-percentile, quarter and median of `times`."""
    ordered, n = sorted(times), len(times)
    return ordered[0], ordered[n // 10], ordered[n // 4], ordered[n // 2]


if __name__ == "__main__":
    main()
