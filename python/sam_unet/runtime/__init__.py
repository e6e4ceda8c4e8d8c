"""runtime: backends (torch, onnxruntime, tensorrt) and the volume pipeline.

``make_backend`` and ``Backend`` live in :mod:`sam_unet.runtime.backends`; backend modules are
imported only when used, so ``import sam_unet.runtime`` needs neither onnxruntime nor TensorRT.
"""
