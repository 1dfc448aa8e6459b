#!/usr/bin/env bash
# Spark GPU discovery (spark.executor.resource.gpu.discoveryScript): prints the GPUs this
# host has as Spark's ResourceInformation JSON, e.g. {"name": "gpu", "addresses": ["0","1"]}.
# No nvidia-smi or no GPU: an empty list, and Spark refuses to start an executor that asked
# for GPUs (spark.executor.resource.gpu.amount), naming the resource.
set -euo pipefail
ids=""
if command -v nvidia-smi >/dev/null 2>&1; then
    ids=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr -d ' ' | awk 'NF' | sed 's/.*/"&"/' | paste -sd, -)
fi
echo "{\"name\": \"gpu\", \"addresses\": [${ids}]}"
