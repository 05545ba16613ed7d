"""The locate-then-segment first pass: a small plain U-Net with two classes (background, kidney region),
built from the locator plan stored in the checkpoint. Training (``src/train/locator_training``) and
inference (``src/infer/locate_model``) both build it, so it lives with the other networks."""
from src.models.unet3d import PlainUNet3D


def build_locator_network(lplan: dict) -> PlainUNet3D:
    return PlainUNet3D(int(lplan["num_channels"]), 2, [int(f) for f in lplan["features"]],
                       lplan["conv_kernel_sizes"], lplan["strides"], downsample="conv", deep_supervision=False)


def locator_with_weights(lplan: dict, weights: dict, where: str) -> PlainUNet3D:
    """The locator network with ``weights`` (by name, without the checkpoint's ``locator.`` prefix), in
    inference mode; ``where`` names their source in errors."""
    import mindspore as ms

    from src.runtime.checkpoint import restore_parameters

    network = build_locator_network(lplan)
    restore_parameters(network, {name: ms.Parameter(value.data, name=name) for name, value in weights.items()},
                       where)
    network.set_train(False)
    return network
