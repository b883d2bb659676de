#!/usr/bin/env python3
"""prof.py perf.data [top]: self-time per thread and per category, from `perf script` with call chains.
memcpy/memset samples are attributed to their first trackshift caller."""
import subprocess, sys, collections, re
f = sys.argv[1]; top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
out = subprocess.run(["perf", "script", "-i", f, "-F", "comm,tid,ip,sym,dso"], capture_output=True, text=True).stdout
samples = []  # (comm, tid, [frames])
cur = None
for line in out.splitlines():
    if not line.strip():
        cur = None; continue
    if not line.startswith(("\t", " ")) or cur is None and re.match(r"^\S", line):
        m = re.match(r"^\s*(.+?)\s+(\d+)\s*$", line)
        if m:
            cur = (m.group(1), int(m.group(2)), []); samples.append(cur); continue
    if cur is not None:
        m = re.match(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)); cur[2].append((sym, m.group(2)))
def cat(frames):
    if not frames: return "unknown"
    s, d = frames[0]
    head = [x for x, _ in frames[:6] if not x.startswith(("core::", "<core::", "alloc::"))][:2] or [s]
    for h in head:
        if "sha256" in h or "sha2::" in h: return "SHA-256"
        if "aes_gcm" in h or "gcm_ghash" in h or "aes_hw" in h or "aead::" in h: return "AES-GCM"
        if "reed_solomon" in h: return "Reed-Solomon"
    if s.startswith(("core::", "<core::", "alloc::")) and head: s = head[0]
    if "memmove" in s or "memcpy" in s:
        for cs, cd in frames[1:]:
            if "trackshift" in cs: return "memcpy <- " + short(cs)
        return "memcpy <- ?"
    if "memset" in s:
        for cs, cd in frames[1:]:
            if "trackshift" in cs: return "memset <- " + short(cs)
        return "memset <- ?"
    if "kallsyms" in d:
        if s in ("_copy_to_iter", "_copy_from_iter", "copy_user_enhanced_fast_string", "rep_movs_alternative", "copy_page_to_iter"): return "kernel copy (" + s + ")"
        return "kernel other"
    return "user: " + short(s)
def short(s):
    s = re.sub(r"\{\{closure\}\}", "", s)
    parts = [p for p in s.split("::") if p]
    return "::".join(parts[-2:])
by_thread = collections.Counter(); by_cat = collections.Counter(); by_leaf = collections.Counter()
tc = collections.defaultdict(collections.Counter)
for comm, tid, fr in samples:
    key = f"{comm}/{tid}"; by_thread[key] += 1; c = cat(fr); by_cat[c] += 1; tc[key][c] += 1
    if fr: by_leaf[fr[0][0]] += 1
n = len(samples)
print(f"samples: {n}")
print("\nby thread:"); [print(f"  {100*v/n:5.1f}%  {k}") for k, v in by_thread.most_common(8)]
print("\nby category (self time, whole process):"); [print(f"  {100*v/n:5.1f}%  {k[:100]}") for k, v in by_cat.most_common(top)]
print("\ntop leaf symbols:"); [print(f"  {100*v/n:5.1f}%  {k[:110]}") for k, v in by_leaf.most_common(top)]
for k, v in by_thread.most_common(4):
    print(f"\nthread {k} ({100*v/n:.1f}%):"); [print(f"  {100*x/n:5.1f}%  {c}") for c, x in tc[k].most_common(8)]
