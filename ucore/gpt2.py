"""GPT-2 = ucore.transformer.TransformerLM with a GPT2Config (the names older code imports)."""
from ucore.transformer import (LayerNorm, MLP, Attention, Block, activation_fn,  # noqa: F401
                               hook_names, no_hook)
from ucore.transformer import TransformerLM as GPT2LM  # noqa: F401
