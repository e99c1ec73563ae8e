"""Exports (head, safetensors, ONNX, TorchScript), the parity gate, loading, predict."""
