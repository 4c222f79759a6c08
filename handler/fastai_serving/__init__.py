"""Engine-independent core of fastai-serving.

Plain functions over bytes, JSON values and tensors: load a Learner, read request
bodies into instances, decode images, run one batched forward pass and encode the
results. Nothing here imports TorchServe, so the same core can sit behind another
engine (Triton's Python backend, Ray Serve) and is unit-tested without one.
"""
