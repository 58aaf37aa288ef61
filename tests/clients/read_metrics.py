"""Reads an OpenMetrics exposition with the Prometheus project's own parser (prometheus-client
from PyPI) and prints every sample as a JSON line {"name", "labels", "value"}; fails on any
format error. Usage: read_metrics.py <url>
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1]) as response:
    content_type = response.headers["Content-Type"]
    text = response.read().decode()
assert content_type.startswith("application/openmetrics-text"), content_type
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
