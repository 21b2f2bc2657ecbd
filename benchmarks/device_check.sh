#!/usr/bin/env bash
# One prepared check of the project on a GPU machine, JAX beside PyTorch.
#
#   OUT=/tmp/device_check bash benchmarks/device_check.sh [WHEELS_DIR]
#   SECTIONS="resnet pggan" bash benchmarks/device_check.sh .whl
#   HEAD_CT=/path/to/head_ct SECTIONS="study" bash benchmarks/device_check.sh
#   QUICK=1 bash benchmarks/device_check.sh      # CPU dry run, tiny shapes
#   PYTHON=/path/to/python bash benchmarks/device_check.sh  # default python3
#
# Run from anywhere; it works in the checkout that holds it and needs no
# network. Sections, in this order (SECTIONS picks and orders them; default
# "install main pggan resnet": 357 s whole on one H200 on 2026-11-28, with
# a fresh compilation cache):
#   install  WHEELS_DIR (default .whl) into a temporary folder when grain,
#            ml-collections or tensorflow-datasets are missing (an offline
#            GPU image: see the README's "GPU, TPU and clusters"), with
#            --no-deps, leaving the image's own jax, flax and torch alone.
#   main     the README's main job (configs/pggan.py on the embedded
#            phantoms), wall time.
#   pggan    the PGGAN training loop (pggan_loop.py, K iterations per
#            dispatch) at every
#            resolution 4..256 (PGGAN_RES picks), fmap 8192/512, batch 16,
#            float32, beside the PyTorch twin (pggan_step_torch.py). Its
#            programs compile one after another: all at once they took
#            45-105 s each on an H200, one after another 7-15 s (4..64).
#   pggan_bf16  the same in bfloat16 (PyTorch: bf16 autocast).
#   resnet   ResNet-50 train step at 224x224, batch 128, 3 channels, JAX
#            float32 and bfloat16 (resnet_step.py: each step waited for,
#            and back to back, the compiled step on a batch already on
#            the device, dispatched as a training loop does) and PyTorch
#            channels_last float32 and bf16 autocast (resnet_step_torch.py,
#            one process).
#   train_loop  ResNet-50 at 224x224 in bfloat16, batch 128, in train.py's
#            own loop (main.py --config=configs/resnet.py:paper, arm none,
#            no evaluation or checkpoint before the end; $HEAD_CT's images
#            when set, else the phantoms): 400 steps with batches drawn on
#            the device, then 200 streamed by grain (8 workers); the img/s
#            train.py measured after its first dispatch (which compiles
#            the step) to its last step, from results.json (on an H200:
#            5,997-6,007 img/s drawn, 5,476-5,680 streamed; 33-52 s a
#            run). Grain's workers fill their buffers while the step
#            compiles, so the first streamed steps after it may find
#            their batches ready.
#   loop     the Head CT model of configs/study.py:gpu (fmap 4096/256, ADA,
#            mirroring) in the training loop at 64x64, float32 and bfloat16;
#            then bfloat16 with the penalty on a quarter of each batch
#            (--gp_batch_shrink=4).
#   loop_batch  the loop section's bfloat16 loop at batches 64 and 128
#            (:gpu trains at 32 at 64x64), then at 256 with the penalty on
#            a quarter of each batch: how much of the GPU a bigger
#            per-resolution minibatch would use.
#   targets  the figures issues 8 and 11 set targets for (456 s on one
#            H200, 2026-11-27, the README's table, before the ResNet-50 at
#            batch 512 replaced the one with 1x1 convs as convolutions,
#            now in resnet_tune; the ResNet-50 batches now compile in one
#            process):
#            the Head CT loop (loop's model) at 64x64 in bfloat16 at
#            batches 32 and 128, and float32 at 128; the loop at 256x256
#            (pggan's fmap 8192/512, batch 16, float32) beside the PyTorch
#            step at 256x256 alone; the ResNet-50 step (224x224, batch
#            128) in bfloat16, JAX and PyTorch, then JAX at batches 256
#            and 512.
#   resnet_tune  the JAX ResNet-50 bf16 step in variants aimed at the
#            stem (on an H200, 11 % of the step went to four kernels run
#            once a step: a scatter, the max-pool's gradient; and a
#            convolution, the stem's 7x7 over 3 channels or a strided
#            3x3): the max-pool as 9 strided
#            slices (--max_pool=slices), the input zero-padded to 4
#            channels (--stem_pad_channels=4), each alone and both; each
#            also through jax.jit's call, and traced: the kernels by
#            device time, traces in $OUT/resnet_profile. Then 1x1 convs
#            as convolutions (--nopointwise_dot). On an H200 (98 s with
#            the default step's program cached) none helped: padding left
#            the listed kernels unchanged, the slices took 0.11 ms a
#            step more device time.
#   compile_flags  the loop section's GAN (float32 and bfloat16) under
#            XLA_FLAGS variants that may shorten its compilation (fresh
#            compilation cache each): none, --xla_gpu_autotune_level=1 (no
#            buffer checks while autotuning), and
#            --xla_gpu_enable_triton_gemm=false (no Triton GEMM tilings to
#            autotune). (--xla_gpu_autotune_level=0, no autotuning, made its
#            kernels ~75x slower on an H100.)
#   feed     configs/study.py:gpu's classifier (ResNet-50, 64x64, bf16,
#            batch 64) trained with batches streamed by grain, drawn on
#            the device one and 16 steps per dispatch, and on one fixed
#            batch (compute alone): img/s of each (classifier_feed.py;
#            $HEAD_CT's images when set, else the phantoms).
#   study    one cell (repeat 0, fold 0) of configs/study.py:gpu on
#            $HEAD_CT: its two GANs, their quality metrics and the four
#            classifier arms; wall time, the GANs' metrics.jsonl (SWD and
#            MS-SSIM against kimg), quality, G_ema grids and synthetic
#            images packed into $OUT/study_cell_<STUDY_RES>.tgz.
#            STUDY_RES=128 grows the GANs one stage further (to
#            128x128, 112 kimg; quality metrics at 128x128, the
#            classifier still at 64x64; raise LIMIT_study:
#            the 64x64 cell took 364 s on an H100 with a fresh
#            compilation cache, 226 s of it in its first GAN; at 128x128
#            on an H200 the two GANs, the sampling and the quality step
#            took 391 + 47 + 8 + 47 s with LIMIT_study=555 and
#            STUDY_ARGS="--config.arms=('gan',)", whose one arm the limit
#            cut; where a limit cuts the quality step, the packed
#            samples and splits let the quality CLI measure them
#            elsewhere, the fold's training and test images as real_dir
#            and real_heldout_dir);
#            STUDY_ARGS adds overrides (--config.a.b=v ..., split on
#            blanks). STUDY_WORKDIR keeps the study's workdir there
#            (relative to the checkout's root; default: a temporary
#            folder, removed at the end), so that a second call on a
#            machine still warm resumes a cell its limit cut: e.g.
#            runs/cell, a folder of the checkout that git
#            ignores (and, where the machine keeps its home folder, the
#            study's compilation cache ~/.cache/pggan_jax stays too).
# img/s everywhere; TFLOP/s from convolution + matmul FLOPs counted from
# the jaxprs (benchmarks/flops.py). Each step has a time limit (seconds,
# LIMIT_<section> overrides) and the script goes on after a failed or
# timed-out step; all output is also in $OUT/device_check.log. float32 on
# a GPU is XLA's default precision (TF32 convolutions and matmuls), and the
# PyTorch twins turn TF32 on to match.
set -uo pipefail
abs() { (mkdir -p "$1" && cd "$1" && pwd); }   # before the cd below
OUT=$(abs "${OUT:-/tmp/device_check}") || exit 2
WHEELS=${1:-}
[ -n "$WHEELS" ] && { WHEELS=$(cd "$WHEELS" && pwd) || exit 2; }
[ -n "${HEAD_CT:-}" ] && { HEAD_CT=$(cd "$HEAD_CT" && pwd) || exit 2; }
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${WHEELS:-$ROOT/.whl}
SECTIONS=${SECTIONS:-install main pggan resnet}
QUICK=${QUICK:-0}
PYTHON=${PYTHON:-python3}
LOG=$OUT/device_check.log
TMPW=$(mktemp -d)
trap 'rm -rf "$TMPW"' EXIT
export PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$TMPW/jax_cache}

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: runs CMD under `timeout`, logs, reports rc and s.
step() {
  local name=$1 limit=$2
  shift 2
  say "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 30 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: rc=$rc, $((SECONDS - t0)) s"
}

have_torch() { "$PYTHON" -c 'import torch' 2>/dev/null; }

if [ "$QUICK" = 1 ]; then    # shapes for a CPU dry run of this script
  RES=4,8,16; BIG="--fmap_base=64 --fmap_max=16"; K=1; DISP=1
  RN_RES=32; RN_BATCH=4; RN="--model=resnet18 --num_filters=8"
  HC="--fmap_base=64 --fmap_max=16"; HC_BATCH=8; HC_RES=16; HC_K=1
else
  RES=${PGGAN_RES:-4,8,16,32,64,128,256}; BIG="--fmap_base=8192 --fmap_max=512"; K=8
  DISP=4; RN_RES=224; RN_BATCH=128; RN="--model=resnet50"
  HC="--fmap_base=4096 --fmap_max=256"; HC_BATCH=32; HC_RES=64; HC_K=16
fi

section_install() {
  if "$PYTHON" -c 'import grain, ml_collections, tensorflow_datasets' \
      2>/dev/null; then
    say "install: nothing missing"
    return
  fi
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    say "install: grain/ml-collections/tensorflow-datasets missing and no" \
        "wheels in $WHEELS"
    return
  fi
  step install "${LIMIT_install:-120}" "$PYTHON" -m pip install -q --no-index \
      --no-deps --no-compile --target "$TMPW/site" "$WHEELS"/*.whl
  export PYTHONPATH=$TMPW/site:$PYTHONPATH
}

section_main() {
  local extra=()
  [ "$QUICK" = 1 ] && extra=(--config.total_kimg=0.2)
  step main "${LIMIT_main:-150}" "$PYTHON" main.py --config=configs/pggan.py \
      --workdir="$TMPW/main" ${extra[@]+"${extra[@]}"}
  # Per tick: kimg, img/s, time_s and compile_s (where the time went).
  cp "$TMPW/main/metrics.jsonl" "$OUT/main_metrics.jsonl" 2>/dev/null
}

pggan_pair() {  # DTYPE: the JAX loop and the PyTorch step at every res
  local dt=$1
  step pggan_jax_$dt "${LIMIT_pggan:-180}" "$PYTHON" benchmarks/pggan_loop.py \
      --res=$RES $BIG --batch=16 --k=$K --dispatches=$DISP --dtypes=$dt
  if have_torch; then
    step pggan_torch_$dt "${LIMIT_pggan_torch:-75}" "$PYTHON" \
        benchmarks/pggan_step_torch.py $BIG --max_res=${RES##*,} --batch=16 \
        --iters=$(((K * DISP + 1) / 2)) --dtype=$dt
  else
    say "pggan: torch not installed, no PyTorch twin"
  fi
}

section_pggan() { pggan_pair float32; }

section_pggan_bf16() { pggan_pair bfloat16; }

# headct_loop NAME LIMIT BATCH DTYPES [ARGS...]: the Head CT model of
# configs/study.py:gpu in the training loop at HC_RES.
headct_loop() {
  local name=$1 limit=$2 batch=$3 dtypes=$4
  shift 4
  step "$name" "$limit" "$PYTHON" benchmarks/pggan_loop.py --res=$HC_RES $HC \
      --batch=$batch --k=$HC_K --dispatches=$DISP --dtypes=$dtypes --mirror \
      --ada "$@"
}

# resnet_jax NAME LIMIT DTYPE [ARGS...]: the JAX ResNet-50 train step
# (--batch_size=RN_BATCH unless ARGS give another).
resnet_jax() {
  local name=$1 limit=$2 dt=$3
  shift 3
  step "$name" "$limit" "$PYTHON" benchmarks/resnet_step.py $RN \
      --resolution=$RN_RES --batch_size=$RN_BATCH --channels=3 --dtype=$dt \
      --steps=10 --warmup=3 "$@"
}

# resnet_torch DTYPES: its PyTorch twin (channels_last), one process.
resnet_torch() {
  step "resnet_torch[$1]" "${LIMIT_resnet_torch:-75}" "$PYTHON" \
      benchmarks/resnet_step_torch.py --resolution=$RN_RES \
      --batch_size=$RN_BATCH --channels=3 --channels_last --dtype=$1 \
      --steps=10 --warmup=3
}

section_resnet() {
  resnet_jax resnet_jax "${LIMIT_resnet:-90}" float32,bfloat16 --steps=30
  if have_torch; then resnet_torch float32,bfloat16; fi
}

section_resnet_tune() {
  resnet_jax resnet_jax_bf16_variants "${LIMIT_resnet_tune:-180}" bfloat16 \
      --max_pool=window,slices --stem_pad_channels=0,4 --steps=30 \
      --jit_call --profile_dir="$OUT/resnet_profile"
  resnet_jax resnet_jax_bf16_conv1x1 "${LIMIT_resnet_tune:-90}" bfloat16 \
      --nopointwise_dot
}

# ResNet-50 in train.py's own loop: main.py with configs/resnet.py:paper
# (224x224, bfloat16) at batch RN_BATCH, arm none, no evaluation or
# checkpoint before the end; batches drawn on the device (16 steps a
# dispatch; 400 steps), then streamed by grain (8 workers, one step a
# dispatch; 200 steps).
section_train_loop() {
  local data=() small=() mode n kimg workers=8 drawn=400 streamed=200
  [ -n "${HEAD_CT:-}" ] && data=(--config.data.name=head_ct
      --config.data.dir="$HEAD_CT")
  [ "$QUICK" = 1 ] && { workers=2 drawn=8 streamed=8
      small=(--config.model=_resnet1 --config.num_filters=4
      --config.data.storage_size=32 --config.data.resolution=32); }
  for mode in yes no; do
    n=$([ $mode = yes ] && echo $drawn || echo $streamed)  # steps
    kimg=$(awk "BEGIN { print $n * $RN_BATCH / 1000 }")
    step "train_loop[data_on_device=$mode]" "${LIMIT_train_loop:-150}" \
        "$PYTHON" main.py --config=configs/resnet.py:paper \
        --workdir="$TMPW/train_loop_$mode" --config.arm=none \
        --config.batch_size=$RN_BATCH --config.kimg=$kimg \
        --config.eval_every_steps=0 --config.checkpoint_every_steps=1000000 \
        --config.data_on_device=$mode --config.data.num_workers=$workers \
        ${data[@]+"${data[@]}"} ${small[@]+"${small[@]}"}
    if [ ! -f "$TMPW/train_loop_$mode/results.json" ]; then
      say "train_loop[data_on_device=$mode]: no results.json"
      continue
    fi
    "$PYTHON" -c 'import json, sys
r = json.load(open(sys.argv[1]))
n, how, ips, sec = (r[k] for k in ("steps", "batches",
                                   "train_images_per_second", "train_seconds"))
print(f"train_loop[data_on_device={sys.argv[2]}]: {n} steps of "
      f"{sys.argv[3]}, batches {how}: {ips} img/s after the first "
      f"dispatch, {sec} s training")' \
        "$TMPW/train_loop_$mode/results.json" $mode $RN_BATCH 2>&1 \
        | tee -a "$LOG"
  done
}

section_loop() {
  headct_loop loop_headct "${LIMIT_loop:-150}" $HC_BATCH float32,bfloat16
  local shrink=4
  [ "$QUICK" = 1 ] && shrink=2   # batch 8: whole groups of 4
  headct_loop loop_headct_gp_shrink$shrink "${LIMIT_loop:-150}" $HC_BATCH \
      bfloat16 --gp_batch_shrink=$shrink
}

section_loop_batch() {
  local b
  for b in $((2 * HC_BATCH)) $((4 * HC_BATCH)); do
    headct_loop loop_headct_batch$b "${LIMIT_loop:-150}" $b bfloat16
  done
  b=$((8 * HC_BATCH))
  headct_loop loop_headct_batch${b}_gp_shrink4 "${LIMIT_loop:-150}" $b \
      bfloat16 --gp_batch_shrink=4
}

section_targets() {
  local big=256 big_k=$K
  [ "$QUICK" = 1 ] && big=16
  headct_loop "target_loop_headct[batch $((4 * HC_BATCH))]" \
      "${LIMIT_loop:-150}" $((4 * HC_BATCH)) bfloat16,float32
  headct_loop "target_loop_headct[batch $HC_BATCH]" "${LIMIT_loop:-150}" \
      $HC_BATCH bfloat16
  step target_pggan_jax_$big "${LIMIT_pggan:-180}" "$PYTHON" \
      benchmarks/pggan_loop.py --res=$big $BIG --batch=16 --k=$big_k \
      --dispatches=$DISP --dtypes=float32
  if have_torch; then
    step target_pggan_torch_$big "${LIMIT_pggan_torch:-75}" "$PYTHON" \
        benchmarks/pggan_step_torch.py $BIG --min_res=$big --max_res=$big \
        --batch=16 --iters=$(((big_k * DISP + 1) / 2)) --dtype=float32
    resnet_torch bfloat16
  fi
  resnet_jax target_resnet_jax_bfloat16 "${LIMIT_resnet:-150}" bfloat16 \
      --batch_size=$RN_BATCH,$((2 * RN_BATCH)),$((4 * RN_BATCH))
}

section_compile_flags() {
  local flag i=0
  for flag in "" --xla_gpu_autotune_level=1 \
      --xla_gpu_enable_triton_gemm=false; do
    i=$((i + 1))
    XLA_FLAGS="${XLA_FLAGS:-}${flag:+ $flag}" JAX_COMPILATION_CACHE_DIR=$TMPW/cc$i \
        headct_loop "compile_flags[$flag]" \
        "${LIMIT_compile_flags:-${LIMIT_loop:-150}}" $HC_BATCH float32,bfloat16
  done
}

section_feed() {
  local data=() model=(--model=resnet50 --num_filters=64) steps=128
  [ -n "${HEAD_CT:-}" ] && data=(--name=head_ct --dir="$HEAD_CT")
  [ "$QUICK" = 1 ] && { model=(--model=_resnet1 --num_filters=4); steps=8; }
  step feed "${LIMIT_feed:-120}" "$PYTHON" benchmarks/classifier_feed.py \
      ${data[@]+"${data[@]}"} "${model[@]}" --steps=$steps
}

section_study() {
  if [ -z "${HEAD_CT:-}" ]; then
    say "study: set HEAD_CT=/path/to/head_ct to run one study cell"
    return
  fi
  local res=${STUDY_RES:-64} extra=()
  local w=${STUDY_WORKDIR:-$TMPW/study_$res}
  [ "$QUICK" = 1 ] && extra+=(--config.gan.model.fmap_base=64
      --config.gan.model.fmap_max=16
      --config.gan.sched.lod_training_kimg=0.1
      --config.gan.sched.lod_transition_kimg=0.1
      --config.gan.sched.tick_kimg=0.3 --config.gan.checkpoint_kimg=0.3
      --config.classifier.num_filters=8 --config.classifier.num_epochs=1)
  # total_kimg: a stabilise phase at 4x4, then a fade-in and a stabilise
  # phase per further stage (QUICK: 0.1 kimg phases; :gpu's are 8 kimg),
  # and :gpu's 32 kimg last phase: 96 kimg at 64x64, 112 at 128x128 (ADA's
  # speed a tenth of that, as :gpu's).
  case $res in
    64) [ "$QUICK" = 1 ] && extra+=(--config.gan.total_kimg=0.9) ;;
    128) extra+=(--config.data.storage_size=128
        --config.data.synthetic_size=128 --config.gan.model.resolution=128
        --config.gan.sched.minibatch_dict=4:64,8:64,16:64,32:32,64:32,128:16
        --config.gan.total_kimg=$([ "$QUICK" = 1 ] && echo 1.1 || echo 112)
        --config.gan.augment.speed_kimg=11.2) ;;
    *) say "study: STUDY_RES must be 64 or 128, not '$res'"; return ;;
  esac
  local args=()
  read -ra args <<<"${STUDY_ARGS:-}"
  extra+=(${args[@]+"${args[@]}"})
  step study_cell_$res "${LIMIT_study:-480}" "$PYTHON" main.py \
      --config=configs/study.py:gpu --workdir="$w" \
      --config.data.name=head_ct --config.data.dir="$HEAD_CT" \
      --config.shard=0/15 ${extra[@]+"${extra[@]}"}
  # Not the checkpoints; the synthetic images (fold0/samples, a few MB of
  # PNGs) with their manifest, so that their quality can be measured off
  # the GPU when the step limit cuts the quality step.
  (cd "$w" && find . -name checkpoints -prune -o \( -name '*.json*' \
      -o -name '*.png' -o -name '*.csv' -o -name '*.md' \) -size -4096k \
      -print0 \
      | tar czf "$OUT/study_cell_$res.tgz" --null -T -) 2>&1 | tee -a "$LOG"
}

for s in $SECTIONS; do
  declare -F "section_$s" >/dev/null || {
    echo "device_check: unknown section '$s' in SECTIONS" >&2; exit 2; }
done
say "device_check $(date -u +%FT%TZ) sections: $SECTIONS quick=$QUICK"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
for s in $SECTIONS; do
  "section_$s"
done
"$PYTHON" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' 2>&1 | tee -a "$LOG"
say "device_check done in $SECONDS s"
