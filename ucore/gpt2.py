"""GPT-2 = ucore.transformer.TransformerLM with a GPT2Config (the names older code imports)."""
from ucore.transformer import (LayerNorm, MLP, Attention, Block, HookOptions,  # noqa: F401
                               activation_fn, hook_names, no_hook)
from ucore.transformer import TransformerLM as GPT2LM  # noqa: F401
