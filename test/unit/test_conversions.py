"""conversions.float32_field: a vector into a float32[] message field, exactly, through real serialisation."""
import numpy as np
from rclpy.serialization import deserialize_message, serialize_message

from vidaction_ros.conversions import float32_field
from vidaction_ros.msg import Embedding


def test_a_vector_goes_into_a_float32_field_exactly_and_survives_serialisation():
    # float64 and strided (every other element): converted to float32 as numpy would round them.
    source = np.linspace(-1.0, 1.0, 768)[::2]
    msg = Embedding()
    msg.vector = float32_field(source)
    msg.dim = source.size
    back = deserialize_message(serialize_message(msg), Embedding)
    assert np.array_equal(np.asarray(back.vector, np.float32), source.astype(np.float32))
    assert back.dim == 384
