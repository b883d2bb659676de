#!/usr/bin/env python3
"""The edge grid's benchmarks through the user-space link emulator (issue 14, "Benchmarks").

    bench/grid.py goodput  [--profiles wan,lossy] [--runs 3] [--size-mib 256] [--out DIR]
    bench/grid.py failover [--profile wan] [--runs 5] [--size-mib 256] [--kill-at-mib 64] [--out DIR]
    bench/grid.py stripe   [--runs 3] [--size-mib 256] [--cap 100Mbit] [--link "--rate 1Gbit --delay 10ms"]

Topology (one `trackshift-netlab up` per profile, kept for all its runs so direct and relayed runs alternate
on the same link): the sender in namespace A (198.18.0.1); the orchestrator, the relays and the receiver in
namespace B (198.18.1.1), so the emulated link sits between the sender and the relay side and the relay reaches
the receiver over B's own loopback, unimpaired.

- goodput: per run, alternating: `direct` (receive --listen B, send --to B), `relay` (one `trackshift relay`,
  send/receive through the orchestrator) and `transit` (magic-wormhole's transit relay in B, `twistd3
  transitrelay`, driven by bench/transit_client.py: the file over TCP through it, sendfile in A, written and
  fsynced in B). Goodput is file bytes over the sender's wall time (TrackShift: process start to exit, the
  orchestrator's session set-up included; transit: the sender's connect to the receiver's fsync), every copy
  compared with the source. The relays' CPU (utime+stime from /proc/<pid>/stat before and after) per GB.
- failover: two relays; the one carrying the session's first stripe (asked from the orchestrator) is
  SIGKILLed once `--kill-at-mib` verified; the stall is from the kill to the sender's first `progress` event
  whose bytes_done passed the figure at the kill (stamped by this script as each line arrives; the sender
  prints progress at most once a second, so the figure is up to ~1 s late), beside the `relay_failover` event.
- stripe: two relays each with `--max-rate CAP`, behind one uncapped emulated link: `send --relays 2` against
  `--relays 1`, alternating (netlab emulates one link between two namespaces, so two separately capped paths
  from one sender are the relays' own caps here).

Every measurement records the load average beside it. Timing runs take `flock /tmp/bench.lock` (this
script re-executes itself under it). Needs root, /dev/net/tun and the release binaries (`TS_BIN`,
`NETLAB_BIN` override them); writes results.md and results.jsonl into --out.
"""

import argparse
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TS = os.environ.get("TS_BIN", os.path.join(ROOT, "target/release/trackshift"))
NETLAB = os.environ.get("NETLAB_BIN", os.path.join(ROOT, "target/release/trackshift-netlab"))
TRANSIT_CLIENT = os.path.join(ROOT, "bench/transit_client.py")
SECRET = "grid bench secret"
WAIT = 600.0
ORCH_PORT = 18080
TRANSIT_PORT = 4001


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid):
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)


class Proc:
    """A child whose stdout lines are read as they come, each stamped with time.monotonic()."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.events = []
        self.lines = queue.Queue()
        self.stderr = open(os.path.join(log_dir, f"{name}.stderr"), "w")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                  start_new_session=True)
        self.pid = self.p.pid
        self.log = open(os.path.join(log_dir, f"{name}.jsonl"), "w")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            t = time.monotonic()
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"text": line.rstrip()}
            if not isinstance(ev, dict):
                ev = {"value": ev}
            ev["_t"] = t
            self.log.write(json.dumps(ev) + "\n")
            self.log.flush()
            self.lines.put(ev)
        self.lines.put(None)

    def wait_event(self, pred, timeout=WAIT, what="event"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f} s")
            try:
                ev = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if ev is None:
                self.lines.put(None)
                raise RuntimeError(f"{self.name}: exited (code {self.p.wait()}) before {what}")
            self.events.append(ev)
            if pred(ev):
                return ev

    def wait(self, timeout=WAIT):
        try:
            code = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.p.wait()
        t = time.monotonic()
        self.reader.join(timeout=10)
        while True:
            try:
                ev = self.lines.get_nowait()
            except queue.Empty:
                break
            if ev is not None:
                self.events.append(ev)
        return code, t

    def summary(self):
        for ev in reversed(self.events):
            if ev.get("event") == "summary":
                return ev
        return {}

    def signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        self.signal(signal.SIGKILL)

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.p.wait()
        return self.wait(timeout=5)


class Lab:
    """`trackshift-netlab up` in the background; stop() tears it down (also on failure)."""

    def __init__(self, name, link_args, log_dir):
        self.name = name
        subprocess.run([NETLAB, "down", "--name", name], capture_output=True)
        self.proc = Proc("netlab", [NETLAB, "up", "--name", name, "--max-duration", "3600s", *link_args],
                         log_dir)
        ready = self.proc.wait_event(lambda e: e.get("event") == "ready", 30, "ready line")
        self.ns_a, self.ns_b = ready["ns_a"], ready["ns_b"]
        self.addr_b = ready["addr_b"]
        self.counters = None

    def in_a(self, *argv):
        return ["ip", "netns", "exec", self.ns_a, *argv]

    def in_b(self, *argv):
        return ["ip", "netns", "exec", self.ns_b, *argv]

    def stop(self):
        self.proc.stop()
        subprocess.run([NETLAB, "down", "--name", self.name], capture_output=True)


class Grid:
    """An orchestrator in namespace B (SQLite in a temp state dir), tokens from `orchestrator token`."""

    def __init__(self, lab, work, log_dir):
        self.lab, self.work, self.log_dir = lab, work, log_dir
        self.state = os.path.join(work, "orch")
        os.makedirs(self.state, exist_ok=True)
        self.url = f"http://{lab.addr_b}:{ORCH_PORT}"
        self.proc = Proc("orchestrator", lab.in_b(
            TS, "orchestrator", "--listen", f"{lab.addr_b}:{ORCH_PORT}", "--state-dir", self.state,
            "--heartbeat-interval", "1s", "--rate-limit", "100000", "--json"), log_dir)
        self.proc.wait_event(lambda e: e.get("event") == "listening", 60, "listening")
        self.relays = {}

    def token(self, role, subject):
        out = subprocess.run([TS, "orchestrator", "token", "--role", role, "--subject", subject,
                              "--state-dir", self.state], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def api(self, path):
        """GET path as an admin, from inside namespace B."""
        out = subprocess.run(self.lab.in_b("curl", "-sf", "-H", f"Authorization: Bearer {self.admin()}",
                                           self.url + path), capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def admin(self):
        if not hasattr(self, "_admin"):
            self._admin = self.token("admin", "bench")
        return self._admin

    def relay(self, relay_id, port, extra=()):
        proc = Proc(relay_id, self.lab.in_b(
            TS, "relay", "--listen", f"{self.lab.addr_b}:{port}", "--orchestrator", self.url,
            "--token", self.token("relay", relay_id), "--relay-id", relay_id, "--json", *extra), self.log_dir)
        proc.wait_event(lambda e: e.get("event") == "relay_ready", 60, "relay_ready")
        self.relays[relay_id] = proc
        return proc

    def wait_healthy(self, ids, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            healthy = {r["relay_id"] for r in self.api("/api/v1/relays") if r.get("healthy")}
            if set(ids) <= healthy:
                return
            time.sleep(0.3)
        raise RuntimeError(f"relays {ids} not healthy within {timeout} s")

    def stop(self):
        for proc in self.relays.values():
            proc.stop()
        self.proc.stop()


class Bench:
    def __init__(self, args):
        self.args = args
        stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
        self.out = args.out or os.path.join(ROOT, "bench/results", f"{stamp}-vm-{args.cmd}")
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="trackshift-grid-", dir="/var/tmp")
        self.rows = []
        self.runs = 0
        self.file = os.path.join(self.work, "file.bin")
        subprocess.run(["head", "-c", f"{args.size_mib}M", "/dev/urandom"], stdout=open(self.file, "wb"),
                       check=True)
        self.sha = sha256(self.file)
        self.size = os.path.getsize(self.file)

    def run_dir(self, label):
        self.runs += 1
        d = os.path.join(self.work, f"run{self.runs}-{label}")
        for sub in ("out", "rs", "ss"):
            os.makedirs(os.path.join(d, sub))
        logs = os.path.join(self.logs, f"run{self.runs}-{label}")
        os.makedirs(logs)
        return d, logs

    def record(self, row):
        row["load"] = row.get("load") or load()
        self.rows.append(row)
        with open(os.path.join(self.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def check(self, out_dir):
        path = os.path.join(out_dir, os.path.basename(self.file))
        return os.path.exists(path) and sha256(path) == self.sha

    def sender(self, lab, d, logs, to, extra=()):
        return Proc("sender", lab.in_a(TS, "send", self.file, "--to", to, "--secret", SECRET,
                                       "--state-dir", os.path.join(d, "ss"), "--json", *extra), logs)

    def grid_receiver(self, grid, d, logs):
        """`receive --orchestrator --name rxN --once` in namespace B, registered; returns (name, proc)."""
        name = f"rx{self.runs}"
        rx = Proc("receiver", grid.lab.in_b(TS, "receive", "--orchestrator", grid.url, "--token",
                                            grid.token("receiver", name), "--name", name, "--output-dir",
                                            os.path.join(d, "out"), "--state-dir", os.path.join(d, "rs"),
                                            "--secret", SECRET, "--once", "--json"), logs)
        rx.wait_event(lambda e: e.get("event") == "listening", 60, "listening")
        return name, rx

    # ---- one transfer each ----

    def direct(self, lab, profile, run):
        d, logs = self.run_dir("direct")
        load0 = load()
        rx = Proc("receiver", lab.in_b(TS, "receive", "--listen", f"{lab.addr_b}:17100", "--output-dir",
                                       os.path.join(d, "out"), "--state-dir", os.path.join(d, "rs"),
                                       "--secret", SECRET, "--once", "--json"), logs)
        rx.wait_event(lambda e: e.get("event") == "listening", 60, "listening")
        tx = self.sender(lab, d, logs, f"{lab.addr_b}:17100")
        code, t1 = tx.wait()
        rx.wait(60)
        self.finish_row(profile, run, "direct", tx, code, t1, d, load0, {})

    def relayed(self, grid, profile, run, mode="relay", extra=(), relay_ids=None):
        lab = grid.lab
        d, logs = self.run_dir(mode)
        name, rx = self.grid_receiver(grid, d, logs)
        ids = relay_ids or list(grid.relays)
        cpu0 = {i: cpu_seconds(grid.relays[i].pid) for i in ids}
        load0 = load()
        tx = self.sender(lab, d, logs, name, ["--orchestrator", grid.url, "--token",
                                              grid.token("sender", "bench"), *extra])
        code, t1 = tx.wait()
        rx.wait(60)
        cpu = sum(cpu_seconds(grid.relays[i].pid) - cpu0[i] for i in ids)
        self.finish_row(profile, run, mode, tx, code, t1, d, load0,
                        {"relay_cpu_s": round(cpu, 3),
                         "relay_cpu_s_per_gb": round(cpu / (self.size / 1e9), 3),
                         "relays": tx.summary().get("relays")})

    def finish_row(self, profile, run, mode, tx, code, t1, d, load0, extra):
        wall = t1 - tx.t0
        ok = code == 0 and self.check(os.path.join(d, "out"))
        s = tx.summary()
        # Set-up (the orchestrator's session, the relay's admission, the receiver's accept) against the data.
        accepted = next((e["_t"] for e in tx.events if e.get("event") == "accepted"), None)
        if accepted:
            extra = {"setup_s": round(accepted - tx.t0, 3),
                     "data_mbs": round(self.size / (t1 - accepted) / 1e6, 2), **extra}
        self.record({"profile": profile, "run": run, "mode": mode, "ok": ok, "exit": code,
                     "seconds": round(wall, 3), "goodput_mbs": round(self.size / wall / 1e6, 2),
                     "summary_goodput_mbps": round(s.get("goodput_mbps") or 0, 1), "loss_pct": s.get("loss_pct"),
                     "rtt_ms": s.get("rtt_ms"), "load": f"{load0} -> {load()}", **extra})
        shutil.rmtree(d, ignore_errors=True)

    def transit(self, lab, transit_pid, profile, run):
        d, logs = self.run_dir("transit")
        load0 = load()
        token = os.urandom(32).hex()
        out = os.path.join(d, "out", os.path.basename(self.file))
        cpu0 = cpu_seconds(transit_pid)
        rx = Proc("receiver", lab.in_b(sys.executable, TRANSIT_CLIENT, "recv", lab.addr_b, str(TRANSIT_PORT),
                                       token, "00000000000000b0", out, str(self.size)), logs)
        time.sleep(0.3)
        tx = Proc("sender", lab.in_a(sys.executable, TRANSIT_CLIENT, "send", lab.addr_b, str(TRANSIT_PORT),
                                     token, "00000000000000a0", self.file), logs)
        code, _ = tx.wait(self.args.transit_timeout)
        rcode, _ = rx.wait(60)
        cpu = cpu_seconds(transit_pid) - cpu0
        done = rx.events[-1] if rx.events else {}
        timed_out = code != 0 and not done
        t1 = done.get("t1", time.monotonic())
        wall = t1 - tx.t0
        ok = code == 0 and rcode == 0 and self.check(os.path.join(d, "out"))
        got = done.get("bytes", 0)
        self.record({"profile": profile, "run": run, "mode": "transit", "ok": ok, "exit": code,
                     "timed_out": timed_out, "seconds": round(wall, 3),
                     "goodput_mbs": round((self.size if ok else got) / wall / 1e6, 2),
                     "relay_cpu_s": round(cpu, 3), "relay_cpu_s_per_gb": round(cpu / (self.size / 1e9), 3),
                     "load": f"{load0} -> {load()}"})
        shutil.rmtree(d, ignore_errors=True)

    # ---- the benchmarks ----

    def goodput(self):
        for n, profile in enumerate(self.args.profiles.split(",")):
            lab = Lab(f"tsg{os.getpid() % 1000}g{n}", ["--profile", profile], self.logs)
            grid = transit = None
            try:
                cc = subprocess.run(lab.in_a("sysctl", "-n", "net.ipv4.tcp_congestion_control"),
                                    capture_output=True, text=True).stdout.strip()
                self.notes.append(f"{profile}: TCP congestion control in the namespaces: {cc}")
                grid = Grid(lab, self.work, self.logs)
                relay = grid.relay(f"r-{profile}", 17200)
                grid.wait_healthy([f"r-{profile}"])
                transit = Proc("transit-relay", lab.in_b(
                    "twistd3", "-n", "--pidfile=", "transitrelay",
                    f"--port=tcp:{TRANSIT_PORT}:interface={lab.addr_b}"), self.logs)
                time.sleep(2)
                for run in range(1, self.args.runs + 1):
                    order = ["direct", "relay", "transit"]
                    # Each run starts one further on, so no mode always follows the same one.
                    order = order[run % 3:] + order[:run % 3]
                    for mode in order:
                        if mode == "direct":
                            self.direct(lab, profile, run)
                        elif mode == "relay":
                            self.relayed(grid, profile, run)
                        elif not self.args.no_transit:
                            self.transit(lab, transit.pid, profile, run)
                code, _ = relay.stop()
                stopped = [e for e in relay.events if e.get("event") == "relay_stopped"]
                if stopped:
                    fwd = stopped[-1]["bytes_forwarded"]
                    cpu = sum(r["relay_cpu_s"] for r in self.rows if r["profile"] == profile and r["mode"] == "relay")
                    self.notes.append(f"{profile}: relay r-{profile} forwarded {fwd} bytes in "
                                      f"{stopped[-1]['datagrams_forwarded']} datagrams over all its runs (both "
                                      f"directions, headers and parity included): {cpu:.2f} CPU s in its runs, "
                                      f"**{cpu / (fwd / 1e9):.2f} CPU s per GB forwarded**; drops "
                                      f"{json.dumps(stopped[-1].get('drops'))}")
            finally:
                if transit:
                    transit.stop()
                if grid:
                    grid.stop()
                lab.stop()

    def failover(self):
        lab = Lab(f"tsg{os.getpid() % 1000}f", ["--profile", self.args.profile], self.logs)
        grid = None
        try:
            grid = Grid(lab, self.work, self.logs)
            for run in range(1, self.args.runs + 1):
                ids = [f"f{run}-a", f"f{run}-b"]
                for k, i in enumerate(ids):
                    grid.relay(i, 17300 + 2 * run + k)
                grid.wait_healthy(ids)
                self.failover_run(grid, run, ids)
                for i in ids:
                    grid.relays.pop(i).stop()
        finally:
            if grid:
                grid.stop()
            lab.stop()

    def failover_run(self, grid, run, ids):
        lab = grid.lab
        d, logs = self.run_dir("failover")
        name, rx = self.grid_receiver(grid, d, logs)
        load0 = load()
        tx = self.sender(lab, d, logs, name, ["--orchestrator", grid.url, "--token",
                                              grid.token("sender", "bench"), "--chunk-size",
                                              self.args.chunk_size, *self.args.send_args.split()])
        start = tx.wait_event(lambda e: e.get("event") == "start", 60, "start")
        at = self.args.kill_at_mib << 20
        before = tx.wait_event(lambda e: e.get("event") == "progress" and e.get("bytes_done", 0) >= at,
                               WAIT, "progress")["bytes_done"]
        record = grid.api(f"/api/v1/session/{start['session_id']}")
        victim = record["path"]["stripes"][0]["relay_id"]
        t_kill = time.monotonic()
        grid.relays[victim].kill()
        moved = tx.wait_event(lambda e: e.get("event") == "relay_failover", WAIT, "relay_failover")
        # bytes_done may have moved on between the progress line above and the kill: the first line past the
        # figure at the kill that comes after the failover is through the standby.
        again = tx.wait_event(lambda e: e.get("event") == "progress" and e.get("bytes_done", 0) > before,
                              WAIT, "progress through the standby")
        code, t1 = tx.wait()
        rx.wait(60)
        ok = code == 0 and self.check(os.path.join(d, "out"))
        self.record({"profile": self.args.profile, "run": run, "mode": "failover", "ok": ok, "exit": code,
                     "killed": victim, "bytes_done_at_kill": before,
                     "failover_event_s": round(moved["_t"] - t_kill, 3),
                     "failover_reason": moved.get("reason"),
                     "stall_s": round(again["_t"] - t_kill, 3),
                     "bytes_done_after": again.get("bytes_done"),
                     "relays": tx.summary().get("relays"), "seconds": round(t1 - tx.t0, 3),
                     "load": f"{load0} -> {load()}"})
        shutil.rmtree(d, ignore_errors=True)

    def stripe(self):
        lab = Lab(f"tsg{os.getpid() % 1000}s", self.args.link.split(), self.logs)
        grid = None
        try:
            grid = Grid(lab, self.work, self.logs)
            ids = ["s-a", "s-b"]
            for k, i in enumerate(ids):
                grid.relay(i, 17400 + k, ["--max-rate", self.args.cap])
            grid.wait_healthy(ids)
            streams = ["--streams", str(self.args.streams)]
            for run in range(1, self.args.runs + 1):
                order = [1, 2] if run % 2 else [2, 1]
                for n in order:
                    self.relayed(grid, "stripe", run, mode=f"relays-{n}",
                                 extra=["--relays", str(n), *streams])
        finally:
            if grid:
                grid.stop()
            lab.stop()

    def close(self):
        shutil.rmtree(self.work, ignore_errors=True)


def ratio_lines(rows, base, modes, key="goodput_mbs"):
    """Per run, each mode's `key` (goodput) over `base`'s in the same run; then the median per mode."""
    lines = []
    by = {}
    for r in rows:
        by.setdefault((r["profile"], r["run"]), {})[r["mode"]] = r
    for mode in modes:
        for profile in sorted({r["profile"] for r in rows}):
            ratios = [runs[mode][key] / runs[base][key]
                      for (p, _), runs in sorted(by.items())
                      if p == profile and mode in runs and base in runs and runs[base]["ok"]
                      and runs[base].get(key) and runs[mode].get(key)]
            if ratios:
                ratios.sort()
                med = ratios[len(ratios) // 2]
                lines.append(f"- {profile}: {mode} / {base} ({key}) per run: "
                             f"{', '.join(f'{x:.3f}' for x in ratios)}; median **{med:.3f}**")
    return lines


def write_report(bench, argv):
    rows = bench.rows
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ORDER, ORDER.index(k) if k in ORDER else 0, k))
    with open(os.path.join(bench.out, "results.md"), "w") as f:
        f.write(f"# grid {bench.args.cmd}\n\n")
        f.write(f"Command: `{' '.join(argv)}`\n\n")
        f.write(f"Machine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} cores; "
                f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; file {bench.size} bytes "
                f"({bench.args.size_mib} MiB, random). Commit "
                f"{subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}.\n")
        f.write("The machine is shared: other helpers' `nice` cargo builds were running during these runs "
                "(the `load` column is /proc/loadavg before -> after each run). Compare the ratios of the "
                "interleaved runs, not absolute figures.\n\n")
        f.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            f.write("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n")
        f.write("\n")
        if bench.args.cmd == "goodput":
            f.write("\n".join(ratio_lines(rows, "direct", ["relay", "transit"])) + "\n\n")
            f.write("The same over the data phase alone (`data_mbs`: from the sender's `accepted` event to its exit, "
                    "so without the set-up in `setup_s`):\n\n")
            f.write("\n".join(ratio_lines(rows, "direct", ["relay"], key="data_mbs")) + "\n\n")
        if bench.args.cmd == "stripe":
            f.write("\n".join(ratio_lines(rows, "relays-1", ["relays-2"])) + "\n\n")
        if bench.args.cmd == "failover":
            stalls = sorted(r["stall_s"] for r in rows)
            if stalls:
                f.write(f"Stall from SIGKILL to the first progress past it, s: {', '.join(map(str, stalls))}; "
                        f"median **{stalls[len(stalls) // 2]}**\n\n")
        for note in bench.notes:
            f.write(f"- {note}\n")
    print(open(os.path.join(bench.out, "results.md")).read())


ORDER = ["profile", "run", "mode", "ok", "exit", "seconds", "goodput_mbs", "summary_goodput_mbps",
         "setup_s", "data_mbs", "relay_cpu_s", "relay_cpu_s_per_gb", "stall_s", "failover_event_s", "load"]


def main():
    if os.environ.get("GRID_BENCH_LOCKED") != "1":
        os.environ["GRID_BENCH_LOCKED"] = "1"
        os.execvp("flock", ["flock", "/tmp/bench.lock", sys.executable, *sys.argv])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("goodput", "failover", "stripe"):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=int, default=3)
        p.add_argument("--size-mib", type=int, default=256)
        p.add_argument("--out")
        if name == "goodput":
            p.add_argument("--profiles", default="wan,lossy")
            p.add_argument("--no-transit", action="store_true")
            p.add_argument("--transit-timeout", type=float, default=300)
        if name == "failover":
            p.add_argument("--profile", default="wan")
            p.add_argument("--kill-at-mib", type=int, default=64)
            p.add_argument("--chunk-size", default="8MiB")
            p.add_argument("--send-args", default="", help="more `send` flags, e.g. '--max-rate 100Mbit'")
        if name == "stripe":
            p.add_argument("--cap", default="100Mbit")
            p.add_argument("--streams", type=int, default=4)
            p.add_argument("--link", default="--rate 1Gbit --delay 10ms")
    args = ap.parse_args()
    for b in (TS, NETLAB):
        if not os.access(b, os.X_OK):
            sys.exit(f"error: {b} missing: cargo build --release -p trackshift-cli -p trackshift-netlab")
    if args.cmd == "goodput" and not args.no_transit and not shutil.which("twistd3"):
        subprocess.run(["apt-get", "install", "-y", "magic-wormhole-transit-relay"], check=True)
    bench = Bench(args)
    bench.notes = []
    try:
        getattr(bench, args.cmd)()
    except Exception as e:  # the rows so far still go into the report
        bench.notes.append(f"stopped early: {e}")
        raise
    finally:
        write_report(bench, ["bench/grid.py", *sys.argv[1:]])
        bench.close()


if __name__ == "__main__":
    main()
