"""The default seed family: 3 small GPT-2-shaped models on the embedded corpus, differing only
in seed, trained so that universal neurons emerge (ReLU MLPs, 1536 neurons per layer).

  python main.py tokenize --config=configs/tokenize_default.py --config.tokenizer=bpe \
      --config.bpe_vocab_size=512 --config.ctx=128 --config.num_tokens=0 --workdir=runs/tok_bpe
  python main.py train --config=configs/train_default.py --workdir=runs/family \
      --config.data.store=runs/tok_bpe

Writes runs/family/seed{s}/checkpoint-{N}/ (ucore.load_model directories) and
runs/family/seed{s}/final; see ucore/train/loop.py for the layout. Killed? Run the same command.
Departs from GPT-2 in one way: a ReLU MLP instead of gelu_new (in these small models GELU
neurons stay dense and none is universal; variant `:gpt2` keeps GPT-2's activation and the
earlier recipe). Why this recipe: BENCHMARKS.md "## Universality recipes" (each lever measured).
"""
import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  # Model seeds: seed s sets both the initialisation and the data order of member s.
  c.seeds = (0, 1, 2)

  c.model = ml_collections.ConfigDict()
  # Transformer blocks.
  c.model.n_layer = 2
  # Residual stream width (d_model).
  c.model.n_embd = 128
  # Attention heads (d_head = n_embd / n_head).
  c.model.n_head = 4
  # MLP neurons per layer (the units whose universality is studied).
  c.model.d_mlp = 1536
  # Context length; 0 = the token rows' length.
  c.model.n_positions = 0
  # Vocabulary size; 0 = the token store's tokenizer vocabulary.
  c.model.vocab_size = 0
  # MLP nonlinearity (GPT-2: gelu_new, the tanh approximation). ReLU gives the sparse,
  # privileged basis in which neurons of small models become universal.
  c.model.activation_function = "relu"
  # LayerNorm epsilon (GPT-2: 1e-5).
  c.model.layer_norm_epsilon = 1e-5
  # Divide attention scores by layer_idx + 1, as the Mistral GPT-2 configs do.
  c.model.scale_attn_by_inverse_layer_idx = True
  # Attention softmax in float32 (Mistral: true; a no-op when training in float32).
  c.model.reorder_and_upcast_attn = True
  # Std of the normal initialisation (GPT-2: 0.02; residual projections / sqrt(2 n_layer)).
  c.init_std = 0.02

  c.data = ml_collections.ConfigDict()
  # Token store directory (`python main.py tokenize ...`); its tokenizer is copied into
  # every checkpoint. Required on the command line unless set here.
  c.data.store = ""
  # Use only the first this many rows of the store (0 = all rows).
  c.data.max_rows = 0
  # The last this many rows (of those used) are held out for the held-out loss.
  c.heldout_rows = 64

  # Rows per update per seed (tokens per update per seed = batch_rows * (ctx - 1)).
  c.batch_rows = 32
  # Number of updates.
  c.num_steps = 150

  c.optim = ml_collections.ConfigDict()
  # Peak learning rate (after warmup).
  c.optim.lr = 2e-3
  # Linear warmup steps from 0 to lr.
  c.optim.warmup_steps = 30
  # Cosine decay ends at lr * min_lr_ratio at num_steps.
  c.optim.min_lr_ratio = 0.1
  # AdamW betas and epsilon (GPT-2/Mistral: 0.9, 0.95, 1e-8).
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  # Decoupled weight decay on matrices (not biases / LayerNorm).
  c.optim.weight_decay = 0.1
  # Clip each model's gradient to this global norm.
  c.optim.grad_clip = 1.0

  # Kept model checkpoints (step 0 = init and num_steps are always kept), like the Mistral
  # `checkpoint-N` branches: dense early, sparse late.
  c.checkpoint_steps = (0, 10, 20, 50, 100, 150)
  # Held-out loss every this many steps (and at every kept checkpoint).
  c.eval_every = 50
  # Rows per held-out forward pass.
  c.eval_batch_rows = 32
  # Save the resumable training state every this many steps (and at kept checkpoints).
  c.state_every = 50
  # Log train loss and throughput every this many steps.
  c.log_every = 10
  if arg == "gpt2":
    # The GPT-2-faithful family of earlier defaults: gelu_new, 512 neurons, 4 seeds, 300 x 16
    # rows. Measured: 0 of 1024 neurons universal (BENCHMARKS.md "## Universality recipes").
    c.seeds = (0, 1, 2, 3)
    c.model.activation_function = "gelu_new"
    c.model.d_mlp = 512
    c.batch_rows = 16
    c.num_steps = 300
    c.checkpoint_steps = (0, 10, 20, 50, 100, 150, 200, 300)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/train_default.py (known: gpt2)")
  return c
