"""The demo's and bench/e2e.py's Action printer hears every Action: the ones a lock-step policy published before
the printer's match with it completed, and the ones that came while its executor was busy. Real DDS, real
messages; the expected counts are what was published."""
import io
import threading

import pytest
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.msg import Action
from vidaction_ros.tools.demo import ActionPrinter
from ros_helpers import wait_until

pytestmark = pytest.mark.integration


def _actions(count: int):
    for sequence in range(count):
        msg = Action(action='CONTINUE', trigger='prompt', reason='test')
        msg.frame_sequence = sequence
        yield msg


def _spin(context, node):
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    return executor


def test_a_lockstep_printer_hears_actions_published_before_it_matched(context):
    policy = Node('policy_stand_in', context=context)
    writer = policy.create_publisher(Action, 'action', qos.ACTION_REPLAY)     # the lock-step policy's writer
    for msg in _actions(20):
        writer.publish(msg)                 # before the printer exists: nobody has matched yet
    printer = ActionPrinter(changes_only=True, out=io.StringIO(), lockstep=True)
    executor = _spin(context, printer.make_node(context=context))
    try:
        wait_until(lambda: printer.count >= 20, 60.0, lambda: f'heard {printer.count} of 20')
        assert printer.by_trigger['prompt'] == 20
    finally:
        executor.shutdown()
        printer.node.destroy_node()
        policy.destroy_node()


def test_a_live_printer_loses_none_of_what_arrived_while_it_was_busy(context):
    printer = ActionPrinter(changes_only=True, out=io.StringIO())
    node = printer.make_node(context=context)      # not spun yet: every Action waits in its reader history
    policy = Node('policy_stand_in', context=context)
    writer = policy.create_publisher(Action, 'action', qos.ACTION_DEEP)
    executor = None
    try:
        wait_until(lambda: writer.get_subscription_count() == 1, 60.0, 'the printer never matched')
        for msg in _actions(50):
            writer.publish(msg)
        assert writer.wait_for_all_acked(Duration(seconds=60))     # all 50 are in the printer's reader
        assert printer.count == 0
        executor = _spin(context, node)
        # A keep-last-10 reader (a controller's profile) would hand over the newest 10 only.
        wait_until(lambda: printer.count >= 50, 60.0, lambda: f'heard {printer.count} of 50')
        assert printer.count == 50
    finally:
        if executor is not None:
            executor.shutdown()
        node.destroy_node()
        policy.destroy_node()
