"""Moving pretrained weights between networks that share a backbone (DoDNet -> ResUNetASPP)."""
from mindspore import load_param_into_net, nn

# optimizer slots and bookkeeping that a training checkpoint carries next to the weights
NON_NETWORK_PREFIXES = ("moments.", "accum.", "momentum", "learning_rate", "global_step", "epoch", "lr",
                        "scale_sense", "current_iterator_step", "last_overflow_iterator_step", "ema.")


def is_network_entry(name: str) -> bool:
    return not name.startswith(NON_NETWORK_PREFIXES)


def transferable_parameters(src_param_dict: dict, dst_net: nn.Cell) -> tuple:
    """Load every source tensor whose name and shape match a parameter of ``dst_net`` into it.

    Returns (loaded, skipped): names loaded into ``dst_net``, and network names of the source that
    were not (a missing name such as the DoDNet controller, or a different shape such as a head
    with another number of classes). Optimizer state in the source is neither.
    """
    dst_params = {p.name: p for p in dst_net.get_parameters()}
    matched = {}
    skipped = []
    for name in sorted(src_param_dict):
        if not is_network_entry(name):
            continue
        value = src_param_dict[name]
        target = dst_params.get(name)
        if target is not None and tuple(value.shape) == tuple(target.shape):
            matched[name] = value
        else:
            skipped.append(name)
    if matched:
        not_loaded, _ = load_param_into_net(dst_net, matched, strict_load=False)
        if not_loaded and any(n in matched for n in not_loaded):
            raise RuntimeError(f"parameters matched by name and shape did not load: {not_loaded}")
    return sorted(matched), skipped
