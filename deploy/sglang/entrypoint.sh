#!/usr/bin/env bash
# Entry point of Dockerfile.gpu: `serve` (default) launches SGLang on the weights in the volume;
# `download` fetches them once into that volume (the only step that needs the internet).
set -euo pipefail

# The image sets every one of these; the defaults keep the script usable outside it.
: "${OPROVER_SGLANG_MODEL_ID:=m-a-p/OProver-8B}"
: "${OPROVER_SGLANG_MODEL_DIR:=/models/OProver-8B}"
: "${OPROVER_SGLANG_SERVED_NAME:=OProver-8B}"
: "${OPROVER_SGLANG_PORT:=30000}"
: "${OPROVER_SGLANG_TP:=1}"
: "${OPROVER_SGLANG_CONTEXT_LENGTH:=40960}"
: "${OPROVER_SGLANG_MEM_FRACTION:=0.88}"
: "${OPROVER_SGLANG_QUANTIZATION:=}"
: "${OPROVER_SGLANG_MAX_RUNNING:=128}"
: "${OPROVER_SGLANG_EXTRA_ARGS:=}"
model_dir="${OPROVER_SGLANG_MODEL_DIR}"

case "${1:-serve}" in
  download)
    echo "downloading ${OPROVER_SGLANG_MODEL_ID} into ${model_dir}" >&2
    HF_HUB_OFFLINE=0 huggingface-cli download "${OPROVER_SGLANG_MODEL_ID}" --local-dir "${model_dir}"
    ;;
  serve)
    if [[ ! -f "${model_dir}/config.json" ]]; then
      echo "no model weights in ${model_dir} (config.json missing)." >&2
      echo "mount a folder holding ${OPROVER_SGLANG_MODEL_ID} there, or run this image once with 'download'" >&2
      echo "(see docs/generation.md, 'Model weights')." >&2
      exit 64
    fi
    args=(
      --model-path "${model_dir}"
      --served-model-name "${OPROVER_SGLANG_SERVED_NAME}"
      --host 0.0.0.0
      --port "${OPROVER_SGLANG_PORT}"
      --tp "${OPROVER_SGLANG_TP}"
      --context-length "${OPROVER_SGLANG_CONTEXT_LENGTH}"
      --mem-fraction-static "${OPROVER_SGLANG_MEM_FRACTION}"
      --max-running-requests "${OPROVER_SGLANG_MAX_RUNNING}"
      --reasoning-parser qwen3
      --enable-metrics
      --enable-cache-report
    )
    if [[ -n "${OPROVER_SGLANG_QUANTIZATION}" ]]; then
      args+=(--quantization "${OPROVER_SGLANG_QUANTIZATION}")
    fi
    # Word splitting on purpose: extra flags come as one space-separated string.
    # shellcheck disable=SC2206
    extra=(${OPROVER_SGLANG_EXTRA_ARGS})
    exec python3 -m sglang.launch_server "${args[@]}" "${extra[@]}"
    ;;
  *)
    exec "$@"
    ;;
esac
