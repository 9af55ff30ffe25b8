"""The Triton adapter: ``tritonclient`` behind a small typed interface.

Nothing outside this package imports tritonclient. Import each name from the module that defines it:

* :mod:`~worker.inference.triton.errors`: the exception tree every failure becomes one of;
* :mod:`~worker.inference.triton.tensors`: tensor descriptors, model metadata, the Triton <-> numpy
  datatype maps and the batch a request's input is made of;
* :mod:`~worker.inference.triton.shared_memory`: the system shared-memory regions that carry a request's
  inputs when Triton is on the same host, and the removal of regions left by dead clients;
* :mod:`~worker.inference.triton.client`: :class:`~worker.inference.triton.client.TritonClient`, one
  gRPC channel to one Triton server.
"""
