"""One benchmark under several XLA flag sets, side by side: which compiler settings make a
quantized op faster, and whether they change its bits.

    python -m experiments.xla_flags_study --out /tmp/flags \
        --bench "experiments.benchmark_quantize --only mxfp4" \
        --flags default= \
        --flags "triton_norm=--xla_gpu_experimental_enable_triton_softmax_priority_fusion=true"

Each flag set runs the benchmark module in its own process (XLA reads ``XLA_FLAGS`` once, at
start), with the set appended to the environment's ``XLA_FLAGS``, writing ``<out>/<name>.json``;
``<out>/summary.json`` and the printed table give each case's time per flag set, its ratio to
the first set's, and (for benchmarks that record output digests, like ``benchmark_quantize``)
whether the output is bit-identical to the first set's. A set that fails (an unknown flag
aborts XLA at start) is reported with the end of its error output; the others still run.
Benchmarks understood: ``experiments.benchmark_quantize`` and ``experiments.benchmark_gemm``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

from experiments.common import write_json

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_flag_set(text: str) -> tuple[str, str]:
    """``name=--flag=v --flag2=w`` -> (name, flags); the name names the output file."""
    name, sep, flags = text.partition("=")
    if not sep or not NAME.match(name):
        raise argparse.ArgumentTypeError(f"--flags wants NAME=FLAGS with NAME of letters, digits, '_', '.', '-' "
                                         f"(e.g. default= or fast=--xla_gpu_foo=true); got {text!r}")
    return name, flags.strip()


def cases(payload: dict) -> dict[str, dict]:
    """{case label: {"seconds": s, "digest": d or None}} from a benchmark's JSON output."""
    results = payload.get("results")
    if isinstance(results, dict):  # benchmark_quantize: variant name -> numbers
        return {k: {"seconds": v["seconds"], "digest": v.get("digest")} for k, v in results.items()}
    if isinstance(results, list):  # benchmark_gemm: rows of (shape, recipe)
        return {f"{r['shape']} {r['recipe']}": {"seconds": r["seconds"], "digest": None} for r in results}
    raise ValueError("not a benchmark_quantize or benchmark_gemm result (no 'results')")


def run_set(bench: list[str], name: str, flags: str, out: str) -> dict:
    """Runs the benchmark under one flag set; {"flags", "returncode", "cases" or "error"}."""
    path = os.path.join(out, f"{name}.json")
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flags) if x)
    cmd = [sys.executable, "-m", *bench, "--out", path]
    print(f"[{name}] XLA_FLAGS={env['XLA_FLAGS']!r}: {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    record = {"flags": flags, "returncode": done.returncode}
    if done.returncode != 0 or not os.path.exists(path):
        record["error"] = (done.stderr or done.stdout)[-2000:]
        return record
    with open(path) as f:
        record["cases"] = cases(json.load(f))
    return record


def table(sets: dict[str, dict]) -> list[dict]:
    """One row per case: seconds per flag set, ratio to the first set, bits same as the first set."""
    names = list(sets)
    ok = [n for n in names if "cases" in sets[n]]
    labels = list(dict.fromkeys(k for n in ok for k in sets[n]["cases"]))
    base = names[0]
    rows = []
    for label in labels:
        row = {"case": label}
        ref = sets[base].get("cases", {}).get(label)
        for n in ok:
            c = sets[n]["cases"].get(label)
            if c is None:
                continue
            row[f"{n} s"] = c["seconds"]
            if ref is not None and n != base:
                row[f"{n} vs {base}"] = ref["seconds"] / c["seconds"]
                if ref["digest"] and c["digest"]:
                    row[f"{n} same bits"] = ref["digest"] == c["digest"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, help="the benchmark module and its arguments, e.g. "
                        "\"experiments.benchmark_gemm --recipes fp8\" (no --out: each set gets its own)")
    parser.add_argument("--flags", type=parse_flag_set, action="append", required=True,
                        help="NAME=FLAGS, repeated; the first set is the reference (e.g. default=)")
    parser.add_argument("--out", required=True, help="directory for <name>.json per set and summary.json")
    args = parser.parse_args(argv)
    bench = shlex.split(args.bench)
    if "--out" in bench:
        parser.error("--bench must not hold --out: each flag set writes <out>/<name>.json")
    names = [n for n, _ in args.flags]
    if len(set(names)) != len(names):
        parser.error(f"flag set names must differ; got {names}")
    os.makedirs(args.out, exist_ok=True)
    sets = {name: run_set(bench, name, flags, args.out) for name, flags in args.flags}
    rows = table(sets)
    write_json(os.path.join(args.out, "summary.json"), {"bench": args.bench, "sets": sets, "rows": rows})
    for name, s in sets.items():
        if "error" in s:
            print(f"[{name}] failed (exit {s['returncode']}): {s['error'].strip().splitlines()[-1] if s['error'].strip() else ''}")
    ok = [n for n in names if "cases" in sets[n]]
    print(f"{'case':60s}" + "".join(f"{n[:14]:>16s}" for n in ok))
    for r in rows:
        cells = []
        for n in ok:
            if f"{n} s" not in r:
                cells.append(f"{'-':>16s}")
                continue
            extra = "" if n == names[0] or f"{n} vs {names[0]}" not in r else f" {r[f'{n} vs {names[0]}']:.2f}x"
            extra += "" if f"{n} same bits" not in r else ("=" if r[f"{n} same bits"] else "≠")
            cells.append(f"{r[f'{n} s'] * 1e3:9.3f}ms{extra:>6s}"[-16:].rjust(16))
        print(f"{r['case'][:60]:60s}" + "".join(cells))
    print(f"(ratio: {names[0]}'s time / this set's, >1 is faster; '=' / '≠': output bits same as / differ from "
          f"{names[0]}'s) wrote {os.path.join(args.out, 'summary.json')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
