from .checkpoint_safety import allow_checkpoint_globals
from .dist import prepare_cpu_distributed

__all__ = ['allow_checkpoint_globals', 'prepare_cpu_distributed']
