#!/usr/bin/env bash
# Retrain and re-evaluate every shipped model, one after another (never two at once on
# 2 cores). `make weights` runs this; `bash weights/train_all.sh ae vae` does just those.
# Logs go to runs/logs/NAME.log. Total on 2 cores: about 5 hours of training (pixelcnn alone: 62 minutes) (the cards add up).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p runs/logs

declare -A RECIPE=(
  [classifier-fashion]="--family classifier --epochs 20 --latent-dim 128"
  [ae-fashion]="--family ae --latent-dim 32 --epochs 40 --batch-size 64 --lr 3e-3"
  [dae-fashion]="--family dae --latent-dim 784 --spatial-code --epochs 32 --batch-size 64 --lr 3e-3 --prior-components 0"
  [vae-fashion]="--family vae --latent-dim 16 --epochs 30 --batch-size 64 --lr 2e-3"
  [gan-fashion]="--family gan --latent-dim 64 --epochs 20 --batch-size 64 --mixture-prior --one-hot-components --class-guidance 1"
  [cvae-fashion]="--family cvae --latent-dim 16 --epochs 12 --batch-size 64 --lr 2e-3"
  [cgan-fashion]="--family cgan --latent-dim 64 --aux-class-weight 1 --epochs 20 --batch-size 64"
  [stacked-ae-fashion]="--family stacked-ae --latent-dim 16 --hidden-sizes 1024,256 --no-tied-weights --pretrain-epochs 2 --epochs 40 --batch-size 64 --lr 1e-3"
  [sparse-ae-fashion]="--family sparse-ae --latent-dim 32 --sparsity-target 0.1 --sparsity-weight 2 --epochs 30 --batch-size 64 --lr 3e-3"
  [pixelcnn-fashion]="--family pixelcnn --epochs 3 --batch-size 32 --lr 1.5e-3 --val-size 2000"
  [made-fashion]="--family made --epochs 15 --batch-size 64 --lr 1e-3 --val-size 2000"
  [rbm-fashion]="--family rbm --latent-dim 500 --epochs 50 --batch-size 64 --optimizer sgd --lr 0.002 --centering --val-size 2000 --chains 1000 --start-components 20"
)
# Further stages, each fine-tuning the previous stage's weights (--init-from), separated by |.
declare -A STAGES=(
  [dae-fashion]="--epochs 16 --lr 1e-3 --seed 1 --prior-components 0|--noise-probs 0.6,0.2,0.2 --epochs 14 --lr 5e-4 --seed 2 --prior-components 0"
  [cvae-fashion]="--consistency-weight 20 --epochs 4 --lr 1e-3 --seed 1"
  [cgan-fashion]="--aux-class-weight 3 --epochs 3 --lr 1e-4 --lr-critic 2e-4 --seed 1"
  [gan-fashion]="--class-guidance 3 --epochs 3 --lr 1e-4 --lr-critic 2e-4 --seed 1|--class-guidance 3 --epochs 3 --lr 5e-5 --lr-critic 1e-4 --seed 2"
)
# After training: the GANs' inverters (amortised inversion), the dae's latent density.
declare -A AFTER=(
  [gan-fashion]="fit-inverter --epochs 16"
  [cgan-fashion]="fit-inverter --width 64 --epochs 24"
  [dae-fashion]="fit-prior"
)
ORDER=(classifier-fashion ae-fashion dae-fashion vae-fashion gan-fashion cvae-fashion cgan-fashion stacked-ae-fashion sparse-ae-fashion pixelcnn-fashion made-fashion rbm-fashion)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")

for name in "${names[@]}"; do
  [ -n "${RECIPE[$name]:-}" ] || { echo "unknown model $name; known: ${ORDER[*]}" >&2; exit 2; }
  echo "== training $name"
  # shellcheck disable=SC2086
  $PY -m training train ${RECIPE[$name]} --dataset fashion-mnist --seed 0 \
      --out "weights/$name" --overwrite --checkpoint-dir "runs/$name" 2>&1 | tee "runs/logs/$name.log"
  if [ -n "${STAGES[$name]:-}" ]; then
    family=$(sed -E 's/.*--family ([^ ]+).*/\1/' <<<"${RECIPE[$name]}")
    stage=1
    IFS='|' read -ra steps <<<"${STAGES[$name]}"
    for args in "${steps[@]}"; do
      stage=$((stage + 1))
      rm -rf "runs/$name-stage$((stage - 1))"
      mv "weights/$name" "runs/$name-stage$((stage - 1))"
      echo "== training $name, stage $stage"
      # shellcheck disable=SC2086
      $PY -m training train --family "$family" --init-from "runs/$name-stage$((stage - 1))" $args \
          --batch-size 64 --dataset fashion-mnist --out "weights/$name" --overwrite \
          --checkpoint-dir "runs/$name-stage$stage-ckpt" 2>&1 | tee "runs/logs/$name.stage$stage.log"
    done
  fi
  if [ -n "${AFTER[$name]:-}" ]; then
    echo "== ${AFTER[$name]} $name"
    # shellcheck disable=SC2086
    $PY -m training ${AFTER[$name]} --model "weights/$name" 2>&1 | tee "runs/logs/$name.${AFTER[$name]%% *}.log"
  fi
done
if [ "${SKIP_EVALUATE:-0}" != 1 ]; then
  for name in "${names[@]}"; do
    echo "== evaluating $name"
    $PY -m training evaluate --model "weights/$name" 2>&1 | tee "runs/logs/$name.eval.log"
  done
fi
