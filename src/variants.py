"""One record per network variant: everything that differs between them outside the network class itself.

The trainer, the data loader, the loss, the validation step and the predictor read these fields instead
of checking a network's name, so a new variant is a new record here (plus its class in ``src/models``).
Each field names a kind that the layer owning it maps to its implementation (``dataset.BATCH_SOURCES``,
``losses.SCALE_LOSSES``, ``validation.VALIDATION_STEPS``); nothing here imports those layers.
"""
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class NetworkVariant:
    name: str
    # "patches": labels as stored; "partial_labels": each sample's task turns its labels into
    # (organ, tumour) targets with -1 where the task annotates nothing (src/data/partial_labels.py)
    batch_source: str
    # the config's ``loss`` values this variant trains with (the first is its natural one)
    losses: Tuple[str, ...]
    # "softmax": per-class counts of the argmax; "sigmoid": per-channel counts of logits > 0
    validation: str
    # batches carry each sample's task id after the data, and the network is called network(data, task_id)
    task_conditioned: bool
    # whether the network has deep-supervision heads that the config's deep_supervision switches on
    deep_supervision: bool
    # None when eval.py, predict.py and export.py can serve it; otherwise why not (one line for the user)
    cannot_predict: Optional[str] = None

    @property
    def predicts(self) -> bool:
        return self.cannot_predict is None


NETWORK_VARIANTS = {
    variant.name: variant for variant in (
        NetworkVariant("plain_unet", "patches", ("dice_ce", "dice_ce_hec"), "softmax", False, True),
        NetworkVariant("res_unet_aspp", "patches", ("dice_ce", "dice_ce_hec"), "softmax", False, True),
        NetworkVariant("dodnet", "partial_labels", ("dodnet",), "sigmoid", True, False,
                       cannot_predict="DoDNet is the pretraining model (task-conditioned, 2 sigmoid outputs); "
                                      "transfer its weights with train.py --pretrained and predict with the "
                                      "fine-tuned network"),
    )
}
NETWORKS = tuple(NETWORK_VARIANTS)
LOSSES = tuple(dict.fromkeys(loss for variant in NETWORK_VARIANTS.values() for loss in variant.losses))


def network_variant(name: str) -> NetworkVariant:
    try:
        return NETWORK_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}") from None
