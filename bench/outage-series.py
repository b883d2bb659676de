#!/usr/bin/env python3
"""The rate around each outage of a `bench/link-series.sh` run over a link with `--outage DOWN/EVERY`.

Reads OUT_DIR/rx.tsv (side b's received bytes every 50 ms), OUT_DIR/lab_t0 and OUT_DIR/send.jsonl. For each
outage that fell inside the transfer (its start found to 50 ms in rx.tsv) it prints what side b received per 100 ms from 1 s before the outage to
1.5 s after the link's return, the sender's `dcsp` events (pacing rate and phase) of that stretch, the mean
rate of the second before, and how long after the link's return the received rate was back at 0.8 of it
(over 100 ms). Times are seconds since the send started. Usage: bench/outage-series.py OUT_DIR DOWN EVERY
"""
import json
import sys

out, down, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lab_t0 = float(open(f"{out}/lab_t0").read())
events = [json.loads(line) for line in open(f"{out}/send.jsonl")]
send_t0 = events[0]["t0_monotonic"]
end = events[-1]["t"]
rx = [tuple(map(float, line.split())) for line in open(f"{out}/rx.tsv")]
rx = [(t - send_t0, b) for t, b in rx]


def received(a, b):
    """Bytes side b received between send-relative times a and b (from the samples nearest them)."""
    before = [x for t, x in rx if t <= a]
    upto = [x for t, x in rx if t <= b]
    return (upto[-1] if upto else 0) - (before[-1] if before else 0)


def mbit(a, b):
    return received(a, b) * 8 / (b - a) / 1e6


k = 1
while True:
    start = lab_t0 + k * every - send_t0
    k += 1
    if start + down > end:
        break
    if start < 1.5:
        continue
    # The emulator's clock starts a little after its process: the outage began at the last sample (within
    # half a second of the schedule) after which side b received nothing for a second.
    for i, (t, b) in enumerate(rx):
        later = [x for u, x in rx[i:] if u <= t + 1.0]
        if abs(t - start) <= 0.5 and later and later[-1] == b:
            start = t
            break
    back = start + down
    before = mbit(start - 1.0, start)
    print(f"outage {k - 1}: down {start:.2f}-{back:.2f} s after the send started; the second before: {before:.1f} Mbit/s received")
    t = start - 1.0
    regained = None
    while t < back + 1.5:
        r = mbit(t, t + 0.1)
        if regained is None and t >= back and r >= 0.8 * before:
            regained = t + 0.1 - back
        print(f"  {t:7.2f} s  {r:7.1f} Mbit/s received")
        t += 0.1
    for e in events:
        if e.get("event") == "dcsp" and start - 1.5 <= e["t"] <= back + 1.5:
            print(f"  dcsp event at {e['t']:.2f} s: {e['phase']}, rate {e['rate_mbps']} Mbit/s, "
                  f"sending {e['sending_mbps']} Mbit/s (last second)")
    if regained is None:
        print("  not back at 0.8 of the rate before within 1.5 s of the return")
    else:
        print(f"  back at 0.8 of it {regained:.2f} s after the link's return (100 ms bins)")
