"""Inference: the Python API bound to the model (``api``), input sources (``sources``), the one run
loop and its result record (``run``), long audio (``longform``), word timestamps (``timestamps``),
result files and subtitles (``writers``), evaluation on a manifest (``evaluate``) and the ONNX
runner (``onnx_runner``, numpy and onnxruntime only)."""
