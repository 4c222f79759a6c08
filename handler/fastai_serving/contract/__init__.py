"""The torch-free wire contract: the words, request bodies, instances, errors and names every part speaks.

The shim (both fronts), the handler and the tests read requests with these modules; they import neither
torch nor PIL, so a front checks a body exactly as a worker will read it.
"""
