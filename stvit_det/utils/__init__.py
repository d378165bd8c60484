from .checkpoint_safety import allow_mmengine_checkpoints
from .dist import prepare_cpu_distributed

__all__ = ['allow_mmengine_checkpoints', 'prepare_cpu_distributed']
