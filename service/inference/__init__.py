"""Models: preprocessing families (``families``, light), runtimes and the registry (these
import onnxruntime, onnx and OpenVINO), and the simulated accelerator for benchmarks
(``simulated``, light)."""
