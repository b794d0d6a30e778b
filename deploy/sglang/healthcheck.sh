#!/usr/bin/env bash
# Healthy = the model generates: one token of a real chat completion (SGLang's /health only says the
# process is up; a wedged scheduler still answers it).
set -euo pipefail
port="${OPROVER_SGLANG_PORT:-30000}"
body=$(printf '{"model":"%s","messages":[{"role":"user","content":"1+1="}],"max_tokens":1,"temperature":0}' \
  "${OPROVER_SGLANG_SERVED_NAME:-OProver-8B}")
curl --fail --silent --show-error --max-time 25 \
  -H 'Content-Type: application/json' -d "${body}" \
  "http://127.0.0.1:${port}/v1/chat/completions" >/dev/null
