"""The distributed engines a recipe runs under (accelerate's DDP, FSDP and DeepSpeed; configs in recipes/accelerate/),
and the few things the recipes do differently under a sharding one.

The engine is chosen by `accelerate launch --config_file recipes/accelerate/<engine>.yaml`, never by a recipe flag:
the launcher exports ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED and the Trainer's Accelerator picks them up.
Under FSDP or DeepSpeed ZeRO-3 no process holds the whole model, so saving it is a collective: every process joins
the gather, the main process writes a normal checkpoint (`gather_for_final_save`, `full_state_dict`).
"""

import contextlib
import os

from .errors import UserError

# The environment variable `accelerate launch` sets for each engine its config names (distributed_type).
ENGINE_ENV = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}


def requested_engine() -> str | None:
    """ "FSDP" or "DEEPSPEED" when the accelerate config asked for one, else None (DDP or a single process)."""
    return next((name for name, var in ENGINE_ENV.items() if os.environ.get(var, "false").lower() == "true"), None)


def check_engine(training_args, *, merge_lora: bool = False) -> None:
    """Refuse an engine the run cannot honour, before any data is loaded.

    On CPU, accelerate enables neither FSDP nor DeepSpeed: the processes would silently train as plain DDP
    replicas (accelerate.state only turns them on for GPU-like devices). A LoRA adapter merged by the main process
    alone needs the whole model there, which a sharding engine never gives it.
    """
    engine = requested_engine()
    if engine is None:
        return
    if training_args.use_cpu or training_args.device.type == "cpu":
        raise UserError(
            f"the accelerate config asks for {engine}, which accelerate runs on GPUs only: on CPU this run would be "
            "plain DDP. Launch with --config_file recipes/accelerate/cpu_2proc.yaml (and --use_cpu true) on CPU."
        )
    if merge_lora and weights_sharded(engine):
        raise UserError(
            f"--merge_lora under {engine}: the adapter is merged by the main process, which does not hold the sharded "
            "base weights. Save the adapter (drop --merge_lora) and merge it afterwards with mm_hf.export or peft."
        )


def weights_sharded(engine: str | None) -> bool:
    """Whether the requested engine leaves no process with the whole model: FSDP, or DeepSpeed at ZeRO stage 3."""
    return engine == "FSDP" or (engine == "DEEPSPEED" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


def is_sharded(trainer) -> bool:
    """Whether no single process holds the trained weights: FSDP, or DeepSpeed ZeRO stage 3."""
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def gather_for_final_save(trainer) -> None:
    """Make `Trainer.save_model` write a normal checkpoint at the end of an FSDP run.

    recipes/accelerate/fsdp.yaml saves training checkpoints as sharded state dicts (one file per process: fast,
    and what resuming reads), but `Trainer.save_model` writes the model only with a full state dict, gathered from
    every process. Call on every process before the final save. (DeepSpeed ZeRO-3 gathers its 16-bit weights itself,
    with `zero3_save_16bit_model` in recipes/accelerate/deepspeed_zero3.yaml.)
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")


# Where `prepare_for_engine` records the scalar parameters it reshaped, on the model the Trainer receives.
SCALARS_ATTR = "_mm_hf_fsdp_scalar_parameters"


def prepare_for_engine(model):
    """Under FSDP, give every scalar parameter the shape (1,), in place, before the Trainer wraps `model`.

    FSDP refuses scalar parameters (torch 2.13: "FSDP doesn't support scalar parameters" with use_orig_params, and
    FSDP2's fully_shard likewise), and every CLIP-family model holds one: CLIPModel's logit_scale, the mm-hf cosine
    head's, the sigmoid loss's logit_bias. Broadcasting makes (1,) compute exactly as () does; the names are kept
    so the final save gives them back their shape (`restore_scalars`), and the checkpoint loads as any other.
    Under FSDP or ZeRO-3 a LoRA dual encoder (clip_retrieval, saved merged by the main process) is refused here,
    before training, on every process.
    """
    engine = requested_engine()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    contrastive = hasattr(base, "parts") and base.parts().kind == "contrastive"
    if engine and hasattr(model, "peft_config") and contrastive and weights_sharded(engine):
        raise UserError(
            f"clip_retrieval saves a LoRA dual encoder merged, by the main process, which under {engine} does not "
            "hold the whole base model: train it with DDP (recipes/accelerate/multi_gpu.yaml) or --finetune_strategy "
            "full / lock_image / lock_text."
        )
    if engine != "FSDP":
        return model
    names = []
    for name, param in model.named_parameters():
        if param.ndim == 0:
            param.data = param.data.reshape(1)
            names.append(name)
    setattr(model, SCALARS_ATTR, names)
    return model


def restore_scalars(model, state_dict: dict) -> dict:
    """`state_dict` with the parameters `prepare_for_engine` reshaped back to scalars (keys as `model` names them)."""
    for name in getattr(model, SCALARS_ATTR, ()):
        if name in state_dict:
            state_dict[name] = state_dict[name].reshape(())
    return state_dict


def full_state_dict(trainer) -> dict | None:
    """The trained model's whole state dict (on CPU, scalars restored) when it is sharded over the processes, else
    None (read the unwrapped model). A collective: call on every process; only the main process's dict is complete.
    """
    if not is_sharded(trainer):
        return None
    gather_for_final_save(trainer)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return restore_scalars(trainer.accelerator.unwrap_model(trainer.model), state)


def save_fsdp_model(trainer, output_dir: str) -> None:
    """`Trainer.save_model` for an FSDP run: the full state dict gathered from every process, written by the main
    process with `save_pretrained` (scalars restored, `restore_scalars`), with the processor. Call on every process.
    A LoRA model saves its adapter (peft keeps the adapter's keys of the state dict)."""
    state = full_state_dict(trainer)
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir, state_dict=state)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def full_parameters(trainer):
    """A context in which the trained model's unwrapped modules hold their whole parameters on every process, for
    passes that call a tower directly (retrieval embeddings) rather than the wrapped model's forward: under FSDP
    (once the Trainer has wrapped the model) its full parameters are summoned, under ZeRO-3 gathered (both
    read-only; not run here: the CPU tests have neither engine); otherwise nothing."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if trainer.is_fsdp_enabled and isinstance(trainer.model_wrapped, FSDP):
        return FSDP.summon_full_params(trainer.model_wrapped, writeback=False)
    if trainer.is_deepspeed_enabled and is_sharded(trainer):
        import deepspeed  # only partitioned parameters (ds_id) are gathered: before training there are none

        return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def launcher_environment(config_file: str) -> dict:
    """The ACCELERATE_* / FSDP_* variables `accelerate launch --config_file CONFIG_FILE` exports to each process,
    computed by accelerate's own launcher code without starting anything: what the engine plugins read. For checking
    a config on a machine that cannot run it (tests/test_engines.py, scripts/gpu_smoke.sh's dry run)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # What `accelerate launch` sets before its DeepSpeed launcher (which itself needs deepspeed installed).
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
