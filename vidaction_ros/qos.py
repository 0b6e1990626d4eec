"""Every QoS profile of the suite in one place (navigation2 habit): change it here, not in the nodes."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Frames: newest wins. A frame that arrives late is worth less than the next one, so no retries, depth 1.
FRAME = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                   reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)

# Lock-step replay (every frame processed): reliable and deep enough to hold the whole hand-off.
FRAME_LOCKSTEP = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                            reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# Embeddings and memory context: small, each one matters to the memory window; reliable, short queue.
EMBEDDING = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                       reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# Actions: a controller must not miss a STOP. Reliable, keep-last 10.
ACTION = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# Lock-step replay: the policy's publisher and the readers of a lock-step run. Every Action is kept until
# acknowledged, however far a loaded reader lags (the keep-last 10 of ACTION let a recorder on a busy 2-core
# machine lose three in a 795-frame replay), and, transient-local, a reader whose match with the policy's
# writer completes after the first frames still gets them: the camera sees a reader in its graph before the
# policy's writer has matched it (CI lost frames 0-3 of an 80-frame replay that way). A transient-local
# reader needs a transient-local writer: read a live pipeline with ACTION_DEEP.
ACTION_REPLAY = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                           reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

# A reader that must not lose an Action to its own lag, of any pipeline (live or lock-step).
ACTION_DEEP = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# sensor_msgs/Image interop (rviz, rqt, bags): the usual sensor-data profile.
IMAGE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                   reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)

# The overlay picture: reliable so that every viewer matches (rviz and rqt_image_view subscribe reliable by
# default, Foxglove best effort; a reliable publisher serves both), depth 1: only the newest picture matters.
OVERLAY = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

DIAGNOSTICS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def action_reader(lockstep: bool) -> QoSProfile:
    """For a reader that must hear every Action (a recorder, a test, the demo's printer): deep; lock-step also
    transient-local, so a reader the policy's writer matched late still gets the first frames' Actions."""
    return ACTION_REPLAY if lockstep else ACTION_DEEP


def frame_qos(lockstep: bool) -> QoSProfile:
    return FRAME_LOCKSTEP if lockstep else FRAME
