"""ZeRO3OnCPU: ``k15.deepspeed.ZeRO3Strategy`` with the three steps of Lightning's ``DeepSpeedStrategy``
that assume CUDA replaced, so that a test runs ``python -m k15 fit`` through the whole Lightning path
on DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``, gloo). k15 itself leaves DeepSpeed to GPUs.

    setup_environment           raises unless the accelerator is a CUDAAccelerator
    setup_distributed           _validate_device_index_selection: CPU devices have no index
    _setup_model_and_optimizer  deepspeed.initialize(args=Namespace(device_rank=root_device.index)):
                                None on a CPU, which DeepSpeedEngine._set_distributed_vars compares with 0
"""

import argparse

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy

from k15.deepspeed import ZeRO3Strategy, check_precision


class ZeRO3OnCPU(ZeRO3Strategy):
    def setup_environment(self) -> None:
        check_precision(self.precision_plugin.precision)
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, optimizer
