"""ONNX graphs and sessions: the FC head, graph surgery, the reverse pass, model files, onnxruntime."""
