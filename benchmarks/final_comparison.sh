#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
#
# The final comparison of issue #12 (docs/quality.md): every arm of
# `benchmarks/quality.py --regime small4k`, two at a time (one per core of
# the project's 2-core machines), each into its own result file
# benchmarks/results/quality_small4k_<dataset>_seed<S>_<variant>.json so that
# two runs never write one file.
#
# A study of 60 arms of 1-2 core-hours each spans sessions: run this again
# and it goes on where it stopped. Arms whose file already holds their record
# are skipped; an interrupted arm continues from its last checkpoint
# (quality.py --resume, checkpoints every 500 iterations). Then the summary:
#   python benchmarks/quality_summary.py \
#       benchmarks/results/quality_small4k_*_seed*_*.json \
#       --out benchmarks/results/quality_small4k_summary.json
#
# Usage: bash benchmarks/final_comparison.sh [--dry-run] [--jobs N]
#                                            [--minutes M]
#   --dry-run    print the arms still to run, in order, and exit
#   --jobs N     arms at a time (default 2)
#   --minutes M  start an arm only if its expected time (arm_minutes
#                below: what an arm of its kind took on this machine since
#                its last boot, else a usual time) ends within M minutes of
#                the script's start; the others are skipped (reported) and
#                wait for the next call. For a machine lent for a fixed time
#                whose work dirs do not survive it: an arm cut at the end
#                restarts from scratch.
set -euo pipefail
# The whole script is one block, read before any of it runs: bash reads a
# script as it goes, and this one runs for hours, so an edit of the file (a
# git pull) would otherwise change what the running copy does next.
{
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
RESULTS=${RESULTS:-benchmarks/results}
WORK=${WORK:-work_dirs/quality_small4k}  # + _seed<S>/<dataset>/<variant>
DRY_RUN=0
JOBS=2
DEADLINE=''  # epoch seconds, from --minutes
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --jobs) JOBS=$2; shift ;;
    --minutes)
      [[ ${2:-} =~ ^[0-9]+$ ]] || {
        echo "final_comparison.sh: --minutes takes whole minutes, got" \
          "'${2:-}'" >&2
        exit 2
      }
      DEADLINE=$(($(date +%s) + 60 * $2)); shift ;;
    *) echo "final_comparison.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# Order: what answers the most first. Seed 0 of MoCo v2, ReKD, ReKD without
# relations and ReKD with response KD (`_kd1`, session 9: the one variant
# whose subset curve ended above MoCo v2's) on both data sets; then seeds 1
# and 2 of the target comparison (MoCo v2 vs ReKD + KD) and KD without
# relations, CIFAR-10 first (session 10: the one data set where `rekd_kd1`
# of seed 0 ended above MoCo v2), with the supervised ceiling of seed 0
# and CIFAR-10's seeds 1 and 2 of KD without relations between the two data
# sets (session 12: the one reference row the tables still lacked, a short
# pair; and KD alone, which ended highest of seed 0); then the rest of seed 0
# (the oracle, the reference rows scored without training); then seeds 1
# and 2 of the other arms of the comparison with the chosen defaults (KD,
# the small4k configs' default since session 13: KD without relations and
# the label oracle, both with KD); then ReKD at the KD weight the small4k
# configs use since session 24 (`_kd4`: the gap to the teacher that `_kd1`
# leaves, measured on CIFAR-10 seed 0 against `_kd2`) and the same without
# relations (session 25 on CIFAR-10, where it beats MoCo v2: is the gain the
# relations' or the distillation's? Session 26 on Fashion-MNIST, where it
# does not: how far the teacher carries the student there); then the label
# oracle at that weight (session 27: the bound on what right relations add
# to the distillation at the configs' defaults; the oracle above ran at
# weight 1); last, seeds 1 and 2 of the arms without KD (the contract's
# loss), which seed 0 of the study measured first.
# One line per arm: each seed of $1, variant of $2 and data set of $3
# (default: both).
arms() {
  local seed variant dataset
  for seed in $1; do
    for variant in $2; do
      for dataset in ${3:-cifar10 fashion-mnist}; do
        echo "$dataset $seed $variant"
      done
    done
  done
}

plan() {
  arms 0 'mocov2 rekd rekd_no_relation rekd_kd1'
  arms '1 2' 'mocov2 rekd_kd1' cifar10
  arms 0 rekd_no_relation_kd1 cifar10
  arms 0 supervised
  arms '1 2' rekd_no_relation_kd1 cifar10
  arms '1 2' 'mocov2 rekd_kd1' fashion-mnist
  arms 0 rekd_no_relation_kd1 fashion-mnist
  arms 0 'rekd_oracle_kd1 untrained pixels'
  arms '1 2' rekd_no_relation_kd1 fashion-mnist
  arms '1 2' rekd_oracle_kd1
  arms '0 1 2' rekd_kd4
  arms '0 1 2' rekd_no_relation_kd4
  arms '0 1 2' rekd_oracle_kd4
  arms '1 2' 'rekd rekd_no_relation'
}

# Arms of one kind cost about the same: ReKD trains two networks and scores
# the teacher too; the reference rows without training are scored only.
arm_kind() {
  case $1 in
    untrained | pixels) echo reference ;;
    supervised | mocov2) echo "$1" ;;
    rekd_no_relation*) echo rekd_no_relation ;;
    *) echo rekd ;;
  esac
}

# Minutes of every arm finished on this machine since its last boot, one
# "<kind> <minutes>" line each. What an arm takes depends on the host and on
# what else shares its cores (a whole ReKD + KD arm took 72-77 min in
# session 14, 113-140 min on the AVX2-only hosts of sessions 16-17), so once
# an arm of a kind has finished here, the next of that kind is expected to
# take what it took (the longest so far, +15 %); the boot id keeps a
# surviving work dir's times from an earlier machine.
MEASURED="${WORK}_logs/arm_minutes_$(cat /proc/sys/kernel/random/boot_id \
  2> /dev/null || hostname)"

# Expected minutes of an arm, training and scoring, on one core beside
# another arm: measured here (above), else about what it took on the slowest
# hosts seen (docs/quality.md). An arm without relations also trains the
# teacher beside the student (the seed-0 Fashion-MNIST one's loop took 143
# min), so both ReKD kinds share one estimate: the slowest ReKD + KD arm
# seen on an AVX2-only host (about 140 min), with a margin.
arm_minutes() {
  local kind measured
  kind=$(arm_kind "$1")
  measured=$(awk -v kind="$kind" '
    $1 == kind { if (!seen || $2 > longest) longest = $2; seen = 1 }
    END { if (seen) print longest }' "$MEASURED" 2> /dev/null || true)
  if [ -n "$measured" ]; then
    echo $(((measured * 115 + 99) / 100))
    return
  fi
  case $kind in
    reference) echo 15 ;;
    supervised) echo 60 ;;
    mocov2) echo 95 ;;
    *) echo 160 ;;
  esac
}

result_file() { echo "$RESULTS/quality_small4k_$1_seed$2_$3.json"; }

# Whether the arm's result file holds its record (a finished arm).
finished() {
  local file
  file=$(result_file "$1" "$2" "$3")
  [ -f "$file" ] && "$PYTHON" - "$file" "$1" "$3" <<'EOF'
import json
import sys

path, dataset, variant = sys.argv[1:]
with open(path) as f:
    records = json.load(f).get('records', [])
sys.exit(0 if any(r.get('dataset') == dataset and r.get('variant') == variant
                  for r in records) else 1)
EOF
}

arm() {
  local dataset=$1 seed=$2 variant=$3 minutes started fresh=1
  minutes=$(arm_minutes "$variant")
  if [ -n "$DEADLINE" ] && (($(date +%s) + 60 * minutes > DEADLINE)); then
    echo "[$(date -u +%H:%M)] skip   $dataset seed $seed $variant" \
      "(about $minutes min: would end after --minutes)"
    return 0
  fi
  mkdir -p "${WORK}_logs"
  echo "[$(date -u +%H:%M)] start  $dataset seed $seed $variant"
  started=$(date +%s)
  # An arm continued from a checkpoint says little about a whole one.
  [ -e "${WORK}_seed$seed/$dataset/$variant" ] && fresh=0
  if "$PYTHON" benchmarks/quality.py --regime small4k --datasets "$dataset" \
      --variants "$variant" --seed "$seed" --threads 1 \
      --work-root "${WORK}_seed$seed" \
      --out "$(result_file "$dataset" "$seed" "$variant")" --resume \
      > "${WORK}_logs/${dataset}_seed${seed}_${variant}.log" 2>&1; then
    echo "[$(date -u +%H:%M)] done   $dataset seed $seed $variant"
    if [ "$fresh" = 1 ]; then
      echo "$(arm_kind "$variant") $((($(date +%s) - started + 59) / 60))" \
        >> "$MEASURED"
    fi
  else
    echo "[$(date -u +%H:%M)] FAILED $dataset seed $seed $variant:" \
      "${WORK}_logs/${dataset}_seed${seed}_${variant}.log" >&2
    return 1
  fi
}

todo=$(plan | while read -r dataset seed variant; do
  finished "$dataset" "$seed" "$variant" || echo "$dataset $seed $variant"
done)
if [ "$DRY_RUN" = 1 ]; then
  [ -n "$todo" ] && echo "$todo"
  exit 0
fi
[ -z "$todo" ] && { echo 'every arm is finished'; exit 0; }
# Two copies would train the same arms into the same work dirs.
exec 9> "${WORK}.lock"
flock -n 9 || { echo "final_comparison.sh: another copy is running" \
  "(${WORK}.lock)" >&2; exit 1; }
# Preflight: quality.py reads (dry run) the configs of every arm left, so a
# broken environment or config stops the study here, in seconds, instead of
# failing each arm in turn.
preflight_log="${WORK}_logs/preflight.log"
mkdir -p "${WORK}_logs"
# shellcheck disable=SC2046  # one word per data set / variant
if ! "$PYTHON" benchmarks/quality.py --regime small4k --dry-run \
    --datasets $(echo "$todo" | cut -d' ' -f1 | sort -u) \
    --variants $(echo "$todo" | cut -d' ' -f3 | sort -u) \
    --work-root "${WORK}_preflight" > "$preflight_log" 2>&1; then
  echo "final_comparison.sh: preflight failed, no arm started:" \
    "$preflight_log" >&2
  tail -n 3 "$preflight_log" >&2
  exit 1
fi
export -f arm arm_kind arm_minutes result_file
export PYTHON RESULTS WORK DEADLINE MEASURED
# One arm per line; a failed arm is reported and the others go on.
echo "$todo" | xargs -P "$JOBS" -L 1 bash -c 'arm "$@"' _
exit
}
