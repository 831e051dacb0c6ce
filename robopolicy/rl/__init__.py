"""RL fine-tuning of generative policy heads (DESIGN.md, "RL fine-tuning").

- chain.py    the denoising-chain MDP: executed chains, their per-step and summed log-probabilities
- ppo.py      PPO over (env step x denoising step) samples, GAE over env steps, a value critic
- rollout.py  chunk-level environments (one MDP step = one executed action chunk) in vector envs
- reinflow.py ReinFlow: a learned noise net on the flow head's Euler steps, fine-tuned with ppo.py
- common.py   helpers shared by every method (start checkpoint, envs, evaluation, saving, curves)
- curves.py   tensorboard + PNG learning curves

Methods are run by `robopolicy finetune algo=<name> checkpoint=<path> task=<task>` (cli/finetune.py).
"""
