"""Networks: the plain nnU-Net U-Net, the residual ASPP U-Net and DoDNet, built from a plan."""
from src.data.plan import Plan
from src.models.dodnet import NUM_MOTS_TASKS, DoDNet
from src.models.res_unet_aspp import ResUNetASPP
from src.models.unet3d import PlainUNet3D



def _plain_unet(cfg, plan: Plan):
    return PlainUNet3D(plan.num_channels, plan.num_classes, plan.features, plan.conv_kernel_sizes, plan.strides,
                       downsample=cfg.downsample, deep_supervision=bool(cfg.deep_supervision))


def _res_unet_aspp(cfg, plan: Plan):
    return ResUNetASPP(plan.num_channels, plan.num_classes, plan.features, plan.conv_kernel_sizes, plan.strides,
                       deep_supervision=bool(cfg.deep_supervision))


def _dodnet(cfg, plan: Plan):
    num_tasks = len(plan.tasks) if plan.tasks else NUM_MOTS_TASKS
    return DoDNet(plan.num_channels, plan.features, plan.conv_kernel_sizes, plan.strides, num_tasks=num_tasks)


# The class of each variant of src/variants.py
BUILDERS = {"plain_unet": _plain_unet, "res_unet_aspp": _res_unet_aspp, "dodnet": _dodnet}


def build_network(cfg, plan: Plan):
    """The network named by ``cfg.network`` with the plan's topology (features, kernels, strides)."""
    if cfg.network not in BUILDERS:
        raise ValueError(f"unknown network {cfg.network!r}; expected one of {', '.join(BUILDERS)}")
    return BUILDERS[cfg.network](cfg, plan)
