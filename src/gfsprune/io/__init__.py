"""Files: atomic writes, validated readers, the saved-model format and ONNX export."""
