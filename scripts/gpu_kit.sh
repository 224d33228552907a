#!/usr/bin/env bash
# The GPU kit's run: every GPU check of xpnet, offline, each step with its own time limit.
#
#   bash scripts/gpu_kit.sh [--dry-run] [--budget SECONDS] KIT OUTDIR
#
# Run from the root of an xpnet checkout on the GPU node (xpnet runs from the checkout, by
# PYTHONPATH). KIT is what `python scripts/gpu_kit.py pack KIT` made: its wheels are installed
# with pip --no-index into a temporary folder (never the node's own packages), its
# Fashion-MNIST files are found through XPNET_DATA. OUTDIR gets report.json and report.md
# (rewritten after every step), log.txt (every step's output), selfcheck-cupy.json,
# selfcheck-torch.json, selfcheck-jax.json, bench.json and history.jsonl: at most 8 files, written as it goes.
# --dry-run (CPU, CI): checks the kit, prints the exact step commands and writes the report
# files from a simulated run, without running any step.
# A step that needs what the node may lack (jax/cuda: JAX with CUDA) is asked about first, in a
# dry run too (gpu_kit.py needs) and, where it is missing, recorded as "skipped: <why>" instead of run.
set -u
dry=0
budget=490
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1; shift ;;
        --budget) budget="$2"; shift 2 ;;
        --budget=*) budget="${1#--budget=}"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
if [ $# -ne 2 ]; then
    echo "usage: bash scripts/gpu_kit.sh [--dry-run] [--budget SECONDS] KIT OUTDIR" >&2
    exit 2
fi
kit=$(cd "$1" 2>/dev/null && pwd) || { echo "xpnet: error: KIT $1 is not a folder" >&2; exit 2; }
mkdir -p "$2" && out=$(cd "$2" && pwd) || { echo "xpnet: error: cannot make OUTDIR $2" >&2; exit 2; }
[ -f scripts/gpu_kit.py ] && [ -d xpnet ] || { echo "xpnet: error: run from the root of an xpnet checkout" >&2; exit 2; }
kitpy="${PYTHON:-python3} scripts/gpu_kit.py"  # PYTHON: another interpreter for the kit's script
$kitpy check "$kit" || exit 2
tmp=$(mktemp -d /tmp/xpnet-gpu-kit.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
commit=${XPNET_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}  # XPNET_COMMIT: for a copy without .git
plan=$($kitpy plan "$out" --budget "$budget" --tmp "$tmp") || exit 2
rm -f "$out/report.json" "$out/report.md" "$out/log.txt"
$kitpy record "$out" --commit "$commit" --skipped "$(printf '%s\n' "$plan" | awk -F'\t' '$1 == "#" {print $2}')" || exit 1

# -- install: the kit's wheels into $tmp/site, with pip --no-index (or unpacked: they are pure Python)
site="$tmp/site"
if [ $dry -eq 0 ]; then
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --find-links "$kit/wheels" --target "$site" "$kit"/wheels/*.whl
    else
        for wheel in "$kit"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done
    fi >>"$out/log.txt" 2>&1 || { echo "xpnet: error: installing the kit's wheels failed (see $out/log.txt)" >&2; exit 1; }
fi
export PYTHONPATH="$PWD:$site" XPNET_DATA="$kit/data" PYTHONUNBUFFERED=1

while IFS=$'\t' read -r name limit need command; do
    [ "$name" = "#" ] && { echo "$limit"; continue; }
    echo "== $name (limit ${limit} s): $command"
    why=""
    if [ "$need" != "-" ]; then
        echo "   needs $need: skipped, saying why, where this node lacks it"
        cache="$tmp/unmet-${need//\//-}"  # each need is asked once: python3 scripts/gpu_kit.py needs NEED
        [ -f "$cache" ] || $kitpy needs "$need" >"$cache" 2>>"$tmp/needs.log" || cat "$tmp/needs.log" >&2
        [ -f "$cache" ] && why=$(cat "$cache")
    fi
    if [ -n "$why" ]; then
        [ $dry -eq 1 ] || echo "== $name: skipped: $why" >>"$out/log.txt"
        $kitpy record "$out" --name "$name" --rc 0 --seconds 0 --limit "$limit" --command "$command" --skip "$why" || exit 1
        grep -F "| $name |" "$out/report.md"
        continue
    fi
    if [ $dry -eq 1 ]; then
        rc=-1; seconds=0
    else
        echo "== $name (limit ${limit} s): $command" >>"$out/log.txt"
        start=$(date +%s)
        timeout --kill-after=5 "$limit" bash -c "$command" >>"$out/log.txt" 2>&1
        rc=$?
        seconds=$(( $(date +%s) - start ))
        echo "== $name: exit $rc after ${seconds} s" >>"$out/log.txt"
    fi
    $kitpy record "$out" --name "$name" --rc "$rc" --seconds "$seconds" --limit "$limit" --command "$command" || exit 1
    grep -F "| $name |" "$out/report.md"
done <<<"$plan"
echo "report: $out/report.md"
