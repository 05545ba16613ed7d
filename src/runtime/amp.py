"""Mixed precision for training and inference alike: which amp level a device gets, and the network wrapped
for it (the same wrapping when training and when predicting, so a checkpoint runs as it was trained)."""
from mindspore.train import amp


def resolve_amp_level(amp_level: str, device_target: str) -> str:
    """``auto`` means float16 with loss scaling on Ascend and full precision elsewhere."""
    if amp_level == "auto":
        return "O2" if device_target == "Ascend" else "O0"
    return amp_level


def apply_amp(network, amp_level: str):
    """The network as training and validation call it: unchanged for ``O0``; for ``O2`` cast to float16
    (norms stay float32 by the amp black list) with its outputs cast back to float32."""
    if amp_level == "O0":
        return network
    if amp_level == "O2":
        return amp.auto_mixed_precision(network, amp_level="O2")
    raise ValueError(f"unsupported amp level {amp_level!r}")
