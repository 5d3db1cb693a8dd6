"""The model: one Flax decoder configured as GPT-2 or GPT-NeoX, with TransformerLens hooks.

  config          LMConfig: the fields every architecture shares (the base; imports none)
  gpt2, neox      the architectures' configs (HF config.json readers)
  registry        the list of architectures; config.json -> the right config
  transformer     the Flax decoder (TransformerLM) and its hook points
  hooked          HookedTransformer: run_with_cache / run_with_hooks / neuron_activations,
                  save_model / load_model (orbax + manifest), params_fingerprint
  activation_cache ActivationCache (TransformerLens-style cache indexing)
  processing      TransformerLens weight processing (fold LayerNorm, centre, fold biases)
  tokenizer       a model's tokenizer files (GPT-2 BPE offline, trained byte-level BPE)

May import: ucore.jobs, ucore.interventions.
"""
