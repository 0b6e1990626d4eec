"""Intra-process delivery (transport/intra_process.py) with real rclpy nodes and DDS: in one process a message
reaches each in-process subscriber by reference, once, in order, on the subscriber's own executor; the DDS copy
goes out only while someone outside subscribes; and in the composed pipeline outside observers still hear
`embedding` and `memory/context` while Actions flow."""
import os
import signal
import threading

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from bag_helpers import TopicCollector
from ros_helpers import start_pipeline, wait_until

pytestmark = [pytest.mark.integration]

MODEL_LOAD_S = 240


def spin(node, context):
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor, thread


def tear_down(sub, pub, executors, *nodes) -> None:
    """The in-process pair, the executors spinning its nodes, then the nodes."""
    sub.destroy()
    pub.destroy()
    for executor, _ in executors:
        executor.shutdown()
    for node in nodes:
        node.destroy_node()


def test_in_process_subscribers_get_the_same_object_once_in_order_and_dds_only_for_outsiders(context):
    from std_msgs.msg import String

    from vidaction_ros import qos
    from vidaction_ros.transport.intra_process import IntraProcessPublisher, IntraProcessSubscription
    pub_node = Node('ipc_pub', context=context)
    sub_node = Node('ipc_sub', context=context)
    got, threads = [], set()
    done = threading.Event()

    def on_message(msg):
        got.append(msg)
        threads.add(threading.current_thread().name)
        if len(got) == 20:
            done.set()
    sub = IntraProcessSubscription(sub_node, 'ipc_topic', on_message, depth=50)
    pub = IntraProcessPublisher(pub_node, String, 'ipc_topic', qos.EMBEDDING)
    executors = [spin(pub_node, context), spin(sub_node, context)]
    executors[1][1].name = 'sub-executor'
    sent = [String(data=str(i)) for i in range(20)]
    try:
        for msg in sent:
            pub.publish(msg)
        assert done.wait(30)
        assert [m is s for m, s in zip(got, sent)] == [True] * 20      # by reference, in order, once each
        assert threads == {'sub-executor'}                             # on the subscriber's executor
        assert pub.delivered == 20 and pub.dds_copies == 0            # nobody outside: nothing serialised
        # Someone outside subscribes (its own DDS participant): from now on the DDS copy goes out too.
        outside = rclpy.Context()
        rclpy.init(context=outside)
        try:
            collector = TopicCollector({'ipc_topic': (String, qos.EMBEDDING)}, context=outside, name='outside')
            wait_until(lambda: pub.dds.get_subscription_count() > 0, 30, 'outside subscriber never matched')
            pub.publish(String(data='observed'))
            assert collector.wait_for(lambda c: [m.data for m in c.messages('ipc_topic')] == ['observed'], 30)
            # In process it arrives on the subscriber's executor, on its own schedule: wait for it, then check
            # it came once (and the DDS copy once).
            wait_until(lambda: len(got) == 21, 30, 'the in-process subscriber never got the 21st message')
            assert pub.dds_copies == 1 and got[-1].data == 'observed' and pub.delivered == 21
            collector.executor.shutdown()
            collector.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=outside)
    finally:
        tear_down(sub, pub, executors, pub_node, sub_node)


@pytest.mark.slow
def test_inline_handling_runs_on_the_publishers_thread_unless_the_node_is_busy_then_queues(context):
    # inline_lock: a message is handled on the publisher's thread when the subscribing node's lock is free (no
    # executor wake-up); while the node is busy (its lock held, e.g. by its watchdog) it is queued and its
    # executor takes it afterwards, still once, in order, never concurrently with what holds the lock.
    from std_msgs.msg import String

    from vidaction_ros import qos
    from vidaction_ros.transport.intra_process import IntraProcessPublisher, IntraProcessSubscription
    pub_node = Node('ipc_inline_pub', context=context)
    sub_node = Node('ipc_inline_sub', context=context)
    lock = threading.RLock()
    got = []

    def on_message(msg):
        assert lock._is_owned()                                         # never outside the node's lock
        got.append((msg.data, threading.current_thread().name))
    sub = IntraProcessSubscription(sub_node, 'ipc_inline', on_message, depth=50, inline_lock=lock)
    pub = IntraProcessPublisher(pub_node, String, 'ipc_inline', qos.EMBEDDING)
    executors = [spin(sub_node, context)]
    executors[0][1].name = 'sub-executor'
    me = threading.current_thread().name
    try:
        pub.publish(String(data='a'))
        assert got == [('a', me)] and sub.inline == 1                   # handled before publish() returned
        held, release = threading.Event(), threading.Event()

        def busy():                                                     # the node busy on another thread
            with lock:
                held.set()
                release.wait(30)
        holder = threading.Thread(target=busy)
        holder.start()
        assert held.wait(30)
        pub.publish(String(data='b'))
        pub.publish(String(data='c'))
        assert [d for d, _ in got] == ['a']                              # queued, not run concurrently
        release.set()
        holder.join(30)
        wait_until(lambda: len(got) == 3, 30, lambda: f'queued messages not handled: {got}')
        assert got[1:] == [('b', 'sub-executor'), ('c', 'sub-executor')] and sub.inline == 1
        pub.publish(String(data='d'))
        assert got[-1] == ('d', me) and sub.inline == 2
    finally:
        tear_down(sub, pub, executors, pub_node, sub_node)


def test_composed_pipeline_still_serves_observers_of_the_hot_path_topics(tmp_path, video_path, context):
    from vidaction_ros import qos
    from vidaction_ros.msg import Action, Embedding, MemoryContext
    collector = TopicCollector({'embedding': (Embedding, qos.EMBEDDING), 'memory/context': (MemoryContext,
                                qos.EMBEDDING), 'action': (Action, qos.ACTION)}, context=context)
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', video_path, '--loop', 'true', log_path=str(log))
    try:
        assert collector.wait_for(lambda c: len(c.messages('memory/context')) >= 5 and
                                  len(c.messages('embedding')) >= 5 and len(c.messages('action')) >= 5,
                                  MODEL_LOAD_S), log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        collector.executor.shutdown()
        collector.node.destroy_node()
    assert code == 0, log.read_text()[-2000:]
    embedded = [m.sequence for m in collector.messages('embedding')]
    assert embedded == sorted(set(embedded))                         # each once, in order
    decided = {a.frame_sequence for a in collector.messages('action') if a.trigger in ('prompt', 'default')}
    contexts = {c.embedding.sequence for c in collector.messages('memory/context')}
    assert decided & contexts, 'observers heard contexts of frames that were decided'
