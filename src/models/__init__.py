"""Networks: the plain nnU-Net U-Net, the residual ASPP U-Net and DoDNet, built from a plan."""
from src.models.dodnet import NUM_MOTS_TASKS, DoDNet
from src.models.res_unet_aspp import ResUNetASPP
from src.models.unet3d import PlainUNet3D

NETWORKS = ("plain_unet", "res_unet_aspp", "dodnet")


def build_network(cfg, plan: dict):
    """The network named by ``cfg.network`` with the plan's topology (features, kernels, strides)."""
    features = [int(f) for f in plan["features"]]
    kernel_sizes = [[int(k) for k in ks] for ks in plan["conv_kernel_sizes"]]
    strides = [[int(s) for s in st] for st in plan["strides"]]
    in_channels = int(plan.get("num_channels", 1))
    num_classes = int(plan["num_classes"])
    name = cfg.network
    if name == "plain_unet":
        return PlainUNet3D(in_channels, num_classes, features, kernel_sizes, strides,
                           downsample=cfg.downsample, deep_supervision=bool(cfg.deep_supervision))
    if name == "res_unet_aspp":
        return ResUNetASPP(in_channels, num_classes, features, kernel_sizes, strides,
                           deep_supervision=bool(cfg.deep_supervision))
    if name == "dodnet":
        num_tasks = len(plan["tasks"]) if plan.get("tasks") else NUM_MOTS_TASKS
        return DoDNet(in_channels, features, kernel_sizes, strides, num_tasks=num_tasks)
    raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
