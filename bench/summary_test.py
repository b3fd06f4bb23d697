#!/usr/bin/env python3
"""Checks bench/summary.py: per-round pairing, median/min/max of the ratios, targets, and the JSON shape that
bench/plot reads (ctest: bench_summary). Synthetic inputs, no cluster."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(HERE, "summary.py")


def run(args):
    out = subprocess.run([sys.executable, SUMMARY] + args, capture_output=True, text=True, check=True)
    return out.stdout


class Summary(unittest.TestCase):
    def setUp(self):
        self.d = tempfile.mkdtemp()

    def path(self, name):
        return os.path.join(self.d, name)

    def test_shm_pairs_rounds_not_runs(self):
        # round r: tcp 40, uffd 10 -> base 50; read miss 50, 60, 100: ratios 1.0, 1.2, 2.0 (median 1.2 <= 1.3)
        lines = []
        for r, rm in ((1, 50), (2, 60), (3, 100)):
            lines += [f"@{r} tcp4k_p50_us 40", f"@{r} uffd_proc_p50_us 10", f"@{r} readmiss_p50_us {rm}",
                      f"@{r} readmiss_cdf_us " + ",".join(str(x) for x in range(101)),
                      f"@{r} tcpbulk_mibps 100", f"@{r} seqread_dipc_mibps {20 * r}"]
        lines.append("human line, ignored")
        open(self.path("log"), "w").write("\n".join(lines) + "\n")
        text = run(["shm", "--log", self.path("log"), "--load-start", "1 2 3", "--load-end", "4 5 6",
                    "--out", self.path("shm.json")])
        doc = json.load(open(self.path("shm.json")))
        pairs = {p["label"]: p for p in doc["pairs"]}
        rm = pairs["read miss p50 / (TCP 4 KiB RTT + uffd resolve)"]
        self.assertEqual(rm["ratios"], [1.0, 1.2, 2.0])
        self.assertEqual((rm["median"], rm["min"], rm["max"]), (1.2, 1.0, 2.0))
        self.assertTrue(rm["met"])
        ft = pairs["sequential first touch dipc / raw TCP bulk, bandwidth"]
        self.assertAlmostEqual(ft["median"], 0.4)
        self.assertFalse(ft["met"])  # higher is better: 0.4 < 0.5
        self.assertEqual(doc["context"]["load_avg_start"], [1.0, 2.0, 3.0])
        self.assertEqual(doc["context"]["rounds"], 3)
        cdf = [b for b in doc["benchmarks"] if b["name"] == "readmiss"][0]["cdf_us"]
        self.assertEqual(len(cdf), 101)
        self.assertIn("NOT met", text)
        self.assertIn("load average", text)

    def test_loaded_runs_get_the_loaded_target(self):
        open(self.path("log"), "w").write("@1 tcp4k_p50_us 40\n@1 upgrade1_p50_us 100\n")
        run(["shm", "--log", self.path("log"), "--load-start", "1 1 1", "--load-end", "1 1 1", "--spinners", "2",
             "--out", self.path("shm.json")])
        p = [p for p in json.load(open(self.path("shm.json")))["pairs"] if p["label"].startswith("write upgrade, 1")][0]
        self.assertEqual(p["target"], 3.0)
        self.assertTrue(p["met"])  # 2.5 <= 3

    def test_argo_pairs_only_when_argo_ran(self):
        # round r: dipc read miss 100, Argo's 150 and 250 -> 1.5, 2.5; Jacobi dipc 10, Argo 8 -> 0.8 (Argo faster)
        lines = []
        for r, argo in ((1, 150), (2, 250)):
            lines += [f"@{r} readmiss_p50_us 100", f"@{r} argo_readmiss_p50_us {argo}",
                      f"@{r} jacobi_dipc2_us_per_sweep 10", f"@{r} jacobi_argo2_us_per_sweep 8"]
        open(self.path("log"), "w").write("\n".join(lines) + "\n")
        run(["shm", "--log", self.path("log"), "--load-start", "1 1 1", "--load-end", "1 1 1", "--readers", "0",
             "--out", self.path("shm.json")])
        pairs = {p["label"]: p for p in json.load(open(self.path("shm.json")))["pairs"]}
        self.assertEqual(pairs["Argo / dipc: read miss p50"]["ratios"], [1.5, 2.5])
        jac = pairs["Argo / dipc: Jacobi 2 nodes, time per sweep"]
        self.assertEqual(jac["median"], 0.8)
        self.assertFalse(jac["met"])  # dipc must be faster: Argo's time / dipc's >= 1
        self.assertFalse(any("0 readers" in k for k in pairs))
        open(self.path("log"), "w").write("@1 readmiss_p50_us 100\n")
        run(["shm", "--log", self.path("log"), "--load-start", "1 1 1", "--load-end", "1 1 1",
             "--out", self.path("shm.json")])
        self.assertFalse(any(p["label"].startswith("Argo") for p in json.load(open(self.path("shm.json")))["pairs"]))

    def test_ipc_pairs_repetitions_and_attaches_cdfs(self):
        bench = []
        for rep, (tcp, sem) in enumerate(((20, 30), (40, 50), (10, 30))):
            for name, v in (("BM_RawTcpRoundTrip", tcp), ("BM_DipcSemPingPong", sem)):
                bench.append({"name": f"{name}/iterations:10/repeats:3/real_time", "run_type": "iteration",
                              "repetition_index": rep, "p50_us": v, "real_time": v, "time_unit": "us"})
        bench.append({"name": "BM_RawTcpRoundTrip_mean", "run_type": "aggregate", "p50_us": 1})
        json.dump({"context": {}, "benchmarks": bench}, open(self.path("raw.json"), "w"))
        open(self.path("cdf"), "w").write(json.dumps({"name": "BM_DipcSemPingPong", "rep": 1, "cdf_us": [1, 2]}) + "\n")
        run(["ipc", "--raw", self.path("raw.json"), "--cdf", self.path("cdf"), "--load-start", "1 1 1",
             "--load-end", "1 1 1", "--out", self.path("ipc.json")])
        doc = json.load(open(self.path("ipc.json")))
        p = doc["pairs"][0]
        self.assertEqual(p["ratios"], [1.5, 1.25, 3.0])
        self.assertEqual(p["median"], 1.5)
        self.assertTrue(p["met"])  # <= 1.5
        sem = [b for b in doc["benchmarks"] if b["name"] == "BM_DipcSemPingPong" and b["repetition_index"] == 1][0]
        self.assertEqual(sem["cdf_us"], [1, 2])
        self.assertEqual(len(doc["benchmarks"]), 6)  # aggregates dropped


if __name__ == "__main__":
    unittest.main()
