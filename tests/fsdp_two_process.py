"""Run by tests/test_engines.py under `torchrun --nproc_per_node 2`: FSDP on CPU (gloo), configured as
recipes/accelerate/fsdp.yaml configures accelerate's plugin, wrapping the model as accelerate does.

accelerate itself runs FSDP on GPUs only, so this calls torch's FullyShardedDataParallel with the plugin's policy,
sharding strategy and use_orig_params. `sync_module_states` is off here: accelerate's plugin wants a GPU to set it
up, and both processes build the same seeded model anyway.
argv: a tiny dual encoder's folder, an output folder. Writes report.yaml, initial.pt, reference.pt and model/.
"""

import os
import sys

import torch
import torch.distributed as dist
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from mm_hf.engines import launcher_environment, prepare_for_engine, restore_scalars
from mm_hf.models import build_dual_encoder_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {0: "a", 1: "b", 2: "c"}


def one_step(model, pixel_values, labels):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    optimizer.step()


def main(model_dir: str, out: str):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    os.environ.update(launcher_environment(os.path.join(REPO, "recipes", "accelerate", "fsdp.yaml")))
    os.environ["FSDP_SYNC_MODULE_STATES"] = "false"
    torch.manual_seed(0)
    model = build_dual_encoder_classifier(model_dir, LABELS, head_init="random")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    scalars = prepare_for_engine(model)._mm_hf_fsdp_scalar_parameters  # as build_trainer does
    # The same batch on both processes: FSDP averages their gradients, so one step equals one unsharded step.
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])

    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)  # transformer_auto_wrap_policy over the model's _no_split_modules
    model = FSDP(
        model,
        auto_wrap_policy=plugin.auto_wrap_policy,
        sharding_strategy=plugin.sharding_strategy,
        use_orig_params=plugin.use_orig_params,
        device_id=torch.device("cpu"),
    )
    wrapped = sorted(n.replace("_fsdp_wrapped_module.", "") for n, m in model.named_modules() if isinstance(m, FSDP))
    local = sum(p.numel() for p in model.parameters())  # this process's shard of the (use_orig_params) parameters
    one_step(model, pixel_values, labels)
    # What accelerator.get_state_dict does for FSDP (Trainer.save_model with a full state dict), but without
    # offload_to_cpu: offloading CPU tensors to the CPU crashed FSDP's clone hook (SIGSEGV, torch 2.13).
    with FSDP.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    ):
        state = restore_scalars(model.module, model.state_dict())
    if rank == 0:
        model.module.save_pretrained(os.path.join(out, "model"), state_dict=state)
        reference = build_dual_encoder_classifier(model_dir, LABELS, head_init="random")
        reference.load_state_dict(initial)
        one_step(reference, pixel_values, labels)
        torch.save(initial, os.path.join(out, "initial.pt"))
        torch.save(reference.state_dict(), os.path.join(out, "reference.pt"))
        total = sum(p.numel() for p in reference.parameters())
        with open(os.path.join(out, "report.yaml"), "w") as f:
            yaml.safe_dump({"wrapped": wrapped, "local_fraction": local / total, "scalars": scalars}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
