#!/usr/bin/env bash
# Run every shipped accelerate config (recipes/accelerate/) for a few steps on a GPU machine: DDP, a one-machine
# stand-in for the multi-node config, FSDP, DeepSpeed ZeRO-2 and ZeRO-3, each with three recipes (image
# classifier, fusion model, contrastive dual encoder) on the offline demo's tiny models and data.
# What each run must show is in scripts/gpu_smoke.md; this script checks the files, the reload and the log lines.
# Then two one-GPU runs without precision or optimizer flags check the fast paths a GPU run takes by default.
#
#   scripts/gpu_smoke.sh                  # every config x every recipe (~12 runs of 4 steps)
#   ONLY=fsdp scripts/gpu_smoke.sh        # configs whose name contains "fsdp"
#   ONLY=fastpaths scripts/gpu_smoke.sh   # only the GPU defaults check (bf16, fused AdamW, TF32, SDPA, MFU)
#   NPROC=2 WORK=/tmp/smoke scripts/gpu_smoke.sh
#
# Without a GPU it prints "no GPU: nothing run" and exits 0. DeepSpeed configs are skipped (and reported) when
# deepspeed is not installed (pip install deepspeed). Exit status: the number of failed runs.
# PYTHON (default: python) is the environment the recipes and accelerate run in.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d /tmp/mm-hf-gpu-smoke.XXXX)}
ONLY=${ONLY:-}
GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
PRECISION=(--bf16 true)
if [ -n "${SMOKE_CPU:-}" ]; then
    # A check of this script itself on CPU: the DDP configs on 2 gloo processes (FSDP and DeepSpeed are refused
    # on CPU by the recipes, so they are left out).
    GPUS=2; PRECISION=(--use_cpu true); ONLY=${ONLY:-multi}
elif [ "${GPUS:-0}" -lt 1 ]; then
    echo "no GPU: nothing run (scripts/gpu_smoke.sh needs CUDA devices; SMOKE_CPU=1 checks the script on CPU)"
    exit 0
fi
NPROC=${NPROC:-$(( GPUS < 2 ? GPUS : 2 ))}
HAS_DEEPSPEED=$($PYTHON -c "import importlib.util as u; print(int(u.find_spec('deepspeed') is not None))")
mkdir -p "$WORK"
echo "GPUs: $GPUS, processes per run: $NPROC, work folder: $WORK"
$PYTHON -m mm_hf.demo --output_dir "$WORK/assets" > "$WORK/assets.log" 2>&1 || { cat "$WORK/assets.log"; exit 1; }
A="$WORK/assets"
COMMON=(--max_steps 4 --save_strategy steps --save_steps 2 --save_total_limit 2 --logging_steps 1 "${PRECISION[@]}"
        --report_to none --disable_tqdm true --overwrite_output_dir true --dataloader_num_workers 0)
declare -A RECIPE_ARGS=(
    [clip_imagecls]="--model_name_or_path $A/tiny-dual-encoder --train_dir $A/digits/train --validation_dir $A/digits/validation --test_dir $A/digits/test --do_train --do_eval --do_predict --finetune_strategy full --head_init random --per_device_train_batch_size 8 --per_device_eval_batch_size 32"
    [fusion_imagetext_cls]="--config recipes/configs/fusion_imagetext_cls_demo.yaml --vision_model_name_or_path $A/tiny-vit --text_model_name_or_path $A/text-encoder --train_file $A/fusion/xor/train.jsonl --validation_file $A/fusion/xor/validation.jsonl --test_file $A/fusion/xor/test.jsonl --text_strategy full --per_device_train_batch_size 8"
    [clip_retrieval]="--config recipes/configs/clip_retrieval_demo.yaml --model_name_or_path $A/tiny-dual-encoder --train_dir $A/digits/train --validation_dir $A/digits/validation --test_dir $A/digits/test --zeroshot_eval_dir $A/digits/test --finetune_strategy full --per_device_train_batch_size 8"
)
# multi_node.yaml needs a second machine: here its process group forms on this one (--num_machines 1).
declare -A LAUNCH_ARGS=(
    [multi_gpu]="" [multi_node]="--num_machines 1 --machine_rank 0 --main_process_ip 127.0.0.1"
    [fsdp]="" [deepspeed_zero2]="" [deepspeed_zero3]=""
)
failed=0
summary=()
for config in multi_gpu multi_node fsdp deepspeed_zero2 deepspeed_zero3; do
    [[ -n "$ONLY" && "$config" != *"$ONLY"* ]] && continue
    if [[ "$config" == deepspeed* && "$HAS_DEEPSPEED" != 1 ]]; then
        summary+=("SKIP  $config (deepspeed not installed)"); continue
    fi
    for recipe in clip_imagecls fusion_imagetext_cls clip_retrieval; do
        out="$WORK/$config/$recipe"; mkdir -p "$out"; log="$out.log"
        start=$(date +%s)
        # shellcheck disable=SC2086
        $PYTHON -m accelerate.commands.launch --config_file "recipes/accelerate/$config.yaml" --num_processes "$NPROC" \
            --main_process_port $((29500 + RANDOM % 1000)) ${LAUNCH_ARGS[$config]} "recipes/$recipe.py" \
            ${RECIPE_ARGS[$recipe]} --output_dir "$out" "${COMMON[@]}" > "$log" 2>&1
        rc=$?
        seconds=$(( $(date +%s) - start ))
        check=$($PYTHON scripts/gpu_smoke_check.py "$config" "$recipe" "$out" "$log" "$rc" "$NPROC" 2>&1)
        if [ $? -eq 0 ]; then
            summary+=("OK    $config $recipe (${seconds}s): $check")
        else
            summary+=("FAIL  $config $recipe (${seconds}s, exit $rc): $check [log: $log]"); failed=$((failed + 1))
        fi
    done
done
# The fast paths a plain one-GPU run takes by itself (mm_hf/fastpaths.py): no --bf16/--optim/--tf32 given, so the
# run must pick bf16 autocast, fused AdamW, TF32 and SDPA, and report train_flops_per_sample and train_mfu.
if [[ -z "$ONLY" || "fastpaths" == *"$ONLY"* ]] && [ -z "${SMOKE_CPU:-}" ]; then
    for recipe in clip_imagecls fusion_imagetext_cls; do
        out="$WORK/fastpaths/$recipe"; mkdir -p "$out"; log="$out.log"
        start=$(date +%s)
        # shellcheck disable=SC2086
        # One GPU: a plain python run sees every visible GPU and Trainer would wrap the model in DataParallel.
        CUDA_VISIBLE_DEVICES=$(echo "${CUDA_VISIBLE_DEVICES:-0}" | cut -d, -f1) $PYTHON "recipes/$recipe.py" ${RECIPE_ARGS[$recipe]} \
            --output_dir "$out" --max_steps 20 --logging_steps 5 --save_strategy no --report_to none \
            --disable_tqdm true --overwrite_output_dir true --dataloader_num_workers 0 > "$log" 2>&1
        rc=$?
        seconds=$(( $(date +%s) - start ))
        check=$($PYTHON scripts/gpu_smoke_check.py fastpaths "$recipe" "$out" "$log" "$rc" 1 2>&1)
        if [ $? -eq 0 ]; then
            summary+=("OK    fastpaths $recipe (${seconds}s): $check")
        else
            summary+=("FAIL  fastpaths $recipe (${seconds}s, exit $rc): $check [log: $log]"); failed=$((failed + 1))
        fi
    done
fi
printf '%s\n' "${summary[@]}"
exit $failed
