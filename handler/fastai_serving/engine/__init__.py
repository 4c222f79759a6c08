"""The engine: a fastai Learner behind the contract: load it, decode instances, one batched forward pass, encode answers.

Imports torch and fastai; no TorchServe (the adapter is handler/torchserve_handler.py), so the same engine can
sit behind another server.
"""
