"""Bring-up of a graph of lifecycle nodes in separate processes: configure all, then activate all, in
`node_names` order (downstream first), through each node's lifecycle_msgs/ChangeState service — what
launch files and the launch-free processes mode run beside the four nodes (cf. nav2_lifecycle_manager).

A node that does not come up (service absent within `service_timeout_s`, or a transition that fails, e.g.
a missing model) stops the bring-up: the manager logs which node and why, and exits with code 2 so that
`ros2 launch` / the pipeline take the graph down rather than leave a half pipeline running.

After bring-up the manager supervises: every `supervise_period_s` it asks each node its state, and a node
that is back unconfigured or inactive (respawned by launch or the pipeline after a crash or a kill) is
configured and activated again, downstream first. Meanwhile the policy's watchdog sends FAILSAFE, so the
controller hears the gap. Bring-up is idempotent (an active node is left alone), so a respawned manager
picks up a running graph without disturbing it.
"""
from __future__ import annotations

import sys
import threading
import time

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from ..params import Param, declare

PARAMS = [
    Param('node_names', ['memory', 'policy', 'embedder', 'camera'],
          'lifecycle nodes to bring up, in order (relative names resolve in this node\'s namespace)'),
    Param('service_timeout_s', 120.0, 'wait this long for each node\'s lifecycle services (model loading '
          'happens in configure, not before)', 0.1, 3600.0),
    Param('transition_timeout_s', 300.0, 'wait this long for one transition (configure loads the model)',
          0.1, 3600.0),
    Param('supervise_period_s', 1.0, 'after bring-up, check every node\'s state this often and bring up one '
          'that came back (respawned) unconfigured or inactive; 0 = bring up once, then idle', 0.0, 3600.0),
]
STATE_TIMEOUT_S = 1.0   # a supervision poll: a dead node's service is simply absent
STATE_RETRY_S = 5.0     # get_state is asked again after this long: a request or response lost to a match not yet
                        # complete on both sides (DDS discovery) would otherwise cost the whole timeout


class LifecycleManager(Node):
    def __init__(self, name: str = 'lifecycle_manager', **kwargs):
        super().__init__(name, **kwargs)
        self.p = declare(self, PARAMS)

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        # An executor on this node's own context (rclpy.spin_until_future_complete would use the default one).
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self)
        try:
            executor.spin_until_future_complete(future, timeout_sec=timeout)
        finally:
            executor.remove_node(self)
            executor.shutdown()
        return future.result() if future.done() else None

    def state_of(self, node_name: str, timeout: float = 5.0) -> str:
        client = self.create_client(GetState, f'{node_name}/get_state')
        try:
            deadline = time.monotonic() + timeout
            if not client.wait_for_service(timeout_sec=timeout):
                return 'unknown'
            while (left := deadline - time.monotonic()) > 0:
                # Idempotent, so asked again rather than waited on.
                response = self._call(client, GetState.Request(), min(left, STATE_RETRY_S))
                if response is not None:
                    return response.current_state.label
            return 'unknown'
        finally:
            self.destroy_client(client)

    def transition(self, node_name: str, transition_id: int, label: str) -> bool:
        client = self.create_client(ChangeState, f'{node_name}/change_state')
        try:
            if not client.wait_for_service(timeout_sec=self.p['service_timeout_s']):
                self.get_logger().error(f'{node_name}: no lifecycle service within '
                                        f"{self.p['service_timeout_s']} s (node not started?)")
                return False
            response = self._call(client, ChangeState.Request(transition=Transition(id=transition_id)),
                                  self.p['transition_timeout_s'])
            if response is None:
                self.get_logger().error(f'{node_name}: {label} did not finish within '
                                        f"{self.p['transition_timeout_s']} s")
                return False
            if not response.success:
                self.get_logger().error(f'{node_name}: {label} failed (the node logged why)')
                return False
            self.get_logger().info(f'{node_name}: {label}d')
            return True
        finally:
            self.destroy_client(client)

    def bring_up(self) -> bool:
        """Configure all, then activate all, in node_names order; nodes already past a step skip it."""
        names = list(self.p['node_names'])
        states = {name: self.state_of(name, self.p['service_timeout_s']) for name in names}
        for transition_id, label, needed_in in ((Transition.TRANSITION_CONFIGURE, 'configure', 'unconfigured'),
                                                (Transition.TRANSITION_ACTIVATE, 'activate', 'inactive')):
            for name in names:
                if states[name] == 'unknown':
                    self.get_logger().error(f"{name}: no lifecycle service within {self.p['service_timeout_s']} "
                                            f's (node not started?)')
                    return False
                if states[name] == needed_in:
                    if not self.transition(name, transition_id, label):
                        return False
                    states[name] = 'inactive' if label == 'configure' else 'active'
        self.get_logger().info(f'all up: {names}')
        return True

    def supervise(self, stop: threading.Event) -> None:
        """Until stop: bring up again any node that is back unconfigured or inactive (see the module doc)."""
        period = self.p['supervise_period_s']
        down: set[str] = set()
        while period > 0 and not stop.wait(period):
            for name in self.p['node_names']:
                if stop.is_set():
                    return
                state = self.state_of(name, STATE_TIMEOUT_S)
                if state == 'active':
                    down.discard(name)
                elif state in ('unconfigured', 'inactive'):
                    self.get_logger().warning(f'{name}: back {state} (restarted?): bringing it up again')
                    if state == 'unconfigured':
                        self.transition(name, Transition.TRANSITION_CONFIGURE, 'configure')
                    self.transition(name, Transition.TRANSITION_ACTIVATE, 'activate')
                elif name not in down and state == 'unknown':
                    down.add(name)   # logged once per outage; the watchdog tells the controller
                    self.get_logger().warning(f'{name}: not answering (died?): waiting for it to come back')


def main(args=None) -> int:
    from .runtime import exit_process
    exit_process(run(sys.argv if args is None else args))


def run(args) -> int:
    """Bring the graph up and supervise it until a stop (see process_stop). Both run on a side thread so the
    main thread is always free to take a signal: a stop during a long configure does not wait for it."""
    from .process_stop import StartupInterrupted
    from .runtime import STARTUP_ERRORS, init_ros, release
    stop = init_ros(args)
    log = rclpy.logging.get_logger('lifecycle_manager')
    node = None
    failed = threading.Event()
    try:
        try:
            node = LifecycleManager()
            stop.started()
        except StartupInterrupted:
            return 0
        except STARTUP_ERRORS as err:
            log.fatal(f'startup failed: {err}')
            return 2

        def manage():
            if node.bring_up():
                node.supervise(stop.requested)
            else:
                failed.set()
                stop.request('bring-up failed')
        threading.Thread(target=manage, name='bring-up', daemon=True).start()
        stop.requested.wait()
        if failed.is_set():
            return 2   # a transition failed: the node logged why (bad policy file, missing model, no camera)
        log.info(f'stopping ({stop.reason})')
        return 0
    finally:
        release(stop, [], [node] if node is not None else [])


if __name__ == '__main__':
    raise SystemExit(main())
