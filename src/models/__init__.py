"""Networks: the plain nnU-Net U-Net, the residual ASPP U-Net and DoDNet, built from a plan."""
from src.models.dodnet import NUM_MOTS_TASKS, DoDNet
from src.models.res_unet_aspp import ResUNetASPP
from src.models.unet3d import PlainUNet3D



def _plain_unet(cfg, plan: dict, in_channels, features, kernel_sizes, strides):
    return PlainUNet3D(in_channels, int(plan["num_classes"]), features, kernel_sizes, strides,
                       downsample=cfg.downsample, deep_supervision=bool(cfg.deep_supervision))


def _res_unet_aspp(cfg, plan: dict, in_channels, features, kernel_sizes, strides):
    return ResUNetASPP(in_channels, int(plan["num_classes"]), features, kernel_sizes, strides,
                       deep_supervision=bool(cfg.deep_supervision))


def _dodnet(cfg, plan: dict, in_channels, features, kernel_sizes, strides):
    num_tasks = len(plan["tasks"]) if plan.get("tasks") else NUM_MOTS_TASKS
    return DoDNet(in_channels, features, kernel_sizes, strides, num_tasks=num_tasks)


# The class of each variant of src/variants.py
BUILDERS = {"plain_unet": _plain_unet, "res_unet_aspp": _res_unet_aspp, "dodnet": _dodnet}


def build_network(cfg, plan: dict):
    """The network named by ``cfg.network`` with the plan's topology (features, kernels, strides)."""
    features = [int(f) for f in plan["features"]]
    kernel_sizes = [[int(k) for k in ks] for ks in plan["conv_kernel_sizes"]]
    strides = [[int(s) for s in st] for st in plan["strides"]]
    in_channels = int(plan.get("num_channels", 1))
    if cfg.network not in BUILDERS:
        raise ValueError(f"unknown network {cfg.network!r}; expected one of {', '.join(BUILDERS)}")
    return BUILDERS[cfg.network](cfg, plan, in_channels, features, kernel_sizes, strides)
