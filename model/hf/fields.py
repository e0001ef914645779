"""Reading a Hugging Face config.json: required keys, and refusing what we cannot represent."""

from typing import Any

from runtime.errors import UserError

# Token ids a HF config carries that generation needs; kept in our config.json and written back.
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def need(hf: dict, key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise UserError(f"{source}/config.json has no {key!r}, which this architecture needs")
    return hf[key]


def refuse_unless(ok: bool, source: str, what: str) -> None:
    """One line naming the unsupported feature; nothing is written."""
    if not ok:
        raise UserError(f"{source}: {what} is not supported by meshlm (no equivalent in "
                        f"ModelConfig); nothing was converted")


def token_ids(hf: dict) -> dict[str, int]:
    return {k: hf[k] for k in TOKEN_IDS if isinstance(hf.get(k), int)}
