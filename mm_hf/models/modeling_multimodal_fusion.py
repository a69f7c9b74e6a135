"""Multimodal fusion: one pretrained encoder per modality -> pooling -> projection -> fusion -> task heads.

    image  (B, 3, H, W)    -> vision encoder -> spatial pooling over patches              -> Linear+LN -> (B, D)
    video  (B, T, 3, H, W) -> vision encoder per frame -> spatial pooling -> Linear+LN -> temporal pooling -> (B, D)
    text   (B, L) ids      -> text encoder -> pooling over tokens (masked)                -> Linear+LN -> (B, D)
    audio  (B, S) or mel   -> audio encoder -> pooling over frames (masked)               -> Linear+LN -> (B, D)
    tabular numeric/categorical -> TabularEncoder                                                    -> (B, D)
    tokens (B, M, D), present (B, M) -> fusion -> heads (one per task)

Before a frozen encoder's Linear+LN projection its pooled features are standardised per feature with statistics of
the training data (`FeatureStandardizer`, saved with the model; identity for encoders that train). A frozen encoder's part (encoder + parameter-free
pooling) can be computed once and passed back as `<modality>_embeds` (see `encoder_features`).

A missing modality (`modality_mask` 0) is replaced by a learned placeholder token; fusions that can mask
(gated, cross-attention, late) also ignore it. Self-contained on purpose (torch/transformers plus the sibling
configuration, fusion_modules and pooling files) so `save_pretrained` ships it for `trust_remote_code=True` loading.
"""

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_multimodal_fusion import MultimodalFusionConfig, num_outputs
from .fusion_modules import FeatureStandardizer, ModalityDropout, TabularEncoder, build_fusion
from .modeling_audio_classifier import audio_frame_mask, reads_attention_mask
from .pooling import build_pooling
from .towers import NO_SPLIT_MODULES, ModelParts, describe_tower


@dataclass
class MultimodalFusionOutput(ModelOutput):
    """fused (B, out_dim) (None for late fusion), tokens (B, M, D) per-modality vectors, present (B, M) bool."""

    fused: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    present: torch.Tensor | None = None


@dataclass
class MultimodalClassifierOutput(ModelOutput):
    """loss (scalar, weighted sum over tasks), logits (B, outputs) for one task or a tuple in task order."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | tuple[torch.Tensor, ...] | None = None


def encoder_width(config) -> int:
    """Width of an encoder's hidden states (`hidden_size`, or `d_model` for Whisper-style configs)."""
    for name in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"cannot tell the hidden width of {type(config).__name__}")


def encoder_class(config) -> type:
    """The standalone model class of an encoder config: AutoModel's, or for towers AutoModel does not map
    (e.g. ClapAudioConfig) the transformers class named after the config (ClapAudioModel)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if type(config) in MODEL_MAPPING:
        return MODEL_MAPPING[type(config)]
    name = type(config).__name__.removesuffix("Config") + "Model"
    if not hasattr(transformers, name):
        raise ValueError(f"no model class for encoder config {type(config).__name__}")
    return getattr(transformers, name)


def build_encoder(config) -> nn.Module:
    """A randomly initialised encoder for `config`: encoder-decoder models (Whisper) keep only their encoder."""
    model = encoder_class(config)(config)
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


class SequencePooling(nn.Module):
    """An encoder output -> one vector: "pooler" reads the encoder's own pooled output, "cls" token 0, the other
    kinds (mean, max, attention, transformer) pool `last_hidden_state` over its real positions.

    Shapes: last_hidden_state (B, N, H) (or a (B, H, h, w) feature map), mask (B, N) or None -> (B, H).
    Split in two for caching a frozen encoder: `encoder_side` is what depends on the encoder alone (the pooled
    vector for a parameter-free pooling, the token states and their mask for a learned one), `pool_cached`
    finishes the job on that (identity, or the learned pooling).
    """

    def __init__(self, kind: str, width: int, num_heads: int = 4, max_length: int = 512):
        super().__init__()
        self.kind = kind
        kwargs = {"num_heads": num_heads, "max_length": max_length} if kind == "transformer" else {}
        self.pool = None if kind == "pooler" else build_pooling(kind, width, **kwargs)

    @property
    def learned(self) -> bool:
        """Whether the pooling has parameters (attention, transformer): then a cache must hold token states."""
        return self.pool is not None and any(True for _ in self.pool.parameters())

    def _hidden(self, outputs, mask):
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # a feature map (B, C, H, W), e.g. CLAP's HTSAT or a CNN: its positions as tokens
            hidden = hidden.flatten(2).transpose(1, 2)
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            mask = None  # the mask does not map onto the encoder's positions (e.g. patches, fixed windows)
        return hidden, mask

    def encoder_side(self, outputs, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H) pooled and None for a parameter-free pooling; (B, N, H) token states and their mask otherwise."""
        if self.learned:
            return self._hidden(outputs, mask)
        return self(outputs, mask), None

    def pool_cached(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What `encoder_side` returned -> (B, H)."""
        return self.pool(features, mask) if self.learned else features

    def forward(self, outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pool is None:
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise ValueError("pooling='pooler' needs an encoder with a pooled output; use mean, cls or attention")
            return pooled
        return self.pool(*self._hidden(outputs, mask))


def audio_input_name(encoder: nn.Module) -> str:
    """The keyword an audio encoder reads its input under (some declare a main_input_name their forward lacks)."""
    parameters = inspect.signature(encoder.forward).parameters
    for name in (encoder.main_input_name, "input_values", "input_features"):
        if name in parameters:
            return name
    return encoder.main_input_name


def mark_fusion_part(module: nn.Module) -> nn.Module:
    """Flag every submodule of a fusion part (pooling, projection, fusion, head) for PyTorch's default init."""
    for sub in module.modules():
        sub._fusion_part = True
    return module


def drop_unused_pooler(encoder: nn.Module, poolings: list[str]) -> nn.Module:
    """Remove an encoder's own pooler (BERT, ViT) when no modality reads it: its weights would never get a
    gradient (dead parameters, and a DDP error without find_unused_parameters)."""
    if "pooler" not in poolings and isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None
    return encoder


def _projection(width: int, hidden_size: int, dropout: float) -> nn.Module:
    # LayerNorm puts every modality on one scale before fusion, so no encoder dominates concat or gates by magnitude.
    return nn.Sequential(nn.Linear(width, hidden_size), nn.LayerNorm(hidden_size), nn.Dropout(dropout))


class MultimodalFusionPreTrainedModel(PreTrainedModel):
    config_class = MultimodalFusionConfig
    base_model_prefix = "multimodal"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text", "audio")
    supports_gradient_checkpointing = True
    # The loss is a per-batch mean: Trainer must average it itself instead of treating it as normalised.
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _no_split_modules = NO_SPLIT_MODULES  # the towers' blocks, for FSDP auto-wrap (towers.no_split_modules)

    @torch.no_grad()
    def _init_weights(self, module):
        if getattr(module, "_fusion_part", False):
            # Fusion parts are small, freshly trained layers: PyTorch's fan-in scaled init, not the 0.02 normal
            # meant for large pretrained transformers (which starts them so close to zero that learning stalls).
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            return
        super()._init_weights(module)
        if isinstance(module, MultimodalFusionModel):
            module.missing_tokens.normal_(std=0.02)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        # transformers v5 renames some encoders' weights when saving (e.g. ViT back to its v4 names), but Trainer
        # reloads checkpoints with a plain `load_state_dict` (load_best_model_at_end, resume), which would then
        # silently miss every renamed weight. Saving the live names keeps both paths exact.
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)


class MultimodalFusionModel(MultimodalFusionPreTrainedModel):
    """Encoders + pooling + projections + missing-modality placeholders + modality dropout + fusion.

    Inputs (only those of `config.modalities` are needed): pixel_values (B, 3, H, W), pixel_values_videos
    (B, T, 3, H, W), input_ids / attention_mask (B, L) (+ token_type_ids), input_values (B, S) or input_features
    (B, ...) with audio_attention_mask (B, S), numeric_values (B, F) (NaN = missing value), categorical_ids (B, C)
    (0 = unknown), modality_mask (B, M) in `config.modalities` order (1 = present; default all present).
    """

    def __init__(self, config: MultimodalFusionConfig):
        super().__init__(config)
        config.check()
        d = config.hidden_size
        self.modalities = list(config.modalities)
        self.encoders = nn.ModuleDict()
        self.poolers = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        # Pooled encoder features are standardised per feature before the projection (statistics fitted on the
        # training split by `mm_hf.fusion_features.fit_feature_statistics` for frozen encoders only; identity until
        # then and for encoders that train): see FeatureStandardizer for why.
        self.standardizers = nn.ModuleDict()
        visual = [m for m in ("image", "video") if m in self.modalities]
        if visual:  # images and video frames share one vision encoder
            self.encoders["vision"] = build_encoder(config.vision_config)
        for modality in visual:
            pooling = config.image_pooling if modality == "image" else config.frame_pooling
            width = encoder_width(config.vision_config)
            self.poolers[modality] = SequencePooling(pooling, width)
            self.standardizers[modality] = FeatureStandardizer(width)
            self.projections[modality] = _projection(width, d, config.head_dropout)
        if "video" in self.modalities:
            kwargs = {"num_heads": config.fusion_num_heads, "max_length": config.num_frames}
            self.temporal_pooling = build_pooling(
                config.temporal_pooling, d, **(kwargs if config.temporal_pooling == "transformer" else {})
            )
        for modality, key in (("text", "text_config"), ("audio", "audio_config")):
            if modality in self.modalities:
                sub = getattr(config, key)
                self.encoders[modality] = build_encoder(sub)
                pooling = config.text_pooling if modality == "text" else config.audio_pooling
                self.poolers[modality] = SequencePooling(pooling, encoder_width(sub), num_heads=config.fusion_num_heads)
                self.standardizers[modality] = FeatureStandardizer(encoder_width(sub))
                self.projections[modality] = _projection(encoder_width(sub), d, config.head_dropout)
        if "tabular" in self.modalities:
            self.tabular = TabularEncoder(
                config.tabular_num_numeric, config.tabular_cardinalities, d, dropout=config.head_dropout
            )
        for key, encoder in self.encoders.items():
            drop_unused_pooler(encoder, self.encoder_poolings(key))
        self.missing_tokens = nn.Parameter(torch.zeros(len(self.modalities), d))
        self.modality_dropout = ModalityDropout(config.modality_dropout)
        self.fusion = None
        if config.fusion != "late":  # late fusion lives in the heads: one per-modality head set per task
            self.fusion = build_fusion(config.fusion, len(self.modalities), d, **fusion_kwargs(config))
        for name, child in self.named_children():
            if name != "encoders":
                mark_fusion_part(child)
        self.post_init()

    def encoder_poolings(self, key: str) -> list[str]:
        """The pooling kinds that read encoder `key` ("vision", "text", "audio")."""
        if key == "vision":
            kinds = {"image": self.config.image_pooling, "video": self.config.frame_pooling}
            return [kinds[m] for m in self.modalities if m in kinds]
        return [getattr(self.config, f"{key}_pooling")]

    def parts(self) -> ModelParts:
        """What fine-tuning acts on: one tower per encoder; pooling, projections, placeholders and fusion are new."""
        head = tuple(name for name, _ in self.named_children() if name != "encoders") + ("missing_tokens",)
        towers = {key: describe_tower(self, f"encoders.{key}") for key in self.encoders}
        return ModelParts(kind="fusion", head=head, towers=towers, head_with_lora="train")

    @property
    def out_dim(self) -> int:
        return self.config.hidden_size if self.fusion is None else self.fusion.out_dim

    def encoder_features(self, modality: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the encoder of `modality` ("image", "video", "text", "audio") on a batch's `inputs` and return what
        the trainable parts after it read: `SequencePooling.encoder_side` of its output, i.e. (B, H) pooled for a
        parameter-free pooling or (B, N, H) token states and their (B, N) mask for a learned one; video keeps its
        frames, (B, T, H) or (B, T, N, H). A frozen encoder's cache stores exactly this (`<modality>_embeds`).
        """
        key = "vision" if modality in ("image", "video") else modality
        encoder, pooler = self.encoders[key], self.poolers[modality]
        if modality == "image":
            pixels = _required(inputs.get("pixel_values"), "pixel_values", modality)
            return pooler.encoder_side(encoder(pixel_values=pixels.to(encoder.dtype)))
        if modality == "video":
            videos = _required(inputs.get("pixel_values_videos"), "pixel_values_videos", modality)
            features, mask = pooler.encoder_side(encoder(pixel_values=videos.flatten(0, 1).to(encoder.dtype)))
            return features.unflatten(0, videos.shape[:2]), mask
        if modality == "text":
            attention_mask = inputs.get("attention_mask")
            kwargs = {"attention_mask": attention_mask}
            if inputs.get("token_type_ids") is not None:
                kwargs["token_type_ids"] = inputs["token_type_ids"]
            input_ids = _required(inputs.get("input_ids"), "input_ids", modality)
            return pooler.encoder_side(encoder(input_ids=input_ids, **kwargs), attention_mask)
        audio = inputs.get("input_values") if inputs.get("input_values") is not None else inputs.get("input_features")
        audio = _required(audio, "input_values/input_features", modality)
        audio_attention_mask = inputs.get("audio_attention_mask")
        model_inputs = {audio_input_name(encoder): audio.to(encoder.dtype)}
        # The encoder gets the mask only where it was trained with one; pooling skips padded frames either way.
        if audio_attention_mask is not None and reads_attention_mask(encoder):
            model_inputs["attention_mask"] = audio_attention_mask
        outputs = encoder(**model_inputs)
        frame_mask = audio_frame_mask(encoder, audio, audio_attention_mask, outputs.last_hidden_state.shape[1])
        return pooler.encoder_side(outputs, frame_mask)

    def pooled_features(self, modality: str, features: torch.Tensor, mask=None) -> torch.Tensor:
        """`encoder_features` output -> the pooled, not yet standardised vector (B, H) ((B, T, H) for video)."""
        if modality == "video":
            frames = features.shape[:2]
            return self.poolers[modality].pool_cached(features.flatten(0, 1), mask).unflatten(0, frames)
        return self.poolers[modality].pool_cached(features, mask)

    def encode(self, modality: str, features: torch.Tensor, mask=None) -> torch.Tensor:
        """`encoder_features` output (computed now or cached) -> pooling -> standardisation -> projection (B, D);
        video frames are projected one by one, then pooled over time."""
        dtype = self.projections[modality][0].weight.dtype
        pooled = self.pooled_features(modality, features.to(dtype), mask)
        projected = self.projections[modality](self.standardizers[modality](pooled))
        return self.temporal_pooling(projected) if modality == "video" else projected

    def forward(
        self,
        pixel_values=None,
        pixel_values_videos=None,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        input_values=None,
        input_features=None,
        audio_attention_mask=None,
        numeric_values=None,
        categorical_ids=None,
        modality_mask=None,
        image_embeds=None,
        video_embeds=None,
        text_embeds=None,
        audio_embeds=None,
        image_embeds_mask=None,
        video_embeds_mask=None,
        text_embeds_mask=None,
        audio_embeds_mask=None,
        **kwargs,
    ) -> MultimodalFusionOutput:
        """`<modality>_embeds` (+ `<modality>_embeds_mask`): a frozen encoder's cached `encoder_features`, used
        instead of running that encoder on its raw inputs (which may then be left out)."""
        inputs = {
            "pixel_values": pixel_values,
            "pixel_values_videos": pixel_values_videos,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "input_values": input_values,
            "input_features": input_features,
            "audio_attention_mask": audio_attention_mask,
        }
        cached = {"image": image_embeds, "video": video_embeds, "text": text_embeds, "audio": audio_embeds}
        cached_masks = {"image": image_embeds_mask, "video": video_embeds_mask}
        cached_masks.update(text=text_embeds_mask, audio=audio_embeds_mask)
        tokens = []
        for modality in self.modalities:
            if modality == "tabular":
                tokens.append(self.tabular(numeric_values, categorical_ids))
                continue
            if cached[modality] is not None:
                features, mask = cached[modality], cached_masks[modality]
            else:
                features, mask = self.encoder_features(modality, inputs)
            tokens.append(self.encode(modality, features, mask))
        tokens = torch.stack(tokens, dim=1)  # (B, M, D)
        if modality_mask is None:
            present = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        else:
            present = modality_mask.to(tokens.device).bool()
        present = self.modality_dropout(present)
        # A learned placeholder stands in for a missing modality: concat and tensor fusion see "missing" as a
        # value of its own, and a missing input's (dummy) encoding never leaks into the result.
        tokens = torch.where(present[..., None], tokens, self.missing_tokens.to(tokens.dtype).expand_as(tokens))
        fused = None
        if self.fusion is not None:
            # Fusions that can mask (gated, cross-attention) ignore missing modalities entirely; concat and tensor
            # fusion would zero them, so they get every slot, placeholders included.
            maskable = self.config.fusion in ("gated", "cross_attention")
            fused = self.fusion(tokens, present if maskable else None)
        return MultimodalFusionOutput(fused=fused, tokens=tokens, present=present)


def fusion_kwargs(config: MultimodalFusionConfig) -> dict:
    if config.fusion == "cross_attention":
        return {"num_heads": config.fusion_num_heads, "num_layers": config.fusion_num_layers}
    if config.fusion == "tensor":
        return {"out_dim": config.hidden_size, "rank": config.tensor_rank}
    return {}


def _required(value, name: str, modality: str):
    if value is None:
        raise ValueError(f"the {modality} modality needs `{name}` (pass zeros and modality_mask=0 when missing)")
    return value


def task_loss(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of one head: cross-entropy, binary cross-entropy (multi-label and binary), or MSE (regression)."""
    logits = logits.float()
    labels = labels.to(logits.device)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels.long())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    if problem_type == "binary_classification":
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float().view(-1))
    return F.mse_loss(logits, labels.float().view(logits.shape))


class MultimodalFusionForClassification(MultimodalFusionPreTrainedModel):
    """The fusion model with one head per task in `config.tasks`: multi-class (cross-entropy), multi-label
    (binary cross-entropy), binary, or regression (MSE); several tasks make a multi-task model whose loss is
    the `loss_weight`-weighted sum.

    Labels: `labels` for a single task; `labels_<task name>` for each task of a multi-task model (pass
    `label_names=[...]` to Trainer). `logits` is (B, outputs) for one task, a tuple in task order otherwise.
    """

    def __init__(self, config: MultimodalFusionConfig):
        super().__init__(config)
        self.multimodal = MultimodalFusionModel(config)
        num_modalities = len(config.modalities)
        heads = {}
        for task in config.tasks:
            if config.fusion == "late":
                heads[task["name"]] = build_fusion("late", num_modalities, config.hidden_size, num_outputs(task))
            else:
                # One hidden layer: a linear head on concatenated features could not model interactions between
                # modalities (e.g. a label that flips with the text), which is the point of fusing them.
                heads[task["name"]] = nn.Sequential(
                    nn.Dropout(config.head_dropout),
                    nn.Linear(self.multimodal.out_dim, config.hidden_size),
                    nn.GELU(),
                    nn.Dropout(config.head_dropout),
                    nn.Linear(config.hidden_size, num_outputs(task)),
                )
        self.heads = mark_fusion_part(nn.ModuleDict(heads))
        self.post_init()

    def parts(self) -> ModelParts:
        """The fusion model's parts (see MultimodalFusionModel.parts), plus the task heads."""
        inner = self.multimodal.parts().under("multimodal.")
        head = tuple(name for name, _ in self.named_children() if name != "multimodal") + inner.head
        return dataclasses.replace(inner, head=head)

    def forward(self, labels=None, **inputs) -> MultimodalClassifierOutput:
        task_labels = {name[len("labels_") :]: inputs.pop(name) for name in list(inputs) if name.startswith("labels_")}
        out = self.multimodal(**inputs)
        logits = []
        for task in self.config.tasks:
            head = self.heads[task["name"]]
            task_logits = head(out.tokens, out.present) if self.config.fusion == "late" else head(out.fused)
            temperature = (self.config.calibration_temperature or {}).get(task["name"])
            if not self.training and temperature is not None:  # post-hoc calibration (see the config)
                task_logits = task_logits / temperature
            logits.append(task_logits)
        if len(self.config.tasks) == 1 and labels is not None:
            task_labels[self.config.tasks[0]["name"]] = labels
        loss = None
        for task, task_logits in zip(self.config.tasks, logits, strict=True):
            if task["name"] in task_labels:
                term = task["loss_weight"] * task_loss(task["problem_type"], task_logits, task_labels[task["name"]])
                loss = term if loss is None else loss + term
        return MultimodalClassifierOutput(loss=loss, logits=logits[0] if len(logits) == 1 else tuple(logits))


__all__ = [
    "MultimodalFusionForClassification",
    "MultimodalFusionModel",
    "MultimodalFusionPreTrainedModel",
    "SequencePooling",
]
