"""How many tokens a text tower can read: the cap every recipe and zero-shot head applies to its texts."""

import logging

logger = logging.getLogger(__name__)

# Position ids of RoBERTa-style embeddings start after the padding index (padding_idx + 1), so
# `max_position_embeddings` = 514 holds 512 tokens.
_PADDING_OFFSET_POSITIONS = {
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "xmod",
    "clap_text_model",
}
# transformers' tokenizers without a known limit report this huge placeholder as `model_max_length`.
_NO_LIMIT = 10**9
_warned: set[tuple] = set()


def text_positions(config) -> int | None:
    """The most tokens the text tower of `config` (a dual encoder's, or a text encoder's own) has positions for."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(text_config, "model_type", None) in _PADDING_OFFSET_POSITIONS:
        positions -= (getattr(text_config, "pad_token_id", None) or 0) + 1
    return positions


def text_max_length(tokenizer, config, requested: int | None = None, *, flag: str = "--max_seq_length") -> int | None:
    """`requested` (default: the tokenizer's `model_max_length`) capped at what the model can read: the smaller of
    the tokenizer's `model_max_length` and the text tower's position embeddings.

    Longer inputs would fail inside the model (e.g. CLIP's "Sequence length must be less than
    max_position_embeddings"), so they are truncated, with one warning naming both numbers. None: no known limit
    and nothing requested (the tokenizer then pads to the longest text of a batch).
    """
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    tokenizer_limit = tokenizer_limit if isinstance(tokenizer_limit, int) and tokenizer_limit < _NO_LIMIT else None
    positions = text_positions(config)
    limits = [n for n in (tokenizer_limit, positions) if n]
    cap = min(limits) if limits else None
    if requested is None:
        requested, flag = tokenizer_limit, "the tokenizer's model_max_length"
    if requested is None or cap is None or requested <= cap:
        return requested if requested is not None else cap
    reason = (
        f"the text tower has {positions} position embeddings"
        if cap == positions
        else f"the tokenizer's model_max_length is {tokenizer_limit}"
    )
    key = (flag, requested, cap)
    if key not in _warned:
        _warned.add(key)
        logger.warning(
            "%s %d is more than the model reads: %s, so texts are cut to %d tokens", flag, requested, reason, cap
        )
    return cap


__all__ = ["text_max_length", "text_positions"]
