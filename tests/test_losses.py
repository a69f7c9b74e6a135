"""mm_hf.models.losses: CLIP / SigLIP losses match transformers on one process, and with gathered negatives a
2-process DDP run (gloo on CPU) reproduces the single-process loss and gradients on the global batch, also
with CLAP's two temperatures."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mm_hf.models.losses import clip_loss, gather_with_grad, siglip_loss

GLOBAL_BATCH, WORLD_SIZE, IMAGE_DIM, TEXT_DIM, EMBED_DIM = 8, 2, 6, 5, 4
LOSSES = ("clip", "siglip", "clap")  # clap: clip_loss with one temperature per direction
CASES = [(loss, gather) for loss in LOSSES for gather in (True, False)]


# ---------------------------------------------------------------- single process vs transformers


def test_clip_loss_matches_transformers_formula():
    from transformers.models.clip import modeling_clip

    # transformers 5 renamed `clip_loss` to `image_text_contrastive_loss` (same body: mean of both CEs).
    hf_clip_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    image, text = torch.randn(GLOBAL_BATCH, EMBED_DIM), torch.randn(GLOBAL_BATCH, EMBED_DIM)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    image_n, text_n = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = hf_clip_loss(logit_scale.exp() * text_n @ image_n.T)
    torch.testing.assert_close(clip_loss(image, text, logit_scale), expected)
    torch.testing.assert_close(clip_loss(image, text, logit_scale, gather=False), expected)


def _tiny_text_vision(config_cls, text_cls, vision_cls):
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = text_cls(vocab_size=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, **sizes)
    vision = vision_cls(image_size=8, patch_size=4, **sizes)
    return config_cls(text_config=text.to_dict(), vision_config=vision.to_dict())


def test_losses_match_transformers_models():
    """The `loss` of real (tiny) CLIPModel / SiglipModel forwards, recomputed from their embeddings."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        SiglipConfig,
        SiglipModel,
        SiglipTextConfig,
        SiglipVisionConfig,
    )

    inputs = dict(input_ids=torch.randint(0, 32, (4, 5)), pixel_values=torch.randn(4, 3, 8, 8), return_loss=True)
    clip = CLIPModel(_tiny_text_vision(CLIPConfig, CLIPTextConfig, CLIPVisionConfig)).eval()
    out = clip(**inputs)
    torch.testing.assert_close(clip_loss(out.image_embeds, out.text_embeds, clip.logit_scale), out.loss)

    siglip = SiglipModel(_tiny_text_vision(SiglipConfig, SiglipTextConfig, SiglipVisionConfig)).eval()
    with torch.no_grad():  # move away from the symmetric default init so a wrong normalisation shows
        siglip.logit_scale.fill_(math.log(7.0))
        siglip.logit_bias.fill_(-1.5)
    out = siglip(**inputs)
    torch.testing.assert_close(
        siglip_loss(out.image_embeds, out.text_embeds, siglip.logit_scale, siglip.logit_bias), out.loss
    )


def test_siglip_loss_matches_transformers_formula():
    image, text = torch.randn(GLOBAL_BATCH, EMBED_DIM), torch.randn(GLOBAL_BATCH, EMBED_DIM)
    logit_scale, logit_bias = torch.tensor(math.log(10.0)), torch.tensor(-3.0)
    image_n, text_n = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    # Copied from SiglipModel.forward (transformers 5.23).
    logits_per_text = text_n @ image_n.T * logit_scale.exp() + logit_bias
    eye = torch.eye(logits_per_text.size(0))
    m1_diag1 = -torch.ones_like(logits_per_text) + 2 * eye
    expected = -torch.sum(torch.nn.functional.logsigmoid(m1_diag1 * logits_per_text), dim=-1).mean()
    torch.testing.assert_close(siglip_loss(image, text, logit_scale, logit_bias), expected)


def test_aligned_embeddings_give_near_zero_loss():
    embeds = torch.eye(GLOBAL_BATCH)  # orthonormal, image i == text i
    assert clip_loss(embeds, 3 * embeds, torch.tensor(math.log(100.0))) < 1e-20
    assert siglip_loss(embeds, embeds, torch.tensor(math.log(1000.0)), torch.tensor(-500.0)) < 1e-20


def test_clip_logit_scale_is_clamped_at_100():
    image, text = torch.randn(GLOBAL_BATCH, EMBED_DIM), torch.randn(GLOBAL_BATCH, EMBED_DIM)
    logit_scale = nn.Parameter(torch.tensor(math.log(500.0)))
    loss = clip_loss(image, text, logit_scale)
    loss.backward()
    torch.testing.assert_close(loss, clip_loss(image, text, torch.tensor(math.log(100.0))))
    assert logit_scale.grad == 0


def test_two_temperatures_scale_one_direction_each():
    """CLAP: logits_per_image scaled by `logit_scale` (its logit_scale_a), logits_per_text by `text_logit_scale`."""
    image, text = torch.randn(GLOBAL_BATCH, EMBED_DIM), torch.randn(GLOBAL_BATCH, EMBED_DIM)
    scale_a, scale_t = nn.Parameter(torch.tensor(math.log(20.0))), nn.Parameter(torch.tensor(math.log(5.0)))
    loss = clip_loss(image, text, scale_a, text_logit_scale=scale_t)
    image_n, text_n = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    labels = torch.arange(GLOBAL_BATCH)
    expected = (
        F.cross_entropy(20.0 * image_n @ text_n.T, labels) + F.cross_entropy(5.0 * text_n @ image_n.T, labels)
    ) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert scale_a.grad != 0 and scale_t.grad != 0
    same = clip_loss(image, text, torch.tensor(2.0), text_logit_scale=torch.tensor(2.0))
    torch.testing.assert_close(same, clip_loss(image, text, torch.tensor(2.0)))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="batch, dim"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), torch.tensor(1.0))


# ---------------------------------------------------------------- 2 processes (DDP) vs 1 process


class TinyDualEncoder(nn.Module):
    """Two linear "towers" and the learnable temperature (+ bias for SigLIP, + a text->image temperature for
    CLAP); forward returns the loss."""

    def __init__(self, loss: str):
        super().__init__()
        self.loss = loss
        self.image_tower = nn.Linear(IMAGE_DIM, EMBED_DIM)
        self.text_tower = nn.Linear(TEXT_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07) if loss == "clip" else math.log(10.0)))
        if loss == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(-2.0))
        if loss == "clap":
            self.logit_scale_t = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, pixel_values, text_features, gather: bool = True):  # (b, IMAGE_DIM), (b, TEXT_DIM) -> ()
        image, text = self.image_tower(pixel_values), self.text_tower(text_features)
        if self.loss == "clip":
            return clip_loss(image, text, self.logit_scale, gather=gather)
        if self.loss == "clap":
            return clip_loss(image, text, self.logit_scale, gather=gather, text_logit_scale=self.logit_scale_t)
        return siglip_loss(image, text, self.logit_scale, self.logit_bias, gather=gather)


def _model(loss: str) -> TinyDualEncoder:
    torch.manual_seed(0)  # identical init on every rank and in the single-process reference
    return TinyDualEncoder(loss).double()  # float64: rounding cannot get near the 1e-6 tolerance


def _global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, IMAGE_DIM, generator=g, dtype=torch.float64)
    texts = torch.randn(GLOBAL_BATCH, TEXT_DIM, generator=g, dtype=torch.float64)
    return images, texts


def _loss_and_grads(model, images, texts, gather):
    loss = model(images, texts, gather=gather)
    loss.backward()
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile's wrapper
    return loss.detach(), {name: p.grad.clone() for name, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        images, texts = _global_batch()
        local = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        for loss, gather in CASES:
            ddp = nn.parallel.DistributedDataParallel(_model(loss))  # averages gradients over ranks
            results[loss, gather] = _loss_and_grads(ddp, images[local], texts[local], gather)
        # fullgraph: the gather must be traced into the graph (the deprecated torch.distributed.nn all_gather
        # breaks it); aot_eager traces forward and backward like inductor without its C++ compile.
        compiled = torch.compile(_model("clip"), backend="aot_eager", fullgraph=True)
        results["compiled"] = _loss_and_grads(
            nn.parallel.DistributedDataParallel(compiled), images[local], texts[local], True
        )
        results["gathered"] = gather_with_grad(torch.full((2, 3), float(rank)))
        try:
            gather_with_grad(torch.zeros(4 - rank, 3))  # sizes 4 and 3
        except ValueError as error:
            results["unequal_error"] = str(error)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Run all cases in one 2-process spawn (process start-up dominates the cost); results per rank."""
    out_dir = tmp_path_factory.mktemp("losses_ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("loss", LOSSES)
def test_gathered_ddp_equals_single_process(two_process_results, loss):
    images, texts = _global_batch()
    expected_loss, expected_grads = _loss_and_grads(_model(loss), images, texts, gather=False)
    for rank_results in two_process_results:  # every rank computes the same global loss and gradients
        ddp_loss, ddp_grads = rank_results[loss, True]
        torch.testing.assert_close(ddp_loss, expected_loss, rtol=0, atol=1e-6)
        assert ddp_grads.keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(ddp_grads[name], grad, rtol=0, atol=1e-6, msg=f"{loss}: grad of {name}")


def test_gathered_loss_compiles_into_one_graph(two_process_results):
    """torch.compile(fullgraph=True) of the model: same loss and gradients as eager on the global batch."""
    images, texts = _global_batch()
    expected_loss, expected_grads = _loss_and_grads(_model("clip"), images, texts, gather=False)
    for rank_results in two_process_results:
        loss, grads = rank_results["compiled"]
        torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-6, msg=f"grad of {name}")


@pytest.mark.parametrize("loss", LOSSES)
def test_per_device_loss_differs_from_single_process(two_process_results, loss):
    """Without gathering (transformers' behaviour) DDP optimises a different objective: the test can fail."""
    images, texts = _global_batch()
    _, expected_grads = _loss_and_grads(_model(loss), images, texts, gather=False)
    _, ddp_grads = two_process_results[0][loss, False]
    diff = max((ddp_grads[name] - grad).abs().max().item() for name, grad in expected_grads.items())
    assert diff > 1e-3


def test_gather_with_grad_concatenates_in_rank_order(two_process_results):
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    for rank_results in two_process_results:
        torch.testing.assert_close(rank_results["gathered"], expected)


def test_unequal_batch_sizes_raise_on_every_rank(two_process_results):
    for rank_results in two_process_results:
        message = rank_results.get("unequal_error", "")
        assert "[4, 3]" in message and "dataloader_drop_last" in message


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
