"""Building blocks of STViT-R, small to large: window_ops / chunking / mlp -> tiled_attention -> attention ->
swin_block / semantic_tokens / recovery / token_learner / classification_form -> stvit_stage; stem (conv or patch)."""
from .attention import ATTN_IMPLS, QKVAttention
from .recovery import SpatialRecovery
from .semantic_tokens import SemanticTokenBlock, SemanticTokenGenerator
from .stvit_stage import DUMBBELL_UNIT, STViTStage, dumbbell_pattern, swin_pattern
from .swin_block import PatchMerging, SwinBlock, WindowAttention
from .token_learner import TokenFuser, TokenLearner
from .window_ops import PAD_MASK_MODES

__all__ = [
    'ATTN_IMPLS', 'PAD_MASK_MODES', 'DUMBBELL_UNIT', 'QKVAttention', 'WindowAttention', 'SwinBlock', 'PatchMerging',
    'SemanticTokenGenerator', 'SemanticTokenBlock', 'SpatialRecovery', 'TokenLearner', 'TokenFuser', 'STViTStage',
    'dumbbell_pattern', 'swin_pattern'
]
