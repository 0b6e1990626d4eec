"""Perception: pixels and prompts into one joint embedding space.

Owns the embedding backends behind one interface (`backends/`: the offline CPU default, CLIP / SigLIP from a
path on the CPU, torch CUDA or TensorRT, their ONNX export and GPU preprocessing), the detectors the CPU
default uses (`person_detector`), the text model for prompts and concept names (`text_encoder`) and the
policy's regions of interest (`regions`). Data files (the ImageNet class names) live in `data/`.

Pure cores, no rclpy. May import: `vidaction_ros.ingest` and the shared helpers (`stats`, `paths`).
Backends import their runtimes (onnxruntime, torch, TensorRT) lazily, so a CPU machine never imports CUDA.
"""
