"""The overlay: what the pipeline saw and decided, drawn on the frame (pure: numpy and OpenCV, no ROS).
Used by the overlay node (overlay/compressed) and the replay report's thumbnails. Imports only stats-level
helpers; nothing above it."""
