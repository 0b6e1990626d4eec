"""Nodes: thin rclpy shells around the pure cores, one per pipeline stage, and how they run.

Owns the four pipeline nodes (`camera_node`, `embedder_node`, `memory_node`, `policy_node`), the optional
`escalation_node`, the lifecycle state machine every node shares (`lifecycle`), the lifecycle manager
(`lifecycle_manager`), process plumbing (`runtime`: init, executor, shutdown) and the launch-free entry point
that runs the graph composed in one process or as separate processes (`pipeline`).

May import every stage and the shared modules (`graph`, `params`, `qos`, `diagnostics`, `conversions`);
never a tool.
"""
