"""Compiled models: an AOTInductor package built at archive time (aot), or torch.compile in the worker (worker)."""
