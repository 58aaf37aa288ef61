"""Tests of report.py on the committed run (bench/results.json): its targets are what `targets`
computes from its figures, the ratios are what they say, a figure past a threshold flips its
target, and the table names every scenario and every missed target. Run by `make test`
(`python3 -m unittest discover -s scripts/benchkit -t scripts`)."""
import contextlib
import io
import json
import unittest
from pathlib import Path

from benchkit.report import envoy_cpu_over_no_auth, print_table, ratios, targets

RESULTS = Path(__file__).resolve().parent.parent.parent / "bench/results.json"


def committed():
    results = json.loads(RESULTS.read_text())
    # runs before native_miss_h2 existed: the HTTP/1.1 figure stands for both
    results["scenarios"].setdefault("native_miss_h2", dict(results["scenarios"]["native_miss"]))
    return results


class Report(unittest.TestCase):
    def test_the_committed_targets_are_what_the_figures_say(self):
        results = committed()
        results["ratios"] = ratios(results["scenarios"])
        results["envoy_cpu_us_over_no_auth"] = envoy_cpu_over_no_auth(results["scenarios"])
        valid_tokens = 1000
        computed, flags = targets(results, valid_tokens), committed()["targets"]
        # a target added since that run is computed too, and left out of the comparison
        self.assertEqual({k: v for k, v in computed.items() if k in flags}, flags)

    def test_ratios_divide_the_named_scenarios_and_take_each_best_transport(self):
        s = committed()["scenarios"]
        r = ratios(s)
        self.assertEqual(r["native_hit_vs_no_auth"], round(s["native_hit"]["rps"] / s["no_auth"]["rps"], 3))
        s["ext_authz_grpc"]["rps"] = 10 * s["ext_authz_h2"]["rps"]
        s["native_miss_h2"]["rps"] = 2 * s["native_miss"]["rps"]
        best = ratios(s)["native_miss_best_vs_ext_authz_best"]
        self.assertEqual(best, round(2 * s["native_miss"]["rps"] / (10 * s["ext_authz_h2"]["rps"]), 3))
        s["no_auth"]["rps"] = 0
        self.assertIsNone(ratios(s)["filter_hit_vs_no_auth"], "no division by zero")

    def test_a_figure_past_its_threshold_flips_its_target(self):
        results = committed()
        s = results["scenarios"]
        for rps, met in ((1.2, True), (1.0, False)):
            s["native_hit"]["rps"] = rps * s["jwt_rs256_cached"]["rps"]
            results["ratios"] = ratios(s)
            self.assertIs(targets(results, 1000)["native_hit_at_least_1.10x_jwt_rs256_cached"], met)
        results["revocation"] = dict(results["revocation"], accepted_after_return=1)
        self.assertFalse(targets(results, 1000)["revoked_token_never_accepted_after_the_revoke_returned"])

    def test_the_table_names_every_scenario_and_every_missed_target(self):
        results = committed()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_table(results)
        text = out.getvalue()
        for name in results["scenarios"]:
            self.assertIn(name, text)
        for name, met in results["targets"].items():
            self.assertIn(f"target {name}: {'met' if met else 'MISSED'}", text)


if __name__ == "__main__":
    unittest.main()
