"""The trace kernel, its explicit feature maps and the SVM on it (no onnxruntime here)."""
