#!/usr/bin/env bash
# Fine-tune the packaged MiniLM teacher on an SST-2 slice, then distil it into a k-layer student
# with each variant, and print a table. Data: $GLUE_DIR, ../shared/glue_data, the hub or the embedded sample.
# Finished runs are skipped, so re-running resumes where it stopped.
#   FRACTION=0.1 EPOCHS=3 VARIANTS="ft sm+tmkd" bash experiments/demo.sh
set -euo pipefail
OUT=${OUT:-runs/demo}
TASK=${TASK:-sst2}
FRACTION=${FRACTION:-0.02}
EPOCHS=${EPOCHS:-1}
K=${K:-2}
LR=${LR:-1e-4}
SEED=${SEED:-42}
VARIANTS=${VARIANTS:-ft kd tmkd sm+tmkd}
# data: $GLUE_DIR, else ../shared/glue_data when it exists, else the hub or the embedded SST-2 sample
SHARED="$(cd "$(dirname "$0")/.." && pwd)/../shared/glue_data"
if [ -z "${GLUE_DIR:-}" ] && [ -f "$SHARED/SST-2/train.tsv" ]; then export GLUE_DIR="$SHARED"; fi
MIXKD=${MIXKD:-mixkd}

run() {  # run DIR CMD...: skip finished runs, resume interrupted ones
  local dir=$1; shift
  if [ -f "$dir/metrics.json" ]; then echo "== $dir: finished, skipping"; return; fi
  local extra=()
  [ -f "$dir/checkpoints/last/trainer_state.pt" ] && extra=(--resume)
  echo "== $*"
  "$@" --output-dir "$dir" "${extra[@]}" --no-progress
}

run "$OUT/teacher" $MIXKD finetune --task "$TASK" --model minilm-l6 --data-fraction "$FRACTION" \
  --epochs "$EPOCHS" --lr "$LR" --seed "$SEED"
for v in $VARIANTS; do
  run "$OUT/student-k$K-$v" $MIXKD distill --task "$TASK" --teacher "$OUT/teacher" --variant "$v" \
    --student-layers "$K" --epochs "$EPOCHS" --lr "$LR" --seed "$SEED"
done

python - "$OUT" <<'PY'
import json, sys, pathlib
rows = []
for m in sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.json")):
    d = json.loads(m.read_text())
    rows.append((m.parent.name, d["variant"], d["layers"], d["params"], d["primary_metric"], d["primary_value"],
                 d["data"]["train_rows"], d["train_examples_per_s"]))
print(f"\n{'run':<22}{'variant':<9}{'layers':>6}{'params':>12}  {'metric':<10}{'dev':>8}{'train rows':>12}{'ex/s':>8}")
for r in rows:
    print(f"{r[0]:<22}{r[1]:<9}{r[2]:>6}{r[3]:>12,}  {r[4]:<10}{100 * r[5]:>8.2f}{r[6]:>12}{r[7]:>8.1f}")
PY
