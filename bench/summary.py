#!/usr/bin/env python3
"""Turns one benchmark run into the JSON bench/plot reads and prints the summary table (python3 stdlib only).

  summary.py ipc --raw GBENCH.json --cdf CDF.jsonl --load-start "L1 L5 L15" --load-end ... --out ipc.json
  summary.py shm --log RESULTS --load-start ... --load-end ... --out shm.json

Both write the same shape, Google Benchmark's JSON plus two additions:
  {"context": {... "load_avg_start": [..], "load_avg_end": [..], "spinners_per_node": N, "sched": S},
   "benchmarks": [{"name", "repetition_index", "run_type": "iteration", "real_time", "time_unit",
                   "p50_us", "p99_us", "p999_us", "cdf_us": [101 percentiles], ...}],
   "pairs": [{"label", "ratios": [one per round], "median", "min", "max", "target", "higher_is_better", "met"}]}
A pair is a dipc figure and its baseline from the same round (rounds interleave dipc and baseline runs); its ratio
is dipc / baseline of the round's p50 (or of the throughput for bandwidths), and the median over rounds is the
figure docs/PERFORMANCE.md quotes, with min and max as its spread.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict


def median(v):
    return statistics.median(v) if v else None


def make_pair(label, ratios, target=None, higher_is_better=False):
    ratios = [r for r in ratios if r is not None]
    p = {"label": label, "ratios": ratios, "median": median(ratios), "min": min(ratios) if ratios else None,
         "max": max(ratios) if ratios else None, "target": target, "higher_is_better": higher_is_better}
    if target is not None and p["median"] is not None:
        p["met"] = p["median"] >= target if higher_is_better else p["median"] <= target
    return p


def by_name(benchmarks):
    """name -> {repetition_index: entry}"""
    out = defaultdict(dict)
    for b in benchmarks:
        out[b["name"]][b.get("repetition_index", 0)] = b
    return out


def per_round(entries, a, b, field="p50_us", combine=None):
    """ratios a/b (or a/combine(b-entries)) over the rounds present in both"""
    ratios = []
    bs = b if isinstance(b, (list, tuple)) else [b]
    for rep in sorted(entries.get(a, {})):
        if not all(rep in entries.get(x, {}) for x in bs):
            continue
        num = entries[a][rep].get(field)
        den = sum(entries[x][rep].get(field) or 0 for x in bs)
        if num is not None and den:
            ratios.append(num / den)
    return ratios


def print_table(doc):
    c = doc["context"]
    print(f"\nload average (1/5/15 min) at start {' '.join(map(str, c['load_avg_start']))}, "
          f"at end {' '.join(map(str, c['load_avg_end']))}; {c.get('spinners_per_node', 0)} busy spinner(s) per node; "
          f"daemon sched {c.get('sched', 'default')}; {c.get('rounds', '?')} round(s)")
    entries = by_name(doc["benchmarks"])
    print(f"\n{'figure (median over rounds; us, or the unit named)':50s} {'p50':>9s} {'p99':>9s} {'p99.9':>9s}  other")
    for name, reps in entries.items():
        if name.endswith(("_sweeps", "_checksum", "_rc", "_unavailable", "_pair_ratios")):
            continue
        rs = list(reps.values())
        def med(k):
            v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            return median(v)
        p50, p99, p999 = med("p50_us"), med("p99_us"), med("p999_us")
        other = ""
        if name in rs[0]:
            other = f"{med(name):.4g}"
        elif "items_per_second" in rs[0]:
            other = f"{med('items_per_second'):.4g} items/s"
        f = lambda v: f"{v:9.1f}" if v is not None else f"{'':9s}"
        print(f"{name:50s} {f(p50)} {f(p99)} {f(p999)}  {other}")
    print(f"\n{'pair (dipc / baseline, same round)':52s} {'median':>7s} {'min':>7s} {'max':>7s}  target")
    for p in doc["pairs"]:
        if p["median"] is None:
            print(f"{p['label']:52s}     n/a")
            continue
        t = ""
        if p["target"] is not None:
            t = f"{'>=' if p['higher_is_better'] else '<='} {p['target']}: {'met' if p['met'] else 'NOT met'}"
        print(f"{p['label']:52s} {p['median']:7.2f} {p['min']:7.2f} {p['max']:7.2f}  {t}  (n={len(p['ratios'])})")


def load(s):
    return [float(x) for x in s.split()]


def ipc(args):
    raw = json.load(open(args.raw))
    cdfs = {}
    try:
        for line in open(args.cdf):
            d = json.loads(line)
            cdfs[(d["name"], d["rep"])] = d["cdf_us"]
    except FileNotFoundError:
        pass
    out = []
    for b in raw["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        b = dict(b)
        b["name"] = b["name"].split("/")[0]
        rep = b.get("repetition_index", 0)
        b["repetition_index"] = rep
        if (b["name"], rep) in cdfs:
            b["cdf_us"] = cdfs[(b["name"], rep)]
        out.append(b)
    e = by_name(out)
    loaded = args.spinners > 0
    pairs = [
        make_pair("semaphore ping-pong / raw TCP 64 B RTT", per_round(e, "BM_DipcSemPingPong", "BM_RawTcpRoundTrip"),
                  3.0 if loaded else 1.5),
        make_pair("message round trip / raw TCP 64 B RTT", per_round(e, "BM_DipcMsgRoundTrip", "BM_RawTcpRoundTrip"),
                  3.0 if loaded else None),
        make_pair("semaphore ping-pong / native SysV, one node",
                  per_round(e, "BM_DipcSemPingPong", "BM_NativeSemPingPong")),
        make_pair("semaphore ping-pong, both processes on the home node / native SysV",
                  per_round(e, "BM_DipcHomeSemPingPong", "BM_NativeSemPingPong"), 1.5),
        make_pair("shmget + shmat + shmdt, segment homed on this node / native SysV",
                  per_round(e, "BM_DipcShmAttach", "BM_NativeShmAttach"), 3.0),
        make_pair("message round trip / native SysV, one node",
                  per_round(e, "BM_DipcMsgRoundTrip", "BM_NativeMsgRoundTrip")),
        make_pair("message round trip, both processes on the home node / native SysV",
                  per_round(e, "BM_DipcHomeMsgRoundTrip", "BM_NativeMsgRoundTrip"), 1.5),
        make_pair("message streaming rate / native SysV, one node",
                  per_round(e, "BM_DipcMsgStream", "BM_NativeMsgStream", field="items_per_second"),
                  higher_is_better=True),
    ]
    ctx = dict(raw.get("context", {}))
    ctx.update(load_avg_start=load(args.load_start), load_avg_end=load(args.load_end),
               spinners_per_node=args.spinners, sched=args.sched, rounds=len(e.get("BM_RawTcpRoundTrip", {})))
    return {"context": ctx, "benchmarks": out, "pairs": pairs}


# ---- shm: bench/run_shm.sh collects "@ROUND key value" lines -------------------------------------------------------
LAT_FIELDS = {"p50_us", "p99_us", "p999_us", "mean_us", "cdf_us"}


def parse_rounds(path):
    """'@ROUND key value' lines -> (round -> key -> value, benchmarks in the common shape)"""
    rounds = defaultdict(dict)  # round -> key -> value
    for line in open(path):
        if not line.startswith("@"):
            continue
        parts = line[1:].split()
        if len(parts) != 3:
            continue
        rnd, k, v = parts
        try:
            val = [float(x) for x in v.split(",")] if "," in v else float(v)
        except ValueError:
            continue
        rounds[int(rnd)][k] = val
    benchmarks = []
    for rnd in sorted(rounds):
        groups = defaultdict(dict)
        for k, v in rounds[rnd].items():
            for f in LAT_FIELDS:
                if k.endswith("_" + f):
                    groups[k[: -len(f) - 1]][f] = v
                    break
            else:
                groups[k]["value"] = v
        for name, g in groups.items():
            b = {"name": name, "repetition_index": rnd, "run_type": "iteration", "time_unit": "us"}
            if "value" in g:
                b[name] = g["value"]
                if isinstance(g["value"], float):
                    b["real_time"] = g["value"]
            else:
                b.update(g)
                b["real_time"] = g.get("p50_us")
            benchmarks.append(b)
    return rounds, benchmarks


def scalar_ratios(e, a, b):
    """per-round a/b of scalar entries (their value is stored under their own name)"""
    ea, eb = e.get(a, {}), e.get(b, {})
    return [ea[r][a] / eb[r][b] for r in sorted(ea) if r in eb and ea[r].get(a) and eb[r].get(b)]


def spin(args):
    rounds, benchmarks = parse_rounds(args.log)
    e = by_name(benchmarks)
    pairs = []
    for name in sorted(e):
        if name.endswith("_A_ms"):
            base = name[: -len("_A_ms")]
            work, nodes = base.rsplit("_n", 1)
            pairs.append(make_pair(f"{work}, {nodes} nodes: wall time, sched B / A",
                                   scalar_ratios(e, base + "_B_ms", name)))
    ctx = {"load_avg_start": load(args.load_start), "load_avg_end": load(args.load_end),
           "spinners_per_node": args.spinners, "sched": args.sched,
           "rounds": len([r for r in rounds if r > 0]), "executable": "bench/run_spin.sh"}
    return {"context": ctx, "benchmarks": benchmarks, "pairs": pairs}


def shm(args):
    rounds, benchmarks = parse_rounds(args.log)
    e = by_name(benchmarks)
    loaded = args.spinners > 0

    stream = [x for rnd in sorted(rounds) for x in ([rounds[rnd]["stream_pair_ratios"]]
              if isinstance(rounds[rnd].get("stream_pair_ratios"), float) else rounds[rnd].get("stream_pair_ratios", []))]
    readers = args.readers
    pairs = [
        make_pair("STREAM triad dipc / native, per pass pair", stream, 0.97, higher_is_better=True),
        make_pair("read miss p50 / (TCP 4 KiB RTT + uffd resolve)", per_round(e, "readmiss", ["tcp4k", "uffd_proc"]),
                  3.0 if loaded else 1.3),
        make_pair("write upgrade, 1 reader, p50 / TCP 4 KiB RTT", per_round(e, "upgrade1", "tcp4k"),
                  3.0 if loaded else 1.5),
        make_pair("Jacobi 2 nodes dipc / 2 processes native, per sweep", scalar_ratios(e, "jacobi_dipc2_us_per_sweep",
                                                                                      "jacobi_native2_us_per_sweep")),
        make_pair("sequential first touch dipc / raw TCP bulk, bandwidth", scalar_ratios(e, "seqread_dipc_mibps",
                                                                                       "tcpbulk_mibps"),
                  0.5, higher_is_better=True),
        make_pair("sequential first touch dipc / raw TCP bulk into fresh memory, bandwidth",
                  scalar_ratios(e, "seqread_dipc_mibps", "tcpbulk_fresh_mibps"), higher_is_better=True),
        make_pair("sequential write on node2 of a fresh segment homed on node1 / raw TCP bulk into fresh memory, "
                  "bandwidth", scalar_ratios(e, "seqwrite_dipc_mibps", "tcpbulk_fresh_mibps"), higher_is_better=True),
        make_pair("sequential first touch SHM_HUGETLB / normal pages, bandwidth",
                  scalar_ratios(e, "seqread_huge_dipc_mibps", "seqread_dipc_mibps"), higher_is_better=True),
    ]
    if readers > 1:
        pairs.insert(3, make_pair(f"write upgrade, {readers} readers, p50 / TCP 4 KiB RTT (same cluster)",
                                  per_round(e, f"upgrade{readers}", f"tcp4k_n{readers + 1}")))
    if "writemiss" in e:
        pairs.append(make_pair("write miss p50 / (TCP 4 KiB RTT + uffd resolve)",
                               per_round(e, "writemiss", ["tcp4k", "uffd_proc"])))
    if any(k.startswith(("argo_", "seqread_argo", "jacobi_argo")) for k in e):
        # bench/argo.sh: Argo DSM's time over dipc's for the same kernel in the same round (> 1: dipc is faster).
        pairs += [
            make_pair("Argo / dipc: read miss p50", per_round(e, "argo_readmiss", "readmiss")),
            make_pair("Argo / dipc: write miss p50", per_round(e, "argo_writemiss", "writemiss")),
            make_pair("Argo / dipc: Jacobi 2 nodes, time per sweep",
                      scalar_ratios(e, "jacobi_argo2_us_per_sweep", "jacobi_dipc2_us_per_sweep"),
                      1.0, higher_is_better=True),
            make_pair("dipc / Argo: sequential first touch, bandwidth",
                      scalar_ratios(e, "seqread_dipc_mibps", "seqread_argo_mibps"), 1.0, higher_is_better=True),
        ]
    ctx = {"load_avg_start": load(args.load_start), "load_avg_end": load(args.load_end),
           "spinners_per_node": args.spinners, "sched": args.sched, "rounds": len([r for r in rounds if r > 0]),
           "executable": "bench/run_shm.sh"}
    return {"context": ctx, "benchmarks": benchmarks, "pairs": pairs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["ipc", "shm", "spin"])
    ap.add_argument("--raw")
    ap.add_argument("--cdf")
    ap.add_argument("--log")
    ap.add_argument("--load-start", required=True)
    ap.add_argument("--load-end", required=True)
    ap.add_argument("--spinners", type=int, default=0)
    ap.add_argument("--sched", default="default")
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    doc = {"ipc": ipc, "shm": shm, "spin": spin}[a.kind](a)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print_table(doc)
    print(f"\nJSON for bench/plot: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
