#!/usr/bin/env python3
"""A Markdown table from a JSON-lines file: one row per line, one column per `HEADER=key` argument.

    bench/jsonl-table.py FILE 'req/s=rps' 'p99 ms=p99_ms' ...

A header ending in `:` is left-aligned text; the others are right-aligned figures. A missing key prints empty.
"""

import json
import sys


def main():
    path, specs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    heads = [h.rstrip(":") for h, _ in specs]
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" if h.endswith(":") else "---:" for h, _ in specs) + "|")
    for line in open(path):
        row = json.loads(line)
        print("| " + " | ".join(str(row.get(k, "")) for _, k in specs) + " |")


if __name__ == "__main__":
    main()
