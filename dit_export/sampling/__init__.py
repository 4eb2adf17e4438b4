"""Stage 2: schedule tables, the sampler step module, noise generators and the reference loop.

`schedule` and `noise` are numpy-only (the runtime uses them without torch); `step` and
`reference` need torch.
"""

NUM_TRAIN_STEPS = 1000  # the diffusion's training steps: the longest chain a sampler can take
