"""The paper (DreamMotion, Sec. 3): the V-DDS gradient and the S-SSM / T-SSM losses, the branches
of a step, the capture of the U-Net's spatial self-attention keys, the step and the SGD loop,
temporal windows, checkpoints for --resume, and the compile and checkpointing levers.

It sees a video model only through the backend protocol (dmedit.models.backends.base) and masks
only as tensors; it knows nothing of settings, files, video I/O or the command line."""
